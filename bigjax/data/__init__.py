"""Input pipeline: sources (tfds, offline builders, synthetic, your own registered datasets),
text preprocessing and tokenizers, caching, deterministic batching, prefetch, and on-device
transforms.

TensorFlow and tfds are imported lazily, only when a tfds dataset is opened.
"""

from bigjax.data import describe as _describe
from bigjax.data import chat, exceptions_chat, image_folder, mixture, pairs, text_files
from bigjax.data.core import DATASETS, LM_KINDS, Dataset, Split, register
from bigjax.data.datasets import open_dataset, synthetic
from bigjax.data.describe import batch_shapes, describe
from bigjax.data.iterator import ArrayTrainIterator, eval_batches, train_iterator
from bigjax.data.prefetch import prefetch
from bigjax.data.transforms import (check_normalization, image_inputs, normalization_stats,
                                    normalize)

register('synthetic', synthetic)
register('text_files', text_files.open_text_files, describe=_describe.text_files)
register('image_folder', image_folder.open_image_folder)  # lists the files, decodes on use
register('chat', chat.open_chat, describe=_describe.chat)
register('python_exceptions_chat', exceptions_chat.open_exceptions_chat,
         describe=_describe.chat)
register('preference', pairs.open_preference, describe=_describe.preference)
register('python_exceptions_preference', exceptions_chat.open_exceptions_preference,
         describe=_describe.preference)
register('mixture', mixture.open_mixture, describe=mixture.describe_mixture)
