"""Training and validation images streamed from WebDataset tar shards, split exactly over processes and
loader workers.

``--data`` names shards as a folder that ``scnet shards`` wrote, or a brace pattern of shard files, local
(``/data/in1k/train-{000000..000146}.tar``) or read through a command (``pipe:aws s3 cp
s3://bucket/in1k/train-{000000..000146}.tar -``, ``pipe:curl -s https://host/in1k/train-{...}.tar``). The
``index.json`` beside the shards (read the same way: the shard's file name replaced by ``index.json``) gives
the classes, the validation shards and the images in each shard.

Why the counts matter: a stream has no random access, and the usual way to split one (whole shards to each
process, ``webdataset.split_by_node``) gives processes different numbers of images when shards differ in
size, so that processes either stop at different steps (a deadlock under DistributedDataParallel) or repeat
and drop images. Here each epoch is one sequence, the shards in an order drawn from (seed, epoch)
concatenated, cut like ``scnet.train.sampling.ShardedBatchSampler`` cuts its permutation: process ``r`` of K
takes the ``r``-th of K equal contiguous ranges (``steps x batch / K`` images; the last incomplete global batch
dropped), and its loader worker ``w`` of W the ``w``-th contiguous part of that range, in whole micro-batches.
Each training image is read once per epoch, by one worker of one process; a worker opens only the shards its
range touches. Within a worker, a shuffle buffer (``webdataset``'s, seeded by seed, epoch, process and worker)
mixes the images of neighbouring shards. The DataLoader takes the workers' batches in turn, so a process's
sequence of micro-batches is a function of (seed, epoch, K, W): a run resumed mid-epoch skips exactly the
batches already trained (``set_epoch(epoch, start_step)``; the skipped ones are read, not decoded).

Validation: process ``r`` takes the ``r``-th of K contiguous ranges of the validation images in index order,
every image exactly once. The augmentation of an image depends on (seed, epoch, its position in the index)
only, as for folders (``scnet.data.folders.seeded_transform``); a damaged image is named (shard and path
under the source folder) or, with ``skip_bad_images``, skipped and counted.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from scnet.data.folders import decode_checked, decode_rgb_bytes, default_decoder, seeded_transform
from scnet.data.shards import INDEX_NAME, PLAN_NAME, ShardsError

__all__ = ['ShardSplit', 'ShardSource', 'is_shard_spec', 'open_shards', 'ShardStream', 'ShardEvalStream',
           'ShardProbe', 'worker_batches']

_IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'gif', 'tif', 'tiff', 'ppm', 'pgm')
_SHARD_NAME = re.compile(r'[^/\s]*\.tar\b')


@dataclass(frozen=True)
class ShardSplit:
    """The shards of one split: their URLs, and images per shard (from the index)."""
    urls: Tuple[str, ...]
    counts: Tuple[int, ...]

    @property
    def images(self) -> int:
        return sum(self.counts)

    @property
    def offsets(self) -> Tuple[int, ...]:
        """Position of each shard's first image in the index order (what seeds an image's augmentation)."""
        out, total = [], 0
        for count in self.counts:
            out.append(total)
            total += count
        return tuple(out)


@dataclass(frozen=True)
class ShardSource:
    """What ``--data`` named: classes, train and val shards, and a description for the run's config."""
    classes: List[str]
    train: ShardSplit
    val: ShardSplit
    spec: str


def is_shard_spec(spec: str) -> bool:
    """Whether ``spec`` names shards: a folder holding ``index.json``, a ``.tar`` pattern or a ``pipe:``."""
    from pathlib import Path

    return spec.startswith('pipe:') or bool(_SHARD_NAME.search(spec)) or (Path(spec) / INDEX_NAME).is_file() or \
        (Path(spec) / PLAN_NAME).is_file()


def _read_url(url: str) -> bytes:
    import webdataset as wds

    try:
        with wds.gopen(url) as stream:
            return stream.read()
    except Exception as e:
        raise ShardsError(f'{url}: cannot read it ({str(e).splitlines()[0] if str(e) else type(e).__name__})'
                          '; check the path or the command') from None


def open_shards(spec: str) -> ShardSource:
    """The shards that ``spec`` names (see the module docstring), with their index."""
    from pathlib import Path

    import braceexpand

    _refuse_unfinished(Path(spec))
    from_folder = (Path(spec) / INDEX_NAME).is_file()
    if from_folder:
        folder = Path(spec)
        index = _parse_index(_read_url(str(folder / INDEX_NAME)), folder / INDEX_NAME)
        template = str(folder / '{}')
        train_urls = [template.format(e['file']) for e in index['splits']['train']['shards']]
    else:
        train_urls = list(braceexpand.braceexpand(spec))
        names = [_SHARD_NAME.findall(url) for url in train_urls]
        if not all(names):
            raise ShardsError(f'{spec}: not a folder of shards nor a pattern of .tar shard files (e.g. '
                              'DIR/train-{000000..000009}.tar or pipe:curl -s URL/train-{000000..000009}.tar)')
        first, name = train_urls[0], names[0][-1]
        cut = first.rfind(name)
        template = first[:cut] + '{}' + first[cut + len(name):]
        index_url = template.format(INDEX_NAME)
        if not index_url.startswith('pipe:'):
            _refuse_unfinished(Path(index_url).parent)
        index = _parse_index(_read_url(index_url), index_url)
    counts = {e['file']: e['images'] for e in index['splits']['train']['shards']}
    val_entries = index['splits']['val']['shards']
    val_counts = {e['file']: e['images'] for e in val_entries}
    names = [url.rsplit('/', 1)[-1] if from_folder else _SHARD_NAME.findall(url)[-1] for url in train_urls]
    if names and all(name in val_counts for name in names):
        # the validation shards named (what scnet eval reads): the validation split, and no training split
        val = ShardSplit(tuple(train_urls), tuple(val_counts[name] for name in names))
        return ShardSource(list(index['classes']), ShardSplit((), ()), val, spec)
    for url, name in zip(train_urls, names):
        if name not in counts and any(c in name for c in '*?['):
            raise ShardsError(f'{url}: a wildcard pattern, which is not expanded here (each shard is read on '
                              'its own, by its name); name the shards with a brace pattern such as '
                              f'{template.format("train-{000000..000009}.tar")}, or give their folder')
        if name not in counts:
            what = ('a validation shard, named among training ones: name the train-*.tar or the val-*.tar shards, '
                    'not both' if name in val_counts else
                    'not a shard of its index.json; name shards that scnet shards wrote, or write them again')
            raise ShardsError(f'{url}: {what}')
    val = ShardSplit(tuple(template.format(e['file']) for e in val_entries), tuple(e['images'] for e in val_entries))
    return ShardSource(list(index['classes']), ShardSplit(tuple(train_urls), tuple(counts[n] for n in names)), val,
                       spec)


def _refuse_unfinished(folder) -> None:
    """A folder that ``scnet shards`` began to fill (its plan is there) but whose ``index.json``, written last,
    is not: named as unfinished rather than as a folder without shards."""
    if (folder / PLAN_NAME).is_file() and not (folder / INDEX_NAME).is_file():
        raise ShardsError(f'{folder}: shards that scnet shards has not finished writing (no {INDEX_NAME} yet, which '
                          'it writes last): run the same scnet shards command again to finish them')


def _parse_index(data: bytes, where) -> Dict:
    try:
        index = json.loads(data)
        assert {'train', 'val'} <= set(index['splits']) and index['classes']
        return index
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ShardsError(f'{where}: not an index of shards written by scnet shards (JSON with classes and train '
                          'and val splits); write the shards with scnet shards') from None


def _shard_samples(url: str, first: int, stop: int, expected: int) -> Iterator[Tuple[int, Dict]]:
    """``(position, sample)`` for the samples ``first`` to ``stop - 1`` of the shard at ``url``."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    seen = 0
    try:
        with wds.gopen(url) as stream:
            samples = group_by_keys(tar_file_expander([{'url': url, 'stream': stream}]))
            for position, sample in enumerate(samples):
                if position >= first:
                    yield position, sample
                seen = position + 1
                if seen >= stop:
                    return
    except ShardsError:
        raise
    except Exception as e:
        raise ShardsError(f'{url}: cannot read the shard ({str(e).splitlines()[0] if str(e) else type(e).__name__}'
                          '); check the path or the command, or write the shards again') from None
    if seen < min(stop, expected):
        raise ShardsError(f'{url}: {seen} images where its index.json says {expected}; the shards changed after '
                          'they were indexed: write them again with scnet shards')


def _pieces(counts: Sequence[int], order: Sequence[int], start: int, stop: int) -> List[Tuple[int, int, int]]:
    """Images ``start`` to ``stop - 1`` of the shards concatenated in ``order``, as (shard, first, stop)."""
    pieces, position = [], 0
    for shard in order:
        lo, hi = max(start, position), min(stop, position + counts[shard])
        if lo < hi:
            pieces.append((shard, lo - position, hi - position))
        position += counts[shard]
    return pieces


def worker_batches(batches: int, workers: int) -> List[Tuple[int, int]]:
    """The contiguous batches ``[first, stop)`` of each of ``workers`` workers: the first ``batches % workers``
    get one more. A DataLoader takes its workers' batches in turn, so with these the ``j``-th batch it gives
    is worker ``j % workers``'s ``j // workers``-th."""
    bounds, first = [], 0
    for worker in range(workers):
        count = batches // workers + (worker < batches % workers)
        bounds.append((first, first + count))
        first += count
    return bounds


def _split(total: int, parts: int) -> List[Tuple[int, int]]:
    return [(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


def _worker() -> Tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _Decoding:
    """Decode and transform a raw shard sample into ``(image, label)``, or None when damaged and skipped."""

    def __init__(self, transform: Optional[Callable], skip_bad_images: bool, decoder: Optional[str],
                 num_classes: Optional[int] = None) -> None:
        self.transform, self.skip_bad_images, self.num_classes = transform, skip_bad_images, num_classes
        self.decoder = decoder or default_decoder()
        self.augment_seed: Optional[int] = None
        self.epoch = 0

    def __call__(self, sample: Dict, index: int):
        name = f"{sample.get('__url__', '')}: {_text(sample.get('path.txt')) or sample.get('__key__')}"
        data = next((sample[k] for k in _IMAGE_EXTENSIONS if k in sample), None)
        if data is None or 'cls' not in sample:
            raise ShardsError(f'{name}: a sample without an image or a cls entry; write the shards with scnet shards')
        image = decode_checked(lambda: decode_rgb_bytes(data, self.decoder), name, self.skip_bad_images)
        if image is None:
            return None
        label = _text(sample['cls']).strip()
        # (else a ValueError from a loader worker, or a class index past the network's outputs)
        if not label.isdigit():
            raise ShardsError(f'{name}: class index {label!r}, not a whole number >= 0; write the shards with '
                              'scnet shards')
        if self.num_classes is not None and int(label) >= self.num_classes:
            raise ShardsError(f'{name}: class index {label!r}, where its index.json lists {self.num_classes} '
                              f'classes (0 to {self.num_classes - 1}); the shards and their index do not belong '
                              'together: write them again with scnet shards')
        label = int(label)
        if self.transform is None:
            return image, label
        return seeded_transform(self.transform, image, self.augment_seed, self.epoch, index), label


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else ('' if value is None else str(value))


class ShardStream(IterableDataset, _Decoding):
    """This process's training images of an epoch (see the module docstring); ``len`` is their number.

    Give the DataLoader ``batch_size=micro``: each worker yields whole micro-batches. ``num_classes`` (the
    index's classes): a sample's class index at or past it is named as a mismatch of shards and index."""

    def __init__(self, split: ShardSplit, transform: Optional[Callable], *, batch_size: int, rank: int = 0,
                 world_size: int = 1, accum_steps: int = 1, seed: int = 0, shuffle_buffer: int = 1000,
                 skip_bad_images: bool = False, decoder: Optional[str] = None,
                 num_classes: Optional[int] = None) -> None:
        _Decoding.__init__(self, transform, skip_bad_images, decoder, num_classes)
        from scnet.train.sampling import check_batch

        self.micro = check_batch(batch_size, world_size, accum_steps, split.images)
        self.split, self.batch_size, self.rank, self.world_size = split, batch_size, rank, world_size
        self.accum_steps, self.seed, self.shuffle_buffer = accum_steps, seed, shuffle_buffer
        self.start_step = 0
        self.offsets = split.offsets

    @property
    def steps(self) -> int:
        return self.split.images // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Stream ``epoch``'s order (shards and shuffle seeded by (seed, epoch)), skipping its first
        ``start_step`` optimiser steps (those a state saved mid-epoch has done)."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f'start_step {start_step} is outside the epoch\'s {self.steps} steps')
        self.epoch, self.start_step = epoch, start_step

    @property
    def _batches(self) -> int:  # micro-batches of this process in an epoch
        return self.steps * self.accum_steps

    def __len__(self) -> int:
        return (self._batches - self.start_step * self.accum_steps) * self.micro

    def shard_order(self) -> List[int]:
        """The order in which this epoch reads the shards: a permutation seeded by (seed, epoch), the same on
        every process."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.split.urls), generator=generator).tolist()

    def __iter__(self) -> Iterator:
        worker, workers = _worker()
        # the epoch's j-th batch is worker j % W's (j // W)-th (worker_batches); resumed after S batches, this
        # loader's worker w gives batches S + w, S + w + W, ...: those of the epoch's worker (S + w) % W from its
        # ((S + w) // W)-th on
        first = self.start_step * self.accum_steps + worker
        role, skip = first % workers, first // workers
        lo, hi = worker_batches(self._batches, workers)[role]
        if skip >= hi - lo:
            return
        rank_start = self.rank * self._batches * self.micro
        raw = self._raw(rank_start + lo * self.micro, rank_start + hi * self.micro)
        if self.shuffle_buffer > 1:
            import webdataset as wds

            raw = wds.filters.shuffle(self.shuffle_buffer, self.shuffle_buffer,
                                      seed=f'{self.seed}/{self.epoch}/{self.rank}/{role}')(raw)
        for count, (index, sample) in enumerate(raw):
            if count >= skip * self.micro:
                yield self(sample, index)

    def _raw(self, start: int, stop: int) -> Iterator[Tuple[int, Dict]]:
        for shard, first, last in _pieces(self.split.counts, self.shard_order(), start, stop):
            url = self.split.urls[shard]
            for position, sample in _shard_samples(url, first, last, self.split.counts[shard]):
                yield self.offsets[shard] + position, sample


class ShardEvalStream(IterableDataset, _Decoding):
    """This process's validation images: the ``rank``-th of ``world_size`` contiguous ranges, in index order."""

    def __init__(self, split: ShardSplit, transform: Optional[Callable], *, rank: int = 0, world_size: int = 1,
                 skip_bad_images: bool = False, decoder: Optional[str] = None,
                 num_classes: Optional[int] = None) -> None:
        _Decoding.__init__(self, transform, skip_bad_images, decoder, num_classes)
        self.split = split
        self.start, self.stop = _split(split.images, world_size)[rank]

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator:
        worker, workers = _worker()
        lo, hi = _split(self.stop - self.start, workers)[worker]
        order = list(range(len(self.split.urls)))
        for shard, first, last in _pieces(self.split.counts, order, self.start + lo, self.start + hi):
            url = self.split.urls[shard]
            for position, sample in _shard_samples(url, first, last, self.split.counts[shard]):
                yield self(sample, self.split.offsets[shard] + position)


class ShardProbe(Dataset):
    """The first images of a stream as a small map-style set: what the duration estimate times a load on."""

    def __init__(self, stream, images: int = 8) -> None:
        self.stream, self.samples = stream, []
        split = stream.split
        for shard, url in enumerate(split.urls):
            for position, sample in _shard_samples(url, 0, images, split.counts[shard]):
                self.samples.append((split.offsets[shard] + position, sample))
            if len(self.samples) >= images:
                break

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        index, sample = self.samples[i]
        return self.stream(dict(sample), index)
