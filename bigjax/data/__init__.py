"""Input pipeline: sources (tfds, offline builders, synthetic), batching, transforms.

TensorFlow and tfds are imported lazily, only when a tfds dataset is opened.
"""

from bigjax.data.iterator import ArrayTrainIterator, eval_batches
from bigjax.data.sources import ImageDataset, Split, open_dataset
from bigjax.data.transforms import check_normalization, normalization_stats, normalize
