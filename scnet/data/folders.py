"""Image-classification data in the ImageNet folder layout, checked before a run starts.

``DIR/train/<class>/*.jpg`` and ``DIR/val/<class>/*.jpg``: torchvision's ``ImageFolder`` reads it. What this
module adds is what a long run needs from its data: problems found before the first step (an empty class
folder, train and val with different classes), and an unreadable image either stopping the run with its
path named or, when asked, skipped and counted.

Decoding: images are decoded straight into uint8 ``(3, H, W)`` tensors by libjpeg-turbo / libpng through
``torchcodec.decoders`` when installed, else ``torchvision.io`` (deprecated since torchvision 0.29 in favour of
torchcodec, same libraries, same pixels), and the ``transforms.v2`` pipelines then run on tensors. Why:
a loader worker then decodes and augments more images per second than through PIL images
(``benchmarks/input_pipeline.py`` measures both): the decode costs the same (libjpeg-turbo either way), and
the crop-resize, flip and normalise cost less on a uint8 tensor than on a PIL image.
``decoder='pil'`` keeps the PIL path.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from scnet.errors import ScnetError

__all__ = ['DataError', 'BadImageError', 'class_images', 'find_classes', 'split_folders', 'DECODERS',
           'available_decoders', 'default_decoder', 'decode_rgb', 'decode_rgb_tensor', 'decode_rgb_bytes',
           'CheckedImageFolder', 'decode_checked', 'seeded_transform', 'collate_skipping_bad']

#: Image decoders of ``CheckedImageFolder``: ``torchcodec`` and ``torchvision`` decode to tensors (the
#: transforms then run on tensors), ``pil`` to PIL images.
DECODERS = ('torchcodec', 'torchvision', 'pil')


class DataError(ScnetError):
    """A dataset folder that cannot be used as it is."""


class BadImageError(DataError):
    """An image file that cannot be decoded."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _class_folders(folder: Path) -> List[str]:
    """The names of ``folder``'s sub-folders (hidden ones left out), sorted: one listing, no walk."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith('.'))


def class_images(folder: Path) -> List[str]:
    """Paths of the image files below one class folder, in the order torchvision's ``make_dataset`` lists
    them (folders by path, files by name), linked folders followed as it does.

    Written here rather than using ``os.walk(followlinks=True)`` (what torchvision runs) because that walk
    trusts the folder: a link back to an ancestor is followed until the path is too long, so every image
    is counted dozens of times without a word; a folder it cannot list is skipped silently; and a FIFO
    named ``x.jpg`` becomes a sample that blocks the loader for ever. Each of these is a ``DataError`` here,
    naming the path. A broken link stays a sample: reading it fails like any unreadable image (and
    ``skip_bad_images`` skips it). Directory entries' types come from the listing, so files are not stat'ed.
    """
    top = os.fspath(folder)
    listed: List[Tuple[str, List[str]]] = []
    blocking: List[str] = []
    seen = {os.path.realpath(top): top}
    pending = [(top, (os.path.realpath(top),))]
    while pending:
        path, ancestors = pending.pop()
        try:
            entries = list(os.scandir(path))
        except OSError as e:
            raise DataError(f'{path}: cannot list this folder ({e.strerror or e}); fix its permissions or '
                            'remove it') from None
        files = []
        for entry in entries:
            if entry.is_dir():  # a link to a folder counts, as in torchvision's walk
                real = os.path.realpath(entry.path)
                if real in ancestors:
                    raise DataError(f'{entry.path}: a link to {real}, a folder that contains it: following it '
                                    'never ends (torchvision would read its images over and over); remove the link')
                if real in seen:
                    raise DataError(f'{entry.path} and {seen[real]} are the same folder ({real}): its images '
                                    'would be read twice; remove one of them')
                seen[real] = entry.path
                pending.append((entry.path, (*ancestors, real)))
            elif _is_image(entry.name):
                if entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
                    files.append(entry.name)
                else:
                    blocking.append(entry.path)
        listed.append((path, sorted(files)))
    if blocking:
        raise DataError(f'{len(blocking)} image name(s) that are not regular files (a FIFO, socket or device, '
                        f'which a reader would wait on for ever): {", ".join(sorted(blocking)[:5])}; remove them')
    return [os.path.join(path, name) for path, files in sorted(listed) for name in files]


def find_classes(folder: Path) -> List[str]:
    """Sorted class folder names of ``folder``; an error names every class folder without an image, and
    every problem ``class_images`` finds."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f'{folder}: no such folder')
    classes = _class_folders(folder)
    if not classes:
        raise DataError(f'{folder}: no class folders; expected {folder}/<class>/<image files>')
    empty = [c for c in classes if not class_images(folder / c)]
    if empty:
        raise DataError(f'{folder}: class folder(s) without images: {", ".join(empty)}; add images or remove '
                        f'them (image types: {", ".join(IMG_EXTENSIONS)})')
    return classes


def split_folders(root: Path) -> Tuple[Path, Path, List[str]]:
    """``root/train`` and ``root/val`` with their common class list; an error if the class sets differ."""
    root = Path(root)
    if not root.is_dir():
        what = 'is a file, not a folder' if root.exists() else ': no such folder'
        raise DataError(f'{root}{" " if root.exists() else ""}{what} (expected train/ and val/ with one folder per '
                        f'class in it: {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg)')
    train, val = root / 'train', root / 'val'
    for split in (train, val):
        if not split.is_dir():
            raise DataError(f'{root}: expected {split.name}/ with one folder per class (ImageNet layout: '
                            f'{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg)')
    train_classes, val_classes = find_classes(train), find_classes(val)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(f'{root}: train and val have different classes (only in train: '
                        f'{", ".join(only_train) or "-"}; only in val: {", ".join(only_val) or "-"})')
    return train, val, train_classes


_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def decode_rgb(path, *, exif_orientation: bool = False) -> Image.Image:
    """Decode an image (a path or an open binary file) fully (a truncated file fails here, not later) and
    convert it to RGB. 16-bit greyscale is scaled to 8 bits (value / 257, as the tensor decoders do), where
    PIL's own conversion clips at 255 and turns most of such an image white.

    ``exif_orientation``: turn the picture as its EXIF orientation says, as image viewers and phones show it
    (``predict`` and the visual tools, which draw on the user's photos); training and evaluation read the
    pixels as stored, as torchvision's datasets and the tensor decoders do."""
    with (open(path, 'rb') if isinstance(path, (str, os.PathLike)) else contextlib.nullcontext(path)) as f:
        image = Image.open(f)
        image.load()
    # a 16-bit grey PNG opens as I;16 (older Pillow: I, 32-bit, which other formats use for other ranges)
    sixteen_bit = image.mode in _SIXTEEN_BIT_MODES or (image.mode == 'I' and image.format == 'PNG')
    if exif_orientation:
        image = ImageOps.exif_transpose(image)
    if sixteen_bit:
        scaled = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled)
    return image.convert('RGB')


def _decode_torchcodec(data: bytes) -> torch.Tensor:
    from torchcodec.decoders import decode_image

    return decode_image(data, mode='RGB')


def _decode_torchvision(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    with warnings.catch_warnings():  # torchvision >= 0.29 warns on every call that torchcodec replaces it
        warnings.simplefilter('ignore', DeprecationWarning)
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


_TENSOR_DECODERS = {'torchcodec': _decode_torchcodec, 'torchvision': _decode_torchvision}


@functools.lru_cache(maxsize=None)
def available_decoders() -> Tuple[str, ...]:
    """The names in ``DECODERS`` that work here: torchcodec is optional, torchvision may drop its decoders."""
    found = []
    for name, module in (('torchcodec', 'torchcodec.decoders'), ('torchvision', 'torchvision.io')):
        try:
            if hasattr(importlib.import_module(module), 'decode_image'):
                found.append(name)
        except Exception:  # not installed, or its native libraries do not load: not usable here
            continue
    return (*found, 'pil')


def default_decoder() -> str:
    """The first tensor decoder that is installed (torchcodec, then torchvision), else ``'pil'``."""
    return available_decoders()[0]


def decode_rgb_tensor(path: str, decoder: Optional[str] = None) -> torch.Tensor:
    """Decode an image into a uint8 ``(3, H, W)`` RGB tensor with a tensor decoder (``default_decoder()``).

    JPEG (greyscale and CMYK included), PNG (palette, alpha, 1-bit), GIF (first frame) and WebP come out
    pixel for pixel as ``decode_rgb`` gives them. 16-bit PNGs are scaled to 8 bits, where PIL clips
    16-bit greyscale values at 255, which turns most of such an image white. Formats the decoder does
    not read (BMP, TIFF, ...) and damaged files go to ``decode_rgb``, which either reads them or raises the
    same error as before, so what PIL could read still loads and a truncated file still fails. Unlike PIL
    this does not refuse decompression bombs (images over ``Image.MAX_IMAGE_PIXELS``).
    """
    decoder = decoder or default_decoder()
    if decoder not in _TENSOR_DECODERS:
        raise ValueError(f'{decoder!r} is not a tensor decoder; choose one of {", ".join(_TENSOR_DECODERS)}')
    with open(path, 'rb') as f:
        data = f.read()
    return decode_rgb_bytes(data, decoder)


def decode_rgb_bytes(data: bytes, decoder: Optional[str] = None) -> torch.Tensor:
    """``decode_rgb_tensor`` of an image file's bytes already in memory (a sample of a tar shard, a row of a
    Hugging Face dataset); ``decoder`` ``'pil'`` decodes with PIL."""
    decoder = decoder or default_decoder()
    if decoder == 'pil':
        return TF.pil_to_tensor(decode_rgb(io.BytesIO(data)))
    try:
        image = _TENSOR_DECODERS[decoder](data)
    except (RuntimeError, ValueError):  # a format it does not read, or a damaged file: let PIL judge
        return TF.pil_to_tensor(decode_rgb(io.BytesIO(data)))
    if image.ndim == 4:  # animated GIF / WebP: the first frame, as PIL gives
        image = image[0]
    if image.dtype != torch.uint8:
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image


class CheckedImageFolder(ImageFolder):
    """``ImageFolder`` whose unreadable images raise ``BadImageError`` naming the file, or, with
    ``skip_bad_images``, come out as ``None`` for ``collate_skipping_bad`` to drop and count.

    ``classes`` fixes the class order (the training set's), so a val set's indices match the model's.

    With ``augment_seed`` set, the random transform of sample ``i`` in epoch ``e`` draws from a generator
    seeded by (seed, e, i) only: the same crop and flip whichever process, worker or resumed run decodes it,
    which is what lets K processes train exactly like one and a resumed run like an uninterrupted one.
    The crop depends on the image size only, so it is the same whichever decoder.

    ``decoder`` (one of ``DECODERS``; ``None``: ``default_decoder()``) chooses what ``transform`` receives: a
    uint8 ``(3, H, W)`` tensor (``torchcodec``, ``torchvision``) or an RGB PIL image (``pil``).
    """

    def __init__(self, root: Path, transform: Optional[Callable] = None, *,
                 classes: Optional[Sequence[str]] = None, skip_bad_images: bool = False,
                 decoder: Optional[str] = None) -> None:
        decoder = decoder or default_decoder()
        if decoder not in available_decoders():
            raise ValueError(f'decoder {decoder!r} is not available here; choose one of '
                             f'{", ".join(available_decoders())} (torchcodec: pip install torchcodec)')
        self.decoder = decoder
        self._fixed_classes = list(classes) if classes is not None else None
        self.skip_bad_images = skip_bad_images
        self.augment_seed: Optional[int] = None
        self.epoch = 0
        super().__init__(str(root), transform=transform)

    def find_classes(self, directory: str):
        """``(classes, class -> index)``: the fixed ``classes`` when given, else the folder's own. With fixed
        classes, the folder must hold exactly those class folders, each with images: a missing one, an empty
        one or one beyond them is a ``DataError`` (torchvision would fail on the first two and silently drop the
        images of the third)."""
        if self._fixed_classes is None:
            classes = find_classes(Path(directory))
        else:  # the caller found them (with find_classes' walk); make_dataset's walk finds empty ones
            classes = self._fixed_classes
            found = _class_folders(Path(directory))
            missing = [c for c in classes if c not in found]
            if missing:
                raise DataError(f'{directory}: missing class folder(s) {", ".join(missing)}')
            extra = [c for c in found if c not in classes]
            if extra:
                raise DataError(f'{directory}: class folder(s) {", ".join(extra[:5])} beyond the {len(classes)} '
                                'classes given; their images would be left out: remove them or give all classes')
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        """``(path, class index)`` of every image, from ``class_images`` (torchvision's order, its checks)."""
        samples, empty = [], []
        for name in sorted(class_to_idx):
            found = class_images(Path(directory) / name)
            empty += [] if found or allow_empty else [name]
            samples += [(path, class_to_idx[name]) for path in found]
        if empty:
            raise DataError(f'{directory}: class folder(s) without images: {", ".join(empty)}; add images or '
                            'remove them')
        return samples

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = decode_checked(lambda: decode_rgb(path) if self.decoder == 'pil' else
                               decode_rgb_tensor(path, self.decoder), path, self.skip_bad_images)
        if image is None:
            return None
        if self.transform is None:
            return image, target
        return seeded_transform(self.transform, image, self.augment_seed, self.epoch, index), target


def decode_checked(decode: Callable[[], Any], name: str, skip_bad_images: bool):
    """``decode()``; for a damaged image, ``BadImageError`` naming ``name`` or, with ``skip_bad_images``, None
    (for ``collate_skipping_bad`` to drop and count)."""
    try:
        return decode()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if skip_bad_images:
            return None
        raise BadImageError(f'{name}: unreadable image ({e}); fix or remove it, or pass --skip-bad-images '
                            'to skip such files') from None


def seeded_transform(transform: Callable, image, seed: Optional[int], epoch: int, index: int):
    """``transform(image)``; with ``seed``, drawing from a generator seeded by (seed, epoch, index) only: the
    same augmentation of image ``index`` in ``epoch`` whichever process, worker or resumed run applies it."""
    if seed is None:
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only, which the transforms draw from: torch.manual_seed also queues a CUDA
        # seeding with a formatted stack trace, a cost per image comparable to the transforms' own; taken
        # modulo 2**64, the generator's seed range (what it does with a negative one too), so that every seed
        # a run takes (up to 2**32 - 1) gives a seed here, not an overflow
        torch.default_generator.manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % 2 ** 64)
        return transform(image)


def collate_skipping_bad(batch):
    """Collate the readable samples of a batch; returns ``(images, targets, number_skipped)``."""
    good = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(good)
    return images, targets, skipped
