"""Offline tfds builder over scikit-learn's bundled handwritten digits (8x8, 10 classes).

The split is fixed and documented: example i of `sklearn.datasets.load_digits()` goes to
`test` when i % 5 == 0 (360 examples) and to `train` otherwise (1437 examples).
"""

import hashlib

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST_EVERY = 5


def split_indices(num_examples: int) -> dict[str, np.ndarray]:
    """The fixed train/test assignment of `load_digits()` indices."""
    index = np.arange(num_examples)
    is_test = index % NUM_TEST_EVERY == 0
    return {'train': index[~is_test], 'test': index[is_test]}


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, 8, 8, 1) with values 0..16 and integer labels (N,)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    return images, digits.target.astype(np.int64)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the raw pixels and labels, recorded in the dataset info."""
    digest = hashlib.sha256(images.tobytes())
    digest.update(labels.tobytes())
    return digest.hexdigest()


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits (UCI optdigits test set) as a local tfds dataset."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Fixed split: index % 5 == 0 is test.'}

    def _info(self) -> tfds.core.DatasetInfo:
        images, labels = load_raw()
        return self.dataset_info_from_configs(
                description=__doc__,
                features=tfds.features.FeaturesDict({
                        'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                        'label': tfds.features.ClassLabel(num_classes=10),
                        'index': np.int64,
                }),
                supervised_keys=('image', 'label'),
                metadata=tfds.core.MetadataDict(
                        sha256=fingerprint(images, labels), pixel_max=16),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything ships with scikit-learn.
        images, labels = load_raw()
        return {
                name: self._generate_examples(images, labels, indices)
                for name, indices in split_indices(len(labels)).items()
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {'image': images[i], 'label': labels[i], 'index': int(i)}
