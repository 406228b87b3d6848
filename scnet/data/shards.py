"""An ImageNet-layout folder written as WebDataset tar shards, with an index that readers rely on.

``OUT/`` after ``write_shards(SRC, OUT)``::

    train-000000.tar ...  the training images, about ``shard_size`` bytes a shard, in the WebDataset layout:
                          per sample ``KEY.<jpg|png|...>`` (the file's bytes, not re-encoded), ``KEY.cls`` (the
                          class index) and ``KEY.path.txt`` (the path under SRC, which names a damaged sample)
    val-000000.tar ...    the validation images, the same way
    classes.txt           the class names, one a line, in index order
    index.json            per split and per shard: file, images, bytes, images per class; the reader takes
                          the shard sizes from it to split an epoch exactly over processes and workers

Each shard is written to a hidden temporary file and renamed when complete, so a shard file is never half
written. The plan (which image goes into which shard) depends only on the listing of SRC, the options and
the seed, and is kept in ``OUT/.plan.json``; an interrupted run started again with the same arguments skips
the shards already there, once each is checked to hold every image of its plan whole (a shard cut short by a
copy or a full disk is written again). The tar writing is ``webdataset.TarWriter``'s; what is written here is the plan,
the atomic renames and the index, which webdataset's ``ShardWriter`` does not do (it writes in place and
sizes shards as it goes, so an interrupted run cannot tell a complete shard from a cut one).

Every image is decoded once before the plan is made (in threads: the decoders release the GIL), since a shard
keeps the file's bytes as they are and a damaged one would otherwise stop a training run hours later, in a
shard that names it only by its path. A damaged image stops the writing, naming it; with ``skip_bad_images``
(``--skip-bad-images``, as for training on a folder) it is left out of the shards and listed in the index.
JPEGs are decoded at an eighth of their size (PIL's ``draft``): the whole compressed stream is still read, so a
truncated file still fails, at a fraction of the cost. (PIL's ``verify`` would be cheaper still, but it does not
read a JPEG's image data at all, so it passes truncated ones.)
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from scnet.data.folders import DataError, class_images, split_folders

__all__ = ['ShardsError', 'SPLITS', 'INDEX_NAME', 'CLASSES_NAME', 'PLAN_NAME', 'parse_size', 'plan_shards',
           'write_shards', 'read_index']

SPLITS = ('train', 'val')
INDEX_NAME = 'index.json'
CLASSES_NAME = 'classes.txt'
#: Written first into a folder that scnet shards fills (index.json last): a folder holding it and no index is
#: one whose writing has not finished.
PLAN_NAME = '.plan.json'
_UNITS = {'': 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12,
          'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40}


class ShardsError(DataError):
    """Shards that cannot be written or read as asked."""


def parse_size(text: str) -> int:
    """``'1GB'``, ``'500MB'``, ``'64MiB'`` or a number of bytes, as bytes."""
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*', str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ShardsError(f'shard size {text!r}: give a positive size such as 1GB, 500MB, 64MiB or a number of '
                          'bytes')
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class _Sample:
    path: str       # under SRC
    label: int
    size: int


def _samples(folder: Path, root: Path, classes: Sequence[str]) -> List[_Sample]:
    samples = []
    for label, name in enumerate(classes):
        for file in class_images(folder / name):  # the images training reads from the folder, in its order
            path = Path(file)
            samples.append(_Sample(str(path.relative_to(root)), label, path.stat().st_size))
    return samples


def _image_problem(path: Path) -> Optional[str]:
    """Why the image at ``path`` cannot be decoded (None: it can); see the module docstring."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format == 'JPEG':
                image.draft('RGB', (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__
    return None


def _readable(src: Path, samples: List[_Sample], *, skip_bad_images: bool, bad: List[str],
              progress: bool = False) -> List[_Sample]:
    """The ``samples`` whose images decode; a damaged one raises ``ShardsError`` naming it or, with
    ``skip_bad_images``, is left out and its path appended to ``bad``."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(tqdm(pool.map(lambda s: _image_problem(src / s.path), samples), total=len(samples),
                             unit='img', desc='checking images', disable=None if progress else True,
                             dynamic_ncols=True, leave=False))
    good = []
    for sample, problem in zip(samples, problems):
        if problem is None:
            good.append(sample)
        elif skip_bad_images:
            bad.append(sample.path)
        else:
            raise ShardsError(f'{src / sample.path}: unreadable image ({problem}); fix or remove it, or pass '
                              '--skip-bad-images to leave such files out of the shards')
    return good


def plan_shards(src: Path, *, shard_size: int, shuffle: bool = False, seed: int = 0, check_images: bool = False,
                skip_bad_images: bool = False, bad: Optional[List[str]] = None, progress: bool = False
                ) -> Tuple[List[str], Dict[str, List[List[_Sample]]]]:
    """The classes of ``src`` and, per split, its samples cut into shards of at most ``shard_size`` bytes
    (at least one image a shard), in folder order or, with ``shuffle``, in an order drawn from ``seed``.

    ``check_images``: decode every image first (``_readable``): a damaged one is an error or, with
    ``skip_bad_images``, left out of the plan, its path appended to ``bad``."""
    src = Path(src)
    _, _, classes = split_folders(src)
    plan = {}
    for split in SPLITS:
        samples = _samples(src / split, src, classes)
        if check_images:
            samples = _readable(src, samples, skip_bad_images=skip_bad_images,
                                bad=bad if bad is not None else [], progress=progress)
        if shuffle:
            random.Random(f'{seed}/{split}').shuffle(samples)
        shards: List[List[_Sample]] = [[]]
        used = 0
        for sample in samples:
            if shards[-1] and used + sample.size > shard_size:
                shards.append([])
                used = 0
            shards[-1].append(sample)
            used += sample.size
        plan[split] = shards
    return classes, plan


def _fingerprint(classes: List[str], plan: Dict[str, List[List[_Sample]]]) -> str:
    text = json.dumps([classes, {s: [[(x.path, x.label, x.size) for x in shard] for shard in shards]
                                 for s, shards in plan.items()}])
    return hashlib.sha256(text.encode()).hexdigest()


def _shard_name(split: str, number: int) -> str:
    return f'{split}-{number:06d}.tar'


def _key(split: str, number: int, position: int) -> str:
    # no dots (webdataset splits a member's name at the first dot of its last path component)
    return f'{split}_{number:06d}_{position:06d}'


def _extension(path: str) -> str:
    ext = path.rsplit('.', 1)[-1].lower()
    return 'jpg' if ext == 'jpeg' else ext


def _write_shard(src: Path, out: Path, split: str, number: int, shard: List[_Sample]) -> None:
    import webdataset as wds

    final = out / _shard_name(split, number)
    tmp = out / f'.{final.name}.partial'
    with open(tmp, 'wb') as f:
        writer = wds.TarWriter(f, mtime=0.0)  # the same bytes from the same images: reproducible shards
        for position, sample in enumerate(shard):
            writer.write({'__key__': _key(split, number, position), _extension(sample.path):
                          (src / sample.path).read_bytes(), 'cls': sample.label, 'path.txt': sample.path})
        writer.close()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _complete(path: Path, shard: Sequence[_Sample]) -> bool:
    """Whether the shard file ``path`` holds every sample of ``shard`` whole: its members (three a sample) and
    their image bytes as the plan (and index.json) counts them, the last one's data inside the file. Read
    from the tar headers only; a file cut short (a copy or a full disk) fails."""
    import tarfile

    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError):
        return False
    images = sum(m.size for m in members if not m.name.endswith(('.cls', '.path.txt')))
    return (len(members) == 3 * len(shard) and images == sum(s.size for s in shard)
            and members[-1].offset_data + members[-1].size <= path.stat().st_size)


def _check_folders(src: Path, out: Path) -> None:
    """Refuse an ``out`` that is a file, or inside ``src``, whose shards a second run would pack as images."""
    if out.exists() and not out.is_dir():
        raise ShardsError(f'{out} is a file, not a folder: give a new or empty output folder for the shards')
    if src.is_dir() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
        raise ShardsError(f'{out} is inside {src}: the shards would be taken for images of it; give an output '
                          f'folder outside {src}')


def _skipped_line(bad: Iterable[str]) -> str:
    bad = list(bad)
    return f'left out {len(bad)} unreadable image{"s" if len(bad) != 1 else ""}: {", ".join(bad[:5])}' + (
        f', ... ({len(bad) - 5} more, listed in {INDEX_NAME})' if len(bad) > 5 else '')


def write_shards(src: Path, out: Path, *, shard_size: int = 10**9, shuffle: bool = False, seed: int = 0,
                 progress: bool = True, report: Callable[[str], None] = print,
                 skip_bad_images: bool = False) -> Dict:
    """Write ``src``'s train and val images as shards into ``out`` (see the module docstring); returns the
    index. Started again after an interruption, with the same arguments, it writes only the missing shards
    (and those cut short since). ``skip_bad_images``: leave images that do not decode out (listed in the
    index under ``skipped``) instead of stopping."""
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    _check_folders(src, out)
    bad: List[str] = []
    classes, plan = plan_shards(src, shard_size=shard_size, shuffle=shuffle, seed=seed, check_images=True,
                                skip_bad_images=skip_bad_images, bad=bad, progress=progress)
    if bad:
        report(_skipped_line(bad))
    fingerprint = _fingerprint(classes, plan)
    plan_file = out / PLAN_NAME
    if out.is_dir() and any(out.iterdir()):
        previous = json.loads(plan_file.read_text()).get('fingerprint') if plan_file.is_file() else None
        if previous != fingerprint:
            raise ShardsError(f'{out} already holds other files or shards written from other images or options: '
                              'give an empty or new output folder (or the same arguments to finish it)')
    out.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps({'fingerprint': fingerprint, 'source': str(src.resolve())}))
    cut = [_shard_name(split, n) for split in SPLITS for n, shard in enumerate(plan[split])
           if shard and (out / _shard_name(split, n)).is_file() and not _complete(out / _shard_name(split, n), shard)]
    if cut:
        report(f'{out}: {", ".join(cut)} cut short or changed since written; writing '
               f'{"it" if len(cut) == 1 else "them"} again')
    todo = [(split, n, shard) for split in SPLITS for n, shard in enumerate(plan[split])
            if shard and (not (out / _shard_name(split, n)).is_file() or _shard_name(split, n) in cut)]
    done = sum(len(shard) for split in SPLITS for shard in plan[split]) - sum(len(s) for _, _, s in todo)
    if done:
        report(f'{out}: {done} images already in shards from an earlier run; writing the rest')
    with tqdm(total=sum(len(s) for _, _, s in todo), unit='img', desc='shards', disable=None if progress else True,
              dynamic_ncols=True, leave=False) as bar:
        for split, number, shard in todo:
            _write_shard(src, out, split, number, shard)
            bar.update(len(shard))
    index = {'format': 'webdataset', 'classes': classes, 'shuffled': shuffle, 'seed': seed, 'splits': {}}
    if bad:
        index['skipped'] = bad
    for split in SPLITS:
        entries = [{'file': _shard_name(split, n), 'images': len(shard), 'bytes': sum(s.size for s in shard),
                    'per_class': _per_class(shard, classes)} for n, shard in enumerate(plan[split]) if shard]
        index['splits'][split] = {'images': sum(e['images'] for e in entries), 'shards': entries,
                                  'per_class': _per_class([s for shard in plan[split] for s in shard], classes)}
    (out / CLASSES_NAME).write_text(''.join(f'{c}\n' for c in classes))
    tmp = out / f'.{INDEX_NAME}.partial'
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX_NAME)
    return index


def _per_class(samples: Sequence[_Sample], classes: Sequence[str]) -> Dict[str, int]:
    counts = Counter(s.label for s in samples)
    return {classes[label]: counts[label] for label in sorted(counts)}


def read_index(folder: Path) -> Optional[Dict]:
    """``folder``'s ``index.json`` (None when there is none)."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardsError(f'{path}: not valid JSON ({e}); write the shards again with scnet shards') from None
