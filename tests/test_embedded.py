"""The embedded dataset of `scnet train`: layout, determinism, reuse, regeneration, balance, no global shortcut."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from scnet.data.embedded import (CLASSES, DEFAULT_IMAGE_SIZE, EMBEDDED_NAME, GENERATOR_VERSION,
                                 build_embedded_dataset, default_root)

SMALL = dict(train_per_class=3, val_per_class=2, image_size=24)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob('*.png'))


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return build_embedded_dataset(tmp_path_factory.mktemp('emb') / 'ds', seed=0, **SMALL)


def test_layout_counts_and_description(small):
    assert sorted(p.name for p in small.iterdir()) == ['dataset.json', 'train', 'val']
    for split, n in (('train', 3), ('val', 2)):
        assert sorted(p.name for p in (small / split).iterdir()) == sorted(CLASSES)   # ImageFolder order
        for cls in CLASSES:                                                           # balanced
            assert sorted(p.name for p in (small / split / cls).iterdir()) == [f'{i:05d}.png' for i in range(n)]
    info = json.loads((small / 'dataset.json').read_text())
    assert info['name'] == EMBEDDED_NAME and info['generator_version'] == GENERATOR_VERSION
    assert info['classes'] == list(CLASSES) and info['seed'] == 0 and info['image_size'] == 24
    assert info['counts'] == {'train': 3 * len(CLASSES), 'val': 2 * len(CLASSES)}
    assert not list(small.parent.glob('.*tmp*'))                                      # no temporary left over


def test_images_decode_at_the_right_size(small):
    for path in list(small.rglob('*.png'))[:20]:
        with Image.open(path) as im:
            assert im.format == 'PNG' and im.mode == 'RGB' and im.size == (24, 24)
            im.load()


def test_deterministic_per_seed(small, tmp_path):
    same = build_embedded_dataset(tmp_path / 'same', seed=0, **SMALL)
    other = build_embedded_dataset(tmp_path / 'other', seed=1, **SMALL)
    names = ['train/circle/00000.png', 'train/star/00002.png', 'val/triangle/00001.png']
    for name in names:
        assert (same / name).read_bytes() == (small / name).read_bytes()
        assert (other / name).read_bytes() != (small / name).read_bytes()
    # an image does not depend on how many others the split holds
    bigger = build_embedded_dataset(tmp_path / 'bigger', seed=0, train_per_class=4, val_per_class=2, image_size=24)
    assert (bigger / 'val/heart/00001.png').read_bytes() == (small / 'val/heart/00001.png').read_bytes()


def test_complete_folder_is_reused_untouched(small):
    before = {name: os.stat(small / name).st_mtime_ns for name in _files(small) + ['dataset.json']}
    assert build_embedded_dataset(small, seed=0, **SMALL) == small
    assert {name: os.stat(small / name).st_mtime_ns for name in before} == before


@pytest.mark.parametrize('damage', ['missing_image', 'extra_image', 'no_description', 'other_parameters'])
def test_incomplete_or_different_folder_is_regenerated(tmp_path, damage):
    root = build_embedded_dataset(tmp_path / 'ds', seed=0, **SMALL)
    reference = {name: (root / name).read_bytes() for name in _files(root)}
    if damage == 'missing_image':
        (root / 'train/cross/00001.png').unlink()
    elif damage == 'extra_image':
        (root / 'val/square/00007.png').write_bytes(b'')
    elif damage == 'no_description':       # a folder whose generation was interrupted before dataset.json
        (root / 'dataset.json').unlink()
    else:                                   # same folder asked with other sizes: rebuilt with those
        root = build_embedded_dataset(root, seed=0, train_per_class=2, val_per_class=1, image_size=24)
        assert len(_files(root)) == 3 * len(CLASSES)
        root = build_embedded_dataset(root, seed=0, **SMALL)
    assert build_embedded_dataset(root, seed=0, **SMALL) == root
    assert {name: (root / name).read_bytes() for name in _files(root)} == reference
    assert json.loads((root / 'dataset.json').read_text())['train_per_class'] == 3


def test_leftovers_of_a_killed_generation_are_cleaned(tmp_path):
    stale = tmp_path / '.ds.tmp-4999999'        # above any pid: that process is gone
    (stale / 'train' / 'circle').mkdir(parents=True)
    root = build_embedded_dataset(tmp_path / 'ds', **SMALL)
    assert not stale.exists() and len(_files(root)) == 5 * len(CLASSES)


def test_a_folder_that_is_not_a_dataset_is_not_replaced(tmp_path):
    root = tmp_path / 'mine'
    root.mkdir()
    (root / 'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='not an embedded dataset'):
        build_embedded_dataset(root, **SMALL)
    assert (root / 'notes.txt').read_text() == 'keep me'
    assert not list(tmp_path.glob('.*tmp*'))


@pytest.mark.parametrize('layout', ['other_classes', 'other_files', 'other_description'])
def test_a_users_image_folder_set_is_not_replaced(tmp_path, layout):
    """An ImageFolder set of the user's has the same top-level names (train, val, maybe a dataset.json): its
    class folders, file names or description tell it apart, and it is refused before anything is built."""
    root = tmp_path / 'mine'
    cls = 'circle' if layout != 'other_classes' else 'cat'
    name = '00000.png' if layout != 'other_files' else 'IMG_0001.jpg'
    for split in ('train', 'val'):
        (root / split / cls).mkdir(parents=True)
        (root / split / cls / name).write_bytes(b'my photo')
    if layout == 'other_description':
        (root / 'dataset.json').write_text('{"name": "my cats"}')
    before = sorted(str(p.relative_to(root)) for p in root.rglob('*'))
    with pytest.raises(FileExistsError, match='mine is not an embedded dataset folder'):
        build_embedded_dataset(root, **SMALL)
    assert sorted(str(p.relative_to(root)) for p in root.rglob('*')) == before
    assert (root / 'train' / cls / name).read_bytes() == b'my photo'
    assert not list(tmp_path.glob('.*tmp*'))


def test_bad_arguments():
    for bad in (dict(train_per_class=0), dict(val_per_class=1.5), dict(image_size=4)):
        with pytest.raises(ValueError):
            build_embedded_dataset('/nonexistent/never-written', **{**SMALL, **bad})


def test_default_root_honours_scnet_cache(monkeypatch, tmp_path):
    monkeypatch.setenv('SCNET_CACHE', str(tmp_path))
    assert default_root() == tmp_path / 'datasets' / EMBEDDED_NAME
    monkeypatch.delenv('SCNET_CACHE')
    assert default_root().parts[-3:] == ('scnet', 'datasets', EMBEDDED_NAME)


def _global_statistics(root, split):
    feats, labels = [], []
    for ci, cls in enumerate(CLASSES):
        for path in sorted((root / split / cls).iterdir()):
            x = np.asarray(Image.open(path), dtype=np.float64) / 255
            luma = x @ [0.299, 0.587, 0.114]
            feats.append([*x.mean((0, 1)), luma.mean(), luma.std()])
            labels.append(ci)
    return np.array(feats), np.array(labels)


def test_classes_are_not_told_apart_by_global_colour_or_intensity(tmp_path):
    """Nearest-centroid on per-image mean colour, mean and spread of intensity is near chance (1/8)."""
    root = build_embedded_dataset(tmp_path / 'ds', seed=3, train_per_class=60, val_per_class=40,
                                  image_size=DEFAULT_IMAGE_SIZE)
    xt, yt = _global_statistics(root, 'train')
    xv, yv = _global_statistics(root, 'val')
    mu, sd = xt.mean(0), xt.std(0)
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    for columns in ([0, 1, 2], [3], [3, 4]):            # mean RGB; mean intensity; mean and std of intensity
        centroids = np.stack([xt[yt == c][:, columns].mean(0) for c in range(len(CLASSES))])
        dist = ((xv[:, None, columns] - centroids[None]) ** 2).sum(-1)
        accuracy = (dist.argmin(1) == yv).mean()
        assert accuracy < 0.25, (columns, accuracy)     # chance 0.125; 320 val images: sd of chance ~0.02


def test_a_build_reports_its_expected_and_actual_time(tmp_path):
    heard = []
    root = build_embedded_dataset(tmp_path / 'ds', seed=0, report=heard.append, **SMALL)
    assert len(heard) == 2
    assert heard[0].startswith(f'building the embedded dataset: {5 * len(CLASSES)} images of 24 px into {root} ')
    assert 'expected' in heard[0] and 's on this machine' in heard[0]
    assert heard[1].startswith('built the embedded dataset in ')
    build_embedded_dataset(root, seed=0, report=heard.append, **SMALL)   # reused: nothing to report
    assert len(heard) == 2


def test_images_are_the_same_whichever_number_of_processes_draws_them(small, tmp_path, monkeypatch):
    import scnet.data.embedded as embedded

    monkeypatch.setattr(embedded, '_PARALLEL_FROM', 0)          # even a tiny build forks (on Linux)
    monkeypatch.setattr(embedded, '_CHUNK', 2)                  # several chunks per class
    shared = build_embedded_dataset(tmp_path / 'shared', seed=0, **SMALL)
    assert _files(shared) == _files(small)
    assert all((shared / name).read_bytes() == (small / name).read_bytes() for name in _files(small))
