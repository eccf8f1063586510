"""Input pipeline: sources (tfds, offline builders, synthetic), text preprocessing and
tokenizers, caching, deterministic batching, prefetch, and on-device transforms.

TensorFlow and tfds are imported lazily, only when a tfds dataset is opened.
"""

from bigjax.data.datasets import KINDS, Dataset, Split, open_dataset
from bigjax.data.describe import batch_shapes, describe
from bigjax.data.iterator import ArrayTrainIterator, eval_batches
from bigjax.data.prefetch import prefetch
from bigjax.data.transforms import (check_normalization, image_inputs, normalization_stats,
                                    normalize)
