"""Your own images as a classification dataset: data.name='image_folder', data.paths='root/'.

root/<class>/<image> (the classes are the sub-folder names, sorted), split per class by a hash
of each file's name (data.val_fraction of them evaluate); or root/train/<class>/… and
root/test/<class>/… as given. Images are decoded with Pillow, converted to data.image_shape's
channels (1 grey, 3 RGB) and resized to its height and width; the arrays are cached under the
data_dir, keyed by the files' paths, sizes and modification times.
"""

import hashlib
import os

import numpy as np

from bigjax.data import cache
from bigjax.data.core import Dataset, Split
from bigjax.data.text_files import cache_dir, expand, signature
from bigjax.errors import UserError

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def _class_files(folder: str) -> dict[str, list[str]]:
    """{class name: sorted image paths} of the sub-folders of `folder`."""
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    return {c: sorted(os.path.join(folder, c, f) for f in os.listdir(os.path.join(folder, c))
                      if f.lower().endswith(EXTENSIONS)) for c in classes}


def held_out(path: str, fraction: float) -> bool:
    """Whether an image evaluates: a hash of its file name, so adding images moves no other."""
    return int(hashlib.sha256(os.path.basename(path).encode()).hexdigest()[:8], 16) % 10_000 \
        < fraction * 10_000


def listing(root: str, val_fraction: float) -> tuple[list[str], dict[str, list]]:
    """(class names, {'train': [(path, label)], 'eval': [...]}) of the folder."""
    split_folders = [os.path.join(root, s) for s in ('train', 'test')]
    if all(os.path.isdir(f) for f in split_folders):
        train, test = (_class_files(f) for f in split_folders)
        if set(test) - set(train):
            raise UserError(f'{root}/test has classes that {root}/train lacks: '
                            f'{sorted(set(test) - set(train))}')
        names = list(train)
        pairs = {'train': [(p, names.index(c)) for c, ps in train.items() for p in ps],
                 'eval': [(p, names.index(c)) for c, ps in test.items() for p in ps]}
    else:
        by_class = _class_files(root)
        names = list(by_class)
        pairs = {'train': [], 'eval': []}
        for label, (c, paths) in enumerate(by_class.items()):
            for p in paths:
                pairs['eval' if held_out(p, val_fraction) else 'train'].append((p, label))
    trained = {label for _, label in pairs['train']}
    empty = [c for label, c in enumerate(names) if label not in trained]
    if len(names) < 2 or empty:
        raise UserError(f'data.paths={root!r} needs a sub-folder of images per class, two classes '
                        f'at least; it has {names}' + (f', and no training images of {empty}'
                                                       if empty and len(names) >= 2 else ''))
    if not pairs['eval']:
        raise UserError(f'{root}: no image is held out for evaluation; raise data.val_fraction or '
                        'add train/ and test/ folders')
    return names, pairs


def decode(path: str, shape: tuple) -> np.ndarray:
    from PIL import Image
    height, width, channels = shape
    try:
        with Image.open(path) as image:
            image = image.convert('L' if channels == 1 else 'RGB').resize(
                (width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, np.uint8)
    except (OSError, ValueError) as e:
        raise UserError(f'cannot read the image {path}: {e}') from None
    return array.reshape(height, width, channels)


def open_image_folder(data_config):
    """The Dataset (kind image) of the folder data.paths."""
    shape = tuple(data_config.image_shape)
    if len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
        raise UserError(f'data.image_shape={shape} must be (height, width, 1 or 3)')
    if not 0 <= data_config.val_fraction < 1:
        raise UserError(f'data.val_fraction={data_config.val_fraction} must be in [0, 1)')
    root = expand(data_config.paths, what='folder')[0]
    if not os.path.isdir(root):
        raise UserError(f'data.paths={data_config.paths!r} is not a folder')
    names, pairs = listing(root, data_config.val_fraction)

    def split(name: str) -> Split:
        paths = [p for p, _ in pairs[name]]
        key = {'files': signature(paths), 'labels': [lbl for _, lbl in pairs[name]],
               'shape': shape}

        def build(_folder):
            images = np.stack([decode(p, shape) for p in paths])
            labels = np.asarray([label for _, label in pairs[name]], np.int32)
            return {'image': images, 'label': labels}, {}
        return Split(len(paths), lambda: cache.cached(cache_dir(data_config, 'image_folder'),
                                                       key, build)[0])

    return Dataset('image_folder', 'image', split('train'), split('eval'), num_classes=len(names),
                   class_names=tuple(names), image_shape=shape, pixel_max=255.0)
