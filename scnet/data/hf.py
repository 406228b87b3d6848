"""A Hugging Face dataset as training and validation images: saved with ``save_to_disk`` or as parquet files.

``--data PATH`` where PATH is a ``DatasetDict`` saved by ``save_to_disk`` (it holds ``dataset_dict.json``),
or a folder of parquet files named by split as the Hub lays them out (``train-00000-of-00004.parquet``,
``validation-...``; the ``data/`` folder of a downloaded dataset repository), read with the ``datasets``
library. The splits are ``train`` and the first of ``validation``, ``val``, ``test``. The image column is the
one with an ``Image`` feature and the label column the one with a ``ClassLabel`` feature (whose names are the
classes); ``PATH#image=img,label=fine_label`` names them where a dataset has several. A validation split
whose ``ClassLabel`` differs from train's (one without some of the classes) has its labels read by class name.

The images are read as the bytes the dataset stores and decoded like a folder's files
(``scnet.data.folders.decode_rgb_bytes``), so a dataset made from a folder gives the same pixels, and, being
random access, the same order (``ShardedBatchSampler``) as a run on the folder. ``datasets`` is an optional
dependency (``pip install scnet-torch[hf]``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch.utils.data import Dataset

from scnet.data.folders import DataError, decode_checked, decode_rgb_bytes, default_decoder, seeded_transform

__all__ = ['HFDataError', 'HFData', 'HFSplit', 'is_hf_spec', 'open_hf', 'VAL_SPLITS']

#: The validation split: the first of these that the dataset has.
VAL_SPLITS = ('validation', 'val', 'test')


class HFDataError(DataError):
    """A Hugging Face dataset that cannot be used as asked."""


def _parse(spec: str) -> Tuple[Path, Dict[str, str]]:
    path, _, fragment = str(spec).partition('#')
    names = {}
    for part in filter(None, fragment.split(',')):
        key, _, value = part.partition('=')
        if key not in ('image', 'label') or not value:
            raise HFDataError(f'{spec}: after # give image=COLUMN and/or label=COLUMN, e.g. {path}#image=img,'
                              'label=label')
        names[key] = value
    return Path(path), names


def _parquet_files(path: Path) -> List[Path]:
    return sorted(path.rglob('*.parquet')) if path.is_dir() else ([path] if path.suffix == '.parquet' else [])


def is_hf_spec(spec: str) -> bool:
    """Whether ``spec`` names a saved ``DatasetDict`` or parquet files (see the module docstring)."""
    path, _ = _parse(spec)
    if '#' in str(spec):
        return True
    return (path / 'dataset_dict.json').is_file() or (path / 'state.json').is_file() or (
        not (path / 'train').is_dir() and bool(_parquet_files(path)))


def _load(path: Path):
    try:
        import datasets
    except ImportError:
        raise HFDataError(f'{path} is a Hugging Face dataset: install the datasets library (pip install '
                          'scnet-torch[hf])') from None
    if not path.exists():
        raise HFDataError(f'{path}: no such folder or file (a Hugging Face dataset saved with save_to_disk, or '
                          'parquet files named by split: train-..., validation-...)')
    try:
        return _load_splits(path, datasets)
    except HFDataError:
        raise
    except Exception as e:  # a damaged file: pyarrow's and datasets' own errors, pages of traceback without this
        if not (isinstance(e, (OSError, ValueError)) or type(e).__module__.split('.')[0] in ('pyarrow', 'datasets')):
            raise
        first = (str(e).strip().splitlines() or [''])[0]
        raise HFDataError(f'{path}: not a readable Hugging Face dataset ({type(e).__name__}: {first}); a file of it '
                          'is damaged or of another kind: save the dataset again (save_to_disk, or to_parquet per '
                          'split)') from None


def _load_splits(path: Path, datasets):
    """``_load`` once the library and the path are there: a saved ``DatasetDict``, or parquet files by split."""
    if (path / 'dataset_dict.json').is_file() or (path / 'state.json').is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            raise HFDataError(f'{path}: a single dataset without splits; save a DatasetDict with train and '
                              f'{"/".join(VAL_SPLITS)} splits')
        return loaded
    files: Dict[str, List[str]] = {}
    for file in _parquet_files(path):
        split = file.name.split('-')[0].split('.')[0]
        files.setdefault(split, []).append(str(file))
    if 'train' not in files:
        raise HFDataError(f'{path}: no train-*.parquet file; name the parquet files by split (train-..., '
                          'validation-...)')
    return datasets.load_dataset('parquet', data_files=files)


@dataclass
class HFData:
    """A dataset's splits, with the image and label columns and the classes."""
    splits: Any                      # datasets.DatasetDict
    image: str
    label: str
    classes: List[str]
    spec: str
    #: for each split other than train whose ClassLabel differs from train's: its index -> train's index
    label_maps: Dict[str, Optional[List[int]]] = field(default_factory=dict)

    def split(self, which: str, transform: Optional[Callable], *, skip_bad_images: bool = False) -> 'HFSplit':
        """``train``, or ``val`` (the first of ``VAL_SPLITS`` present), as a map-style image dataset."""
        name = which if which == 'train' else next((s for s in VAL_SPLITS if s in self.splits), None)
        if name is None or name not in self.splits:
            raise HFDataError(f'{self.spec}: no {which} split (has {", ".join(self.splits)}); the validation split '
                              f'is the first of {", ".join(VAL_SPLITS)}')
        return HFSplit(self, name, transform, skip_bad_images=skip_bad_images)


def _column(features, kind, given: Optional[str], what: str, spec: str) -> str:
    if given is not None:
        if given not in features:
            raise HFDataError(f'{spec}: no column {given!r} (columns: {", ".join(features)})')
        if what == 'image' and not isinstance(features[given], kind):  # cast to images, it fails inside pyarrow
            images = [name for name, feature in features.items() if isinstance(feature, kind)]
            raise HFDataError(f'{spec}: the column {given!r} holds {features[given]}, not images; name an Image '
                              f'column ({", ".join(images) or "the dataset has none"}): '
                              f'{spec.partition("#")[0]}#image=COLUMN')
        return given
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) != 1:
        raise HFDataError(f'{spec}: {"no" if not found else "several"} {kind.__name__} column(s) '
                          f'{", ".join(found)}; name the {what} column: {spec.partition("#")[0]}#{what}=COLUMN')
    return found[0]


def open_hf(spec: str) -> HFData:
    """The dataset ``spec`` names, its image and label columns checked (see the module docstring)."""
    import datasets

    path, names = _parse(spec)
    splits = _load(path)
    features = splits['train'].features
    image = _column(features, datasets.Image, names.get('image'), 'image', str(spec))
    label = _column(features, datasets.ClassLabel, names.get('label'), 'label', str(spec))
    if not isinstance(features[label], datasets.ClassLabel):
        raise HFDataError(f'{spec}: the label column {label!r} has no class names (it is no ClassLabel feature); '
                          'cast it with Dataset.cast_column(name, ClassLabel(names=[...]))')
    classes = list(features[label].names)
    label_maps = {name: _label_map(splits[name].features, image, label, classes, name, str(spec))
                  for name in splits if name != 'train'}
    splits = splits.cast_column(image, datasets.Image(decode=False))  # the stored bytes, decoded as files are
    return HFData(splits, image, label, classes, str(spec), label_maps)


def _label_map(features, image: str, label: str, classes: List[str], split: str,
               spec: str) -> Optional[List[int]]:
    """How the ``split``'s label indices become the training classes' (None: they are the same). Each split
    of a ``DatasetDict`` has its own ``ClassLabel``: a validation split without one of the classes numbers the
    rest differently, and its raw indices would name the wrong class."""
    import datasets

    missing = [column for column in (image, label) if column not in features]
    if missing:
        raise HFDataError(f'{spec}: the {split} split has no column {", ".join(map(repr, missing))} (columns: '
                          f'{", ".join(features)}); every split needs the train split\'s image and label columns')
    if not isinstance(features[label], datasets.ClassLabel):
        raise HFDataError(f'{spec}: the {split} split\'s label column {label!r} has no class names (it is no '
                          'ClassLabel feature); cast it to the train split\'s ClassLabel')
    names = list(features[label].names)
    if names == classes:
        return None
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise HFDataError(f'{spec}: the {split} split has classes the train split has not '
                          f'({", ".join(map(repr, unknown[:5]))}); give both splits the same ClassLabel')
    return [classes.index(n) for n in names]


class HFSplit(Dataset):
    """One split as ``(image, label)`` samples; damaged images named (split and row) or skipped (None).

    With ``augment_seed`` set, the augmentation of row ``i`` in epoch ``e`` depends on (seed, e, i) only, as
    for ``CheckedImageFolder``."""

    def __init__(self, data: HFData, split: str, transform: Optional[Callable], *,
                 skip_bad_images: bool = False, decoder: Optional[str] = None) -> None:
        self.rows = data.splits[split]
        self.image, self.label, self.transform = data.image, data.label, transform
        self.label_map = data.label_maps.get(split)
        self.name = f'{data.spec.partition("#")[0]} [{split}]'
        self.skip_bad_images = skip_bad_images
        self.decoder = decoder or default_decoder()
        self.augment_seed: Optional[int] = None
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        stored = row[self.image] or {}
        name = f'{self.name} row {index}' + (f' ({stored["path"]})' if stored.get('path') else '')
        image = decode_checked(lambda: decode_rgb_bytes(_bytes(stored), self.decoder), name, self.skip_bad_images)
        if image is None:
            return None
        target = int(row[self.label])
        if target < 0:  # ClassLabel's "no label", as in the Hub's unlabelled test splits
            raise HFDataError(f'{name}: no label (-1); a split used for training or validation needs labels')
        if self.label_map is not None:
            target = self.label_map[target]
        if self.transform is None:
            return image, target
        return seeded_transform(self.transform, image, self.augment_seed, self.epoch, index), target


def _bytes(stored: Dict[str, Any]) -> bytes:
    if stored.get('bytes') is not None:
        return stored['bytes']
    if stored.get('path'):
        return Path(stored['path']).read_bytes()
    raise ValueError('no image bytes')
