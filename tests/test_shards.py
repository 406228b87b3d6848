"""`scnet shards`: an image folder written as WebDataset shards, indexed, atomic per shard, resumable."""
import json
import tarfile

import pytest

import scnet.data.shards as shards_module
from scnet.cli.main import main
from scnet.data.shards import ShardsError, parse_size
from tests.test_train import write_folder


@pytest.fixture
def data(tmp_path):
    return write_folder(tmp_path / 'data')


def test_shards_hold_every_image_once_with_an_index_and_the_classes(data, tmp_path, capsys):
    out = tmp_path / 'shards'
    assert main(['shards', str(data), str(out), '--shard-size', '3KB', '--shuffle', '--quiet']) == 0
    captured = capsys.readouterr()
    assert 'train: 36 images in' in captured.out and captured.err == ''  # no one-class note for three classes
    index = json.loads((out / 'index.json').read_text())
    assert (out / 'classes.txt').read_text().split() == index['classes'] == ['bar', 'dot', 'ring']
    for split, per_class in (('train', 12), ('val', 4)):
        info = index['splits'][split]
        assert info['per_class'] == {c: per_class for c in index['classes']} and info['images'] == 3 * per_class
        seen = []
        for shard in info['shards']:
            with tarfile.open(out / shard['file']) as tar:
                names = tar.getnames()
                paths = [tar.extractfile(n).read().decode() for n in names if n.endswith('.path.txt')]
                labels = [int(tar.extractfile(n).read()) for n in names if n.endswith('.cls')]
            assert len(paths) == shard['images'] and shard['bytes'] <= 3000 and len(names) == 3 * len(paths)
            assert {index['classes'][label] for label in labels} == set(shard['per_class'])
            assert all(p.split('/')[1] == index['classes'][label] for p, label in zip(paths, labels))
            seen += paths
        assert sorted(seen) == sorted(str(p.relative_to(data)) for p in (data / split).rglob('*.png'))
        assert len(info['shards']) > 2 and seen != sorted(seen)  # several shards, shuffled


def test_an_interrupted_run_finishes_the_missing_shards_only(data, tmp_path, monkeypatch, capsys):
    whole, cut = tmp_path / 'whole', tmp_path / 'cut'
    assert main(['shards', str(data), str(whole), '--shard-size', '5KB', '--quiet']) == 0
    real, written = shards_module._write_shard, []

    def write_then_stop(src, out, split, number, shard):
        if len(written) == 2:
            raise KeyboardInterrupt
        real(src, out, split, number, shard)
        written.append(number)

    monkeypatch.setattr(shards_module, '_write_shard', write_then_stop)
    assert main(['shards', str(data), str(cut), '--shard-size', '5KB', '--quiet']) == 130
    assert sorted(p.name for p in cut.glob('*.tar')) == ['train-000000.tar', 'train-000001.tar']
    assert not (cut / 'index.json').exists()
    capsys.readouterr()
    # read before they are finished, as a folder, a pattern or for evaluation: named as such, with the way out
    for command in (['train', '--data', str(cut)], ['train', '--data', f'{cut}/train-{{000000..000001}}.tar'],
                    ['eval', '--model', 'scnet26_cifar', '--data', str(cut)]):
        assert main([*command, '--output', str(tmp_path / 'run'), '--quiet'] if command[0] == 'train' else
                    [*command, '--checkpoint', str(tmp_path / 'none.pth'), '--quiet']) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f'{cut}: shards that scnet shards has not finished writing (no index.json yet, which it '
                            'writes last): run the same scnet shards command again to finish them'), err
    monkeypatch.setattr(shards_module, '_write_shard', real)
    assert main(['shards', str(data), str(cut), '--shard-size', '5KB', '--quiet']) == 0
    assert 'images already in shards from an earlier run' in capsys.readouterr().out
    for path in whole.iterdir():  # the same bytes as an uninterrupted run's
        assert (cut / path.name).read_bytes() == path.read_bytes(), path.name
    # other options into the same folder: refused, nothing touched
    assert main(['shards', str(data), str(cut), '--shard-size', '5KB', '--shuffle', '--quiet']) == 2
    assert 'written from other images or options' in capsys.readouterr().err


def test_shard_sizes_are_parsed_or_refused_in_one_line(data, tmp_path, capsys):
    assert parse_size('1GB') == 10**9 and parse_size('64MiB') == 64 * 2**20 and parse_size('1500') == 1500
    for bad in ('0', 'big', '1XB', '-1GB'):
        with pytest.raises(ShardsError, match='give a positive size'):
            parse_size(bad)
    assert main(['shards', str(data), str(tmp_path / 'out'), '--shard-size', 'lots']) == 2
    assert capsys.readouterr().err.startswith("scnet shards: error: shard size 'lots'")
    assert main(['shards', str(tmp_path / 'none'), str(tmp_path / 'out')]) == 2
    assert 'expected train/' in capsys.readouterr().err


def test_output_inside_the_source_or_a_file_is_refused(data, tmp_path, capsys):
    """A second run would pack the shards in SRC as images of it; a file cannot hold shards."""
    assert main(['shards', str(data), str(data / 'train' / 'packed'), '--quiet']) == 2
    assert f'{data / "train" / "packed"} is inside {data}' in capsys.readouterr().err
    assert not (data / 'train' / 'packed').exists()
    afile = tmp_path / 'afile'
    afile.write_text('')
    with pytest.raises(ShardsError, match='is a file, not a folder'):
        shards_module.write_shards(data, afile, progress=False)


def test_unreadable_images_stop_the_writing_or_are_left_out_and_listed(data, tmp_path, capsys):
    bad = data / 'train' / 'dot' / '003.png'
    bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])  # truncated in its image data
    out = tmp_path / 'shards'
    assert main(['shards', str(data), str(out), '--quiet']) == 2
    err = capsys.readouterr().err
    assert f'{bad}: unreadable image' in err and '--skip-bad-images' in err and len(err.strip().splitlines()) == 1
    assert not list(out.glob('*.tar'))
    assert main(['shards', str(data), str(out), '--quiet', '--skip-bad-images']) == 0
    assert 'left out 1 unreadable image: train/dot/003.png' in capsys.readouterr().out
    index = json.loads((out / 'index.json').read_text())
    assert index['skipped'] == ['train/dot/003.png'] and index['splits']['train']['images'] == 35


def test_a_fifo_or_a_link_loop_among_the_images_is_named_before_any_shard(data, tmp_path, capsys):
    """Both would hang or repeat the packing: the folder walk training uses names them first."""
    import os

    out = tmp_path / 'shards'
    os.mkfifo(data / 'train' / 'dot' / 'pipe.png')
    assert main(['shards', str(data), str(out), '--quiet']) == 2
    assert 'not regular files' in capsys.readouterr().err and not list(out.glob('*.tar'))
    (data / 'train' / 'dot' / 'pipe.png').unlink()
    os.symlink(data / 'val', data / 'val' / 'ring' / 'back')
    assert main(['shards', str(data), str(out), '--quiet']) == 2
    assert 'a folder that contains it' in capsys.readouterr().err and not list(out.glob('*.tar'))


def test_a_shard_cut_short_since_it_was_written_is_written_again(data, tmp_path, capsys):
    out = tmp_path / 'shards'
    assert main(['shards', str(data), str(out), '--shard-size', '5KB', '--quiet']) == 0
    whole = {p.name: p.read_bytes() for p in out.glob('*.tar')}
    cut = out / 'train-000001.tar'
    cut.write_bytes(whole[cut.name][:len(whole[cut.name]) // 2])
    capsys.readouterr()
    assert main(['shards', str(data), str(out), '--shard-size', '5KB', '--quiet']) == 0
    assert 'train-000001.tar cut short or changed since written; writing it again' in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.glob('*.tar')} == whole


def test_one_class_is_packed_with_a_note_that_training_needs_two(data, tmp_path, capsys):
    import shutil

    for split in ('train', 'val'):
        for extra in ('dot', 'ring'):
            shutil.rmtree(data / split / extra)
    out = tmp_path / 'one'
    assert main(['shards', str(data), str(out), '--quiet']) == 0
    captured = capsys.readouterr()
    assert 'train: 12 images in' in captured.out and '; 1 classes;' in captured.out
    assert captured.err.strip() == ('note: one class (bar): `scnet train` needs at least 2 classes to learn to tell '
                                    'apart; add class folders to the source and run this command again for a '
                                    'training set')
    assert json.loads((out / 'index.json').read_text())['classes'] == ['bar']
