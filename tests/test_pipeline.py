"""The input pipeline: tensor decoders give PIL's pixels for every format, corrupt files still fail with their
path, augmentation is seeded per sample whichever decoder, and the throughput benchmark returns sane rows."""
import io
import json
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from scnet.bench.pipeline import BATCH_SIZE, measure_pipeline, workers_needed, write_photo_like_jpegs
from scnet.data.folders import (DECODERS, BadImageError, CheckedImageFolder, available_decoders, decode_rgb,
                                decode_rgb_tensor, default_decoder)
from scnet.data.transforms import IMAGENET_STD, eval_transform, train_transform

TENSOR_DECODERS = [d for d in available_decoders() if d != 'pil']


def _rgb(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _animated_gif(path):
    frames = [_rgb(s).convert('P') for s in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _grey16(path):
    Image.fromarray((np.random.default_rng(1).random((30, 40)) * 65535).astype(np.uint16)).save(path)


# name -> (file name, writer); every one must decode to PIL's RGB pixels
FORMATS = {
    'jpeg': ('a.jpg', lambda p: _rgb().save(p, quality=90)),
    'progressive-jpeg': ('a.jpg', lambda p: _rgb().save(p, quality=90, progressive=True)),
    'greyscale-jpeg': ('a.jpg', lambda p: _rgb().convert('L').save(p)),
    'cmyk-jpeg': ('a.jpg', lambda p: _rgb().convert('CMYK').save(p)),
    'png': ('a.png', lambda p: _rgb().save(p)),
    'rgba-png': ('a.png', lambda p: _rgb().convert('RGBA').save(p)),
    'greyscale-alpha-png': ('a.png', lambda p: _rgb().convert('LA').save(p)),
    'palette-png-transparent': ('a.png', lambda p: _rgb().convert('P').save(p, transparency=3)),
    'one-bit-png': ('a.png', lambda p: _rgb().convert('1').save(p)),
    'palette-gif': ('a.gif', lambda p: _rgb().convert('P').save(p)),
    'animated-gif': ('a.gif', _animated_gif),
    'webp': ('a.webp', lambda p: _rgb().save(p, quality=90)),
    'bmp': ('a.bmp', lambda p: _rgb().save(p)),          # torchvision cannot read it: PIL does
    'tiff': ('a.tiff', lambda p: _rgb().save(p)),
}


@pytest.mark.parametrize('decoder', TENSOR_DECODERS)
@pytest.mark.parametrize('kind', sorted(FORMATS))
def test_tensor_decoders_give_pils_pixels_for_every_format(kind, decoder, tmp_path):
    name, write = FORMATS[kind]
    path = tmp_path / name
    write(path)
    image = decode_rgb_tensor(str(path), decoder)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    assert torch.equal(image, TF.pil_to_tensor(decode_rgb(str(path))))


@pytest.mark.parametrize('decoder', TENSOR_DECODERS)
def test_sixteen_bit_png_is_scaled_to_eight_bits(decoder, tmp_path):
    # PIL's I;16 -> RGB clips at 255 (a white picture); the tensor decoders scale to 8 bits instead
    # (torchvision keeps the top byte, torchcodec rounds value / 257: one level apart at most)
    path = tmp_path / 'deep.png'
    _grey16(path)
    image = decode_rgb_tensor(str(path), decoder)
    expected = torch.from_numpy(np.asarray(Image.open(path)) / 257).expand(3, -1, -1)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    assert (image.double() - expected).abs().max() <= 1


def test_decoder_names_are_checked(tmp_path):
    assert default_decoder() in TENSOR_DECODERS and set(available_decoders()) <= set(DECODERS)
    path = tmp_path / 'a.jpg'
    _rgb().save(path)
    with pytest.raises(ValueError, match='not a tensor decoder'):
        decode_rgb_tensor(str(path), 'pil')
    root = write_photo_like_jpegs(tmp_path / 'data', 2, size=(16, 12), classes=1)
    with pytest.raises(ValueError, match='not available here'):
        CheckedImageFolder(root, decoder='imagemagick')


@pytest.fixture
def photos(tmp_path):
    return write_photo_like_jpegs(tmp_path / 'data', 6, size=(64, 48), classes=2)


@pytest.mark.parametrize('decoder', available_decoders())
@pytest.mark.parametrize('damage', ['truncated-jpeg', 'truncated-png', 'not-an-image', 'empty'])
def test_corrupt_file_names_its_path_or_is_skipped(photos, decoder, damage):
    bad = photos / 'class0' / '00000.jpg'
    if damage == 'truncated-jpeg':
        bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])
    elif damage == 'truncated-png':
        buffer = io.BytesIO()
        _rgb().save(buffer, 'PNG')
        bad = bad.with_suffix('.png')
        bad.write_bytes(buffer.getvalue()[:200])
    elif damage == 'not-an-image':
        bad.write_text('hello')
    else:
        bad.write_bytes(b'')
    dataset = CheckedImageFolder(photos, train_transform(32), decoder=decoder)
    index = [p for p, _ in dataset.samples].index(str(bad))
    with pytest.raises(BadImageError, match='unreadable image') as error:
        dataset[index]
    assert str(bad) in str(error.value)
    dataset.skip_bad_images = True
    assert dataset[index] is None


@pytest.mark.parametrize('decoder', available_decoders())
def test_same_seed_epoch_and_index_give_the_same_crop(photos, decoder):
    dataset = CheckedImageFolder(photos, train_transform(32), decoder=decoder)
    dataset.augment_seed = 7
    first = dataset[3][0]
    torch.manual_seed(123)  # the global generator does not matter
    assert torch.equal(dataset[3][0], first)
    dataset.epoch = 1
    assert not torch.equal(dataset[3][0], first)


@pytest.mark.parametrize('decoder', TENSOR_DECODERS)
@pytest.mark.parametrize('pipeline', ['random-resized-crop', 'pad-crop', 'eval'])
def test_tensor_and_pil_paths_agree_within_one_level(photos, decoder, pipeline):
    transform = eval_transform(32, 36) if pipeline == 'eval' else train_transform(32, pipeline)
    pil, tensor = (CheckedImageFolder(photos, transform, decoder=d) for d in ('pil', decoder))
    pil.augment_seed = tensor.augment_seed = 5
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    for index in range(len(pil)):
        a, b = pil[index][0], tensor[index][0]
        assert a.shape == b.shape == (3, 32, 32)
        levels = (a - b) * std * 255  # the difference in 0..255 pixel levels
        # rounding apart: some values differ by one level (PIL and torch round resampled values
        # differently, most often when the crop is enlarged), never more, and not in one direction
        assert levels.abs().max() <= 1.01 and levels.mean().abs() < 0.05


def test_without_transform_the_decoders_output_comes_back(photos):
    image, target = CheckedImageFolder(photos, decoder=TENSOR_DECODERS[0])[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64) and target == 0
    image, _ = CheckedImageFolder(photos, decoder='pil')[0]
    assert isinstance(image, Image.Image) and image.mode == 'RGB'


# --- the benchmark -------------------------------------------------------------------------------------------


def test_photo_like_jpegs_compress_like_photos(tmp_path):
    root = write_photo_like_jpegs(tmp_path / 'p', 18, size=(160, 120), classes=3)
    files = sorted(root.rglob('*.jpg'))
    assert len(files) == 18 and sorted(p.name for p in root.iterdir()) == ['class0', 'class1', 'class2']
    bits_per_pixel = np.mean([f.stat().st_size for f in files]) * 8 / (160 * 120)
    assert 2 < bits_per_pixel < 8          # a photo at quality 90; noise would be ~12, a gradient < 1
    with Image.open(files[0]) as image:
        assert image.size == (160, 120) and image.format == 'JPEG'
    with pytest.raises(ValueError):
        write_photo_like_jpegs(tmp_path / 'q', 0)


def test_measure_pipeline_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    rows = measure_pipeline(decoders=('pil', TENSOR_DECODERS[0]), image_size=32, images=8, workers=(0, 1),
                            source_size=(64, 48))
    assert [(r['decoder'], r['workers']) for r in rows] == [('pil', 0), ('pil', 1), (TENSOR_DECODERS[0], 0),
                                                            (TENSOR_DECODERS[0], 1)]
    for row in rows:
        assert row['images'] == 8 and row['image_size'] == 32 and row['source_size'] == [64, 48]
        assert row['seconds'] > 0 and row['images_per_s'] == pytest.approx(8 / row['seconds'], rel=0.01)
        assert row['images_per_s_per_worker'] == pytest.approx(row['images_per_s'] / max(1, row['workers']),
                                                                rel=0.01)
        assert row['decode_images_per_s'] > 0 and row['torch_threads'] == 1 and row['batch_size'] == BATCH_SIZE
    json.dumps(rows)
    assert list(tmp_path.iterdir()) == []   # the synthetic images are removed
    assert torch.get_num_threads() == 1     # restored (the suite runs one thread)


def test_measure_pipeline_times_tar_shards_beside_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    rows = measure_pipeline(decoders=(TENSOR_DECODERS[0],), image_size=16, images=12, workers=(0, 2),
                            source_size=(32, 24), readers=('folder', 'shards'))
    assert [(r['reader'], r['workers'], r['images']) for r in rows] == [
        ('folder', 0, 12), ('folder', 2, 12), ('shards', 0, 12), ('shards', 2, 12)]
    assert all(r['images_per_s'] > 0 for r in rows) and list(tmp_path.iterdir()) == []  # shards removed too
    with pytest.raises(ValueError, match='readers must be folder and/or shards'):
        measure_pipeline(readers=('lmdb',), images=2)


def test_measure_pipeline_on_a_folder_repeats_its_images(photos):
    rows = measure_pipeline(photos, decoders=(TENSOR_DECODERS[0],), image_size=16, images=10)
    assert len(rows) == 1 and rows[0]['images'] == 10 and rows[0]['source_size'] == [64, 48]
    assert len(list(photos.rglob('*.jpg'))) == 6   # left as it was


def test_measure_pipeline_refuses_bad_arguments():
    with pytest.raises(ValueError, match='available here'):
        measure_pipeline(decoders=('imagemagick',), images=2)
    with pytest.raises(ValueError, match='workers'):
        measure_pipeline(workers=(-1,), images=2)
    with pytest.raises(ValueError, match='positive'):
        measure_pipeline(images=0)


def test_workers_needed_rounds_up_with_headroom():
    assert workers_needed(1000, 250, headroom=1) == 4
    assert workers_needed(1000, 260, headroom=1) == 4
    assert workers_needed(1000, 250) == 5          # 25 % spare
    assert workers_needed(2470, 800) == 4
    with pytest.raises(ValueError):
        workers_needed(0, 100)
    with pytest.raises(ValueError):
        workers_needed(1000, 100, headroom=0.5)


def test_transforms_and_class_folders_name_what_cannot_work(tmp_path):
    """Sizes torchvision would fail on at the first image (or pad with black) are refused when the pipeline
    is built; with fixed classes a folder must hold exactly those classes, each with images."""
    from scnet.data.folders import DataError, find_classes

    for bad in (0, '32', 32.0, True):
        with pytest.raises(ValueError, match=f'image_size must be a whole number of pixels >= 1, got {bad!r}'):
            train_transform(bad)
    with pytest.raises(ValueError, match=r'reprob .* must be in \[0, 1\], got 2.0'):
        train_transform(32, reprob=2.0)
    with pytest.raises(ValueError, match='eval_resize 16 is smaller than the crop 32'):
        eval_transform(32, 16)
    assert eval_transform(32, 37) is not None

    for cls, n in (('cat', 2), ('dog', 2), ('emu', 0)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new('RGB', (8, 8)).save(tmp_path / cls / f'{i}.png')
    with pytest.raises(DataError, match='class folder.*without images: emu'):
        find_classes(str(tmp_path))  # a str is a path too
    with pytest.raises(DataError, match='class folder.*without images: emu;'):
        CheckedImageFolder(tmp_path, classes=['cat', 'dog', 'emu'])  # (found by the dataset's own walk)
    (tmp_path / 'emu').rmdir()
    assert find_classes(str(tmp_path)) == ['cat', 'dog']
    assert len(CheckedImageFolder(tmp_path, classes=['cat', 'dog'])) == 4
    with pytest.raises(DataError, match='missing class folder.*owl'):
        CheckedImageFolder(tmp_path, classes=['cat', 'dog', 'owl'])
    with pytest.raises(DataError, match=r'class folder\(s\) dog beyond the 1 classes given; their images would '
                                        'be left out'):
        CheckedImageFolder(tmp_path, classes=['cat'])


def test_pil_decoding_scales_sixteen_bit_grey_and_turns_photos_only_where_asked(tmp_path):
    """decode_rgb gives a 16-bit grey PNG as the tensor decoders do (PIL alone clips it white), and the
    EXIF orientation is applied only on request (predict and the visual tools draw on photos as a viewer
    shows them; training reads pixels as stored, as torchvision does)."""
    path = tmp_path / 'deep.png'
    _grey16(path)
    pil = torch.from_numpy(np.array(decode_rgb(str(path)))).permute(2, 0, 1)
    assert (pil.int() - decode_rgb_tensor(str(path), 'torchvision').int()).abs().max() <= 1
    assert float((pil == 255).float().mean()) < 0.1

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo = tmp_path / 'phone.jpg'
    Image.fromarray(stored).save(photo, exif=exif.tobytes(), quality=95)
    assert decode_rgb(str(photo)).size == (40, 20)
    shown = decode_rgb(str(photo), exif_orientation=True)
    assert shown.size == (20, 40) and np.asarray(shown)[:10].mean() > 200  # the band now runs along the top
    from scnet.visual import load_image

    assert load_image(photo).size == (20, 40)


def test_class_images_lists_like_torchvision_and_refuses_what_would_hang_or_repeat(tmp_path, monkeypatch):
    import os

    from torchvision.datasets.folder import IMG_EXTENSIONS
    from torchvision.datasets.folder import make_dataset as torchvision_make_dataset

    from scnet.data.folders import DataError, class_images, find_classes

    root = tmp_path / 'train'
    for rel in ('cat/b.png', 'cat/a.png', 'cat/sub/z.png', 'cat/sub-x/y.png', 'cat/.hidden.png', 'cat/notes.txt',
                'dog/d.png', '../elsewhere/e.png'):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (8, 8)).save(root / rel) if rel.endswith('.png') else (root / rel).write_text('x')
    os.symlink(tmp_path / 'elsewhere', root / 'dog' / 'linked')  # a linked folder is followed, as torchvision does
    os.symlink(root / 'missing.png', root / 'dog' / 'broken.png')  # a broken link stays, to fail when decoded
    classes = {'cat': 0, 'dog': 1}
    expected = torchvision_make_dataset(str(root), classes, extensions=IMG_EXTENSIONS)
    assert CheckedImageFolder(root, classes=['cat', 'dog']).samples == expected
    assert class_images(root / 'dog') == [p for p, c in expected if c == 1]
    assert str(root / 'dog' / 'linked' / 'e.png') in class_images(root / 'dog')

    os.symlink(root / 'cat', root / 'cat' / 'sub' / 'loop')  # torchvision's walk would list cat's images ~40 times
    with pytest.raises(DataError, match=r'cat/sub/loop: a link to .*cat, a folder that contains it.*remove the link'):
        class_images(root / 'cat')
    with pytest.raises(DataError, match='a folder that contains it'):
        CheckedImageFolder(root, classes=['cat', 'dog'])
    with pytest.raises(DataError, match='a folder that contains it'):
        find_classes(root)
    (root / 'cat' / 'sub' / 'loop').unlink()

    os.symlink(tmp_path / 'elsewhere', root / 'dog' / 'again')
    with pytest.raises(DataError, match=r'dog/(again|linked) and .*dog/(again|linked) are the same folder'):
        class_images(root / 'dog')
    (root / 'dog' / 'again').unlink()

    os.mkfifo(root / 'cat' / 'pipe.jpg')  # opening it would block the loader for ever
    with pytest.raises(DataError, match=r'1 image name\(s\) that are not regular files .*cat/pipe.jpg; remove them'):
        find_classes(root)
    (root / 'cat' / 'pipe.jpg').unlink()
    os.mkfifo(root / 'cat' / 'pipe.txt')  # not an image name: not read, not refused
    assert len(class_images(root / 'cat')) == 5

    (root / 'cat' / 'locked').mkdir()
    real_scandir = os.scandir

    def scandir(path):  # what an unreadable folder gives (chmod does not stop root, who runs some CI)
        if str(path).endswith('locked'):
            raise PermissionError(13, 'Permission denied')
        return real_scandir(path)

    monkeypatch.setattr(os, 'scandir', scandir)
    with pytest.raises(DataError, match='cat/locked: cannot list this folder \\(Permission denied\\); fix its'):
        class_images(root / 'cat')  # (torchvision's walk would leave its images out without a word)
