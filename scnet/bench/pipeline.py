"""Input-pipeline throughput: images decoded and augmented per second per DataLoader worker.

Why measure it: a GPU that trains a ResNet-50 at a few thousand images/s idles whenever the loader workers
deliver fewer, and how many workers that takes depends on the decoder, the source image size and the CPU.
``measure_pipeline`` times exactly what training runs, ``CheckedImageFolder`` with the paper's training
transforms (random-resized crop, flip, normalise) behind a ``DataLoader``, once per decoder and worker count;
``workers_needed`` turns a per-worker rate into the number of workers one GPU needs.

How it times: the files are read once before any timing (a decode-only pass, whose rate is reported too),
so the figures are CPU cost, not disk speed. Each loader keeps its workers alive across a short warm-up pass
and the timed pass, so the timed pass pays neither process start-up nor first-call costs. In-process runs
(``workers=0``) use one torch thread, as a DataLoader worker does.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scnet.data.folders import (CheckedImageFolder, available_decoders, collate_skipping_bad, decode_rgb,
                                decode_rgb_tensor)
from scnet.data.transforms import train_transform

__all__ = ['BATCH_SIZE', 'HEADROOM', 'write_photo_like_jpegs', 'measure_pipeline', 'workers_needed']

#: Images per loader batch while timing.
BATCH_SIZE = 32
#: Spare capacity ``workers_needed`` plans for (see there).
HEADROOM = 1.25

PathLike = Union[str, Path]


def _photo_like(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth shapes at four scales, a lighting gradient and film grain: compresses like a photograph
    (about 4 bits per pixel at JPEG quality 90), where plain noise would be far larger and a flat gradient
    far smaller, and decode time follows the compressed size."""
    picture = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 90), (16, 45), (64, 25), (256, 15)):
        coarse = rng.random((max(2, cells * height // width), cells, 3))
        layer = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        picture += np.asarray(layer, np.float32) * (amplitude / 255)
    picture += np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    picture += rng.normal(0, 16, (height, width, 1)).astype(np.float32)
    picture += rng.normal(0, 5, picture.shape).astype(np.float32)
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))


def write_photo_like_jpegs(folder: PathLike, images: int, *, size: Tuple[int, int] = (500, 375), seed: int = 0,
                           classes: int = 4, quality: int = 90) -> Path:
    """Write ``images`` photo-like JPEGs of ``size`` (width, height) into ``folder/<class>/`` (``classes``
    class folders, the layout ``CheckedImageFolder`` reads); returns ``folder``.

    At most 16 distinct pictures are drawn and repeated under different names: decode speed depends on the
    compressed size, not on which picture it is, and drawing each one costs more than decoding it.
    """
    if images < 1 or classes < 1:
        raise ValueError(f'need at least one image and one class, got images={images}, classes={classes}')
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f'size must be a positive (width, height), got {size}')
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    encoded: List[bytes] = []
    for i in range(images):
        if len(encoded) < 16:
            path = folder / f'class{i % classes}' / f'{i:05d}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            _photo_like(width, height, rng).save(path, quality=quality)
            encoded.append(path.read_bytes())
        else:
            (folder / f'class{i % classes}' / f'{i:05d}.jpg').write_bytes(encoded[i % len(encoded)])
    return folder


@contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _decode_rate(dataset: CheckedImageFolder, indices: Sequence[int]) -> float:
    paths = [dataset.samples[i][0] for i in indices]
    decode = decode_rgb if dataset.decoder == 'pil' else lambda p: decode_rgb_tensor(p, dataset.decoder)
    decode(paths[0])
    start = time.perf_counter()
    for path in paths:
        decode(path)
    return len(paths) / (time.perf_counter() - start)


def _loader_seconds(dataset: CheckedImageFolder, indices: List[int], workers: int) -> float:
    """Seconds for a loader with ``workers`` workers to deliver ``indices``, after a warm-up pass."""
    order = indices[:BATCH_SIZE * max(1, workers)]  # the sampler: refilled with the timed indices below
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, sampler=order, num_workers=workers,
                        collate_fn=collate_skipping_bad, persistent_workers=workers > 0)
    try:
        for _ in loader:
            pass
        order[:] = indices
        start = time.perf_counter()
        delivered = sum(len(targets) for _, targets, _ in loader)
        seconds = time.perf_counter() - start
    finally:
        del loader  # persistent workers end with their loader
    if delivered != len(indices):
        raise RuntimeError(f'the loader delivered {delivered} of {len(indices)} images')
    return seconds


def _stream_seconds(dataset: CheckedImageFolder, indices: List[int], workers: int) -> Tuple[int, float]:
    """(images, seconds) for ``ShardStream`` over tar shards of the images at ``indices`` (one shard a worker)
    to deliver them, after a warm-up pass; the shards are written to a temporary folder, removed after."""
    from scnet.data.shards import _Sample, _write_shard
    from scnet.data.streams import ShardSplit, ShardStream

    folder = Path(tempfile.mkdtemp(prefix='scnet-shards-'))
    try:
        root = Path(dataset.root)
        samples = [_Sample(str(Path(dataset.samples[i][0]).relative_to(root)), dataset.samples[i][1], 0)
                   for i in indices]
        parts = max(1, workers)
        for n in range(parts):
            _write_shard(root, folder, 'train', n, samples[n::parts])
        split = ShardSplit(tuple(str(folder / f'train-{n:06d}.tar') for n in range(parts)),
                           tuple(len(samples[n::parts]) for n in range(parts)))
        batch = min(BATCH_SIZE, len(samples))
        stream = ShardStream(split, dataset.transform, batch_size=batch, seed=0, decoder=dataset.decoder)
        stream.augment_seed = 0
        stream.set_epoch(1)
        loader = DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=collate_skipping_bad,
                            persistent_workers=workers > 0)
        for _ in loader:
            pass
        start = time.perf_counter()
        delivered = sum(len(targets) for _, targets, _ in loader)
        seconds = time.perf_counter() - start
        del loader
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if delivered != len(stream):
        raise RuntimeError(f'the stream delivered {delivered} of {len(stream)} images')
    return delivered, seconds


def _source_facts(dataset: CheckedImageFolder, indices: Sequence[int]) -> Tuple[List[int], float]:
    """Mean (width, height) and mean file size in KiB of the timed images (headers only)."""
    sizes, kib = [], []
    for i in sorted(set(indices)):
        path = Path(dataset.samples[i][0])
        with Image.open(path) as image:
            sizes.append(image.size)
        kib.append(path.stat().st_size / 1024)
    return [round(float(np.mean([s[0] for s in sizes]))), round(float(np.mean([s[1] for s in sizes])))], \
        round(float(np.mean(kib)), 1)


def measure_pipeline(root: Optional[PathLike] = None, *, decoders: Sequence[str] = ('pil', 'torchvision'),
                     image_size: int = 224, images: int = 256, workers: Sequence[int] = (0,), seed: int = 0,
                     source_size: Tuple[int, int] = (500, 375),
                     readers: Sequence[str] = ('folder',)) -> List[Dict[str, object]]:
    """Images/s of decode + training transforms through ``CheckedImageFolder`` and a ``DataLoader``.

    ``readers``: ``folder`` (the image files, random access) and/or ``shards`` (the same images in as many
    WebDataset tar shards as workers, streamed by ``scnet.data.streams.ShardStream`` in whole batches of at
    most ``BATCH_SIZE``: ``images`` rounded down to a whole number of batches).

    ``root``: a folder of class folders (``DATA/train``); ``None`` writes ``images`` photo-like JPEGs of
    ``source_size`` (width, height) into a temporary folder, removed afterwards. ``images`` images are
    timed (a real folder's first ones, repeated if it has fewer) for each decoder in ``decoders`` (names of
    ``scnet.data.folders.DECODERS``) and each loader worker count in ``workers`` (0: in this process).

    One JSON-ready row per (decoder, workers): ``images_per_s`` is the loader's rate,
    ``images_per_s_per_worker`` that over ``max(1, workers)``, ``decode_images_per_s`` the rate of decoding
    alone in this process with one thread, ``source_size`` and ``mean_file_kib`` describe the timed files.
    """
    if images < 1 or image_size < 1:
        raise ValueError(f'images and image_size must be positive, got images={images}, image_size={image_size}')
    if not readers or set(readers) - {'folder', 'shards'}:
        raise ValueError(f'readers must be folder and/or shards, got {list(readers)}')
    if any(w < 0 for w in workers) or not workers:
        raise ValueError(f'workers must be one or more counts >= 0, got {list(workers)}')
    unknown = [d for d in decoders if d not in available_decoders()]
    if unknown or not decoders:
        raise ValueError(f'unknown or unavailable decoder(s) {", ".join(unknown) or "(none given)"}; '
                         f'available here: {", ".join(available_decoders())}')
    made = None
    if root is None:
        made = Path(tempfile.mkdtemp(prefix='scnet-pipeline-'))
        root = write_photo_like_jpegs(made, images, size=tuple(source_size), seed=seed)
    try:
        rows = []
        for decoder in decoders:
            dataset = CheckedImageFolder(Path(root), train_transform(image_size), decoder=decoder)
            dataset.augment_seed = seed
            indices = [i % len(dataset) for i in range(images)]
            with _one_thread():
                decode_rate = _decode_rate(dataset, indices)
                facts = _source_facts(dataset, indices)
            for reader, count in ((r, w) for r in readers for w in workers):
                with _one_thread():  # workers > 0 run one thread each anyway (DataLoader sets it)
                    timed, seconds = (images, _loader_seconds(dataset, indices, count)) if reader == 'folder' \
                        else _stream_seconds(dataset, indices, count)
                rate = timed / seconds
                rows.append({'reader': reader, 'decoder': decoder, 'workers': count, 'images': timed,
                             'seconds': round(seconds, 6), 'images_per_s': round(rate, 1),
                             'images_per_s_per_worker': round(rate / max(1, count), 1),
                             'decode_images_per_s': round(decode_rate, 1), 'image_size': image_size,
                             'source_size': facts[0], 'mean_file_kib': facts[1], 'batch_size': BATCH_SIZE,
                             'torch_threads': 1})
        return rows
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def workers_needed(gpu_images_per_s: float, per_worker_images_per_s: float, headroom: float = HEADROOM) -> int:
    """Loader workers that keep a GPU training at ``gpu_images_per_s`` fed: ``ceil(headroom * gpu / worker)``.

    The headroom (25 % by default) is for what a bench run does not see: the training process's own CPU
    work and host-to-device copies competing for the cores, files coming from disk rather than the page
    cache, larger or progressive JPEGs, and per-core speed dropping when every core is busy.
    """
    if gpu_images_per_s <= 0 or per_worker_images_per_s <= 0 or headroom < 1:
        raise ValueError(f'rates must be positive and headroom >= 1, got gpu={gpu_images_per_s}, '
                         f'worker={per_worker_images_per_s}, headroom={headroom}')
    return math.ceil(headroom * gpu_images_per_s / per_worker_images_per_s)
