"""Training and evaluation on WebDataset shards: every image once per epoch over processes and workers, a
mid-epoch resume that ends with the uninterrupted weights, damaged samples named or skipped."""
import hashlib
import io
import json
import tarfile

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import scnet.train.preemption as preemption
from scnet.cli.main import main
from scnet.data.folders import decode_rgb_tensor
from scnet.data.streams import ShardEvalStream, ShardStream, open_shards, worker_batches
from tests.test_train import read_metrics, recipe, train_args, write_folder  # noqa: F401 (fixture)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('data') / 'data')


@pytest.fixture(scope='module')
def shards(folder):
    out = folder.parent / 'shards'
    assert main(['shards', str(folder), str(out), '--shard-size', '3000', '--quiet']) == 0  # 1 to 4 images a shard
    return out


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


def _stream(dataset, workers):
    """Each micro-batch of ``dataset`` as a list of image digests, in the order the DataLoader gives them."""
    loader = DataLoader(dataset, batch_size=getattr(dataset, 'micro', 5), num_workers=workers,
                        collate_fn=lambda batch: [_digest(image) for image, _ in batch])
    return list(loader)


def test_each_image_once_per_epoch_over_two_processes_of_two_workers(folder, shards):
    source = open_shards(str(shards))
    assert len(set(source.train.counts)) > 1  # shards of unequal sizes
    images = {_digest(decode_rgb_tensor(str(p))) for p in (folder / 'train').rglob('*.png')}
    orders = []
    for epoch in (1, 2):
        ranks = []
        for rank in (0, 1):
            stream = ShardStream(source.train, None, batch_size=12, rank=rank, world_size=2, seed=3)
            stream.set_epoch(epoch)
            batches = _stream(stream, workers=2)
            assert len(batches) == len(stream) // stream.micro == 3 and all(len(b) == 6 for b in batches)
            ranks.append(batches)
            for done in (1, 2):  # resumed after steps already done: the same batches, less those
                stream.set_epoch(epoch, start_step=done)
                assert _stream(stream, workers=2) == batches[done:]
        seen = [d for batches in ranks for batch in batches for d in batch]
        assert len(seen) == len(set(seen)) == 36 and set(seen) == images  # 36 = 3 steps x 12, none dropped
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled each epoch
    val = [d for rank in (0, 1) for batch in _stream(ShardEvalStream(source.val, None, rank=rank, world_size=2), 2)
           for d in batch]
    assert sorted(val) == sorted({_digest(decode_rgb_tensor(str(p))) for p in (folder / 'val').rglob('*.png')})


def test_workers_hold_contiguous_batches_the_first_ones_one_more():
    assert worker_batches(9, 2) == [(0, 5), (5, 9)] and worker_batches(2, 3) == [(0, 1), (1, 2), (2, 2)]


def test_shard_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(shards, recipe, tmp_path, monkeypatch,
                                                                         capsys):
    """Shards through a brace pattern and pipe:, 2 loader workers; interrupted in epoch 2, resumed."""
    last = len(json.loads((shards / 'index.json').read_text())['splits']['train']['shards']) - 1
    pattern = f'pipe:cat {shards}/train-{{000000..{last:06d}}}.tar'
    args = ('--epochs', '2', '--seed', '5', '--batch-size', '4', '--workers', '2', '--checkpoint-every', '1')
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    assert main(train_args(pattern, recipe, full, *args)) == 0
    real = preemption.StepCheckpoints.after_step

    def stop_in_epoch_2(self):
        real(self)
        if self.epoch == 2 and self.step == 3:
            raise KeyboardInterrupt  # the process dies right after a state was saved mid-epoch

    monkeypatch.setattr(preemption.StepCheckpoints, 'after_step', stop_in_epoch_2)
    assert main(train_args(pattern, recipe, cut, *args)) == 130
    monkeypatch.undo()
    saved = torch.load(cut / 'last.pt', weights_only=True)
    assert (saved['epoch'], saved['step']) == (1, 3)
    # with other loader workers the rest of the epoch is streamed in another order: said, not silent
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'last.pt').write_bytes((cut / 'last.pt').read_bytes())
    capsys.readouterr()
    assert main(['train', '--output', str(other), '--resume', '--quiet', '--workers', '0']) == 0
    err = capsys.readouterr().err
    assert 'note: the run was saved in the middle of epoch 2 with other settings (--workers 2 -> 0)' in err, err
    assert main(['train', '--output', str(cut), '--resume', '--quiet']) == 0
    assert 'note:' not in capsys.readouterr().err
    a, b = load_file(full / 'model.safetensors'), load_file(cut / 'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ('train_loss', 'lr', 'val_loss'):
        assert [r[key] for r in read_metrics(cut)] == [r[key] for r in read_metrics(full)], key
    assert [r['train_images'] for r in read_metrics(cut)] == [36, 36] and read_metrics(cut)[1]['val_images'] == 12
    config = json.loads((cut / 'config.json').read_text())
    assert config['classes'] == ['bar', 'dot', 'ring'] and config['data_root'] == pattern
    capsys.readouterr()
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(cut / 'model.safetensors'), '--data',
                 str(shards), '--format', 'json', '--workers', '0', '--quiet']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['images'] == 12 and result['top1'] == pytest.approx(read_metrics(cut)[-1]['val_top1'])


def _damage_one_image(shards, out):
    """A copy of ``shards`` whose first training image is cut short."""
    out.mkdir()
    for path in shards.iterdir():
        if path.name != 'train-000000.tar':
            (out / path.name).write_bytes(path.read_bytes())
    with tarfile.open(shards / 'train-000000.tar') as src, tarfile.open(out / 'train-000000.tar', 'w') as dst:
        for i, member in enumerate(src.getmembers()):
            data = src.extractfile(member).read()
            if member.name.endswith('.png') and i < 3:
                data, member.size = data[:40], 40
            dst.addfile(member, io.BytesIO(data))


def test_a_damaged_sample_is_named_or_skipped_and_counted(shards, recipe, tmp_path, capsys):
    bad = tmp_path / 'bad'
    _damage_one_image(shards, bad)
    with tarfile.open(bad / 'train-000000.tar') as tar:
        path = next(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith('.path.txt'))
    args = ('--epochs', '1', '--batch-size', '12')  # 3 steps of 12: every image of the epoch trained on
    assert main(train_args(bad, recipe, tmp_path / 'stopped', *args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f'train-000000.tar: {path}: unreadable image' in err, err
    assert '--skip-bad-images' in err
    assert main(train_args(bad, recipe, tmp_path / 'skipped', *args, '--skip-bad-images')) == 0
    row = read_metrics(tmp_path / 'skipped')[0]
    assert row['skipped_images'] == 1 and row['train_images'] == 35


def test_shards_that_do_not_fit_are_refused_in_one_line(shards, recipe, tmp_path, capsys):
    train = sorted(p.name for p in shards.glob('train-*.tar'))
    for data, expected in ((f'{tmp_path}/none-{{0..1}}.tar', 'cannot read it'),
                           (f'{shards}/val-000000.tar', 'names validation shards only; training reads the '
                                                        'training shards'),
                           (f'{shards}/{{{train[0]},val-000000.tar}}', 'val-000000.tar: a validation shard, named '
                                                                       'among training ones'),
                           (f'{shards}/train-*.tar', f'a wildcard pattern, which is not expanded here (each shard '
                                                     f'is read on its own, by its name); name the '
                                                     f'shards with a brace pattern such as {shards}/train-{{000000..')):
        assert main(train_args(data, recipe, tmp_path / 'run', '--epochs', '1')) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err


def test_eval_reads_the_validation_shards_named_or_those_of_the_index(shards, recipe, tmp_path, capsys):
    """scnet eval --data takes the folder, the training pattern (its index's val shards are read) or the val
    shards themselves, as its help says: all three score the same images."""
    run = tmp_path / 'run'
    assert main(train_args(shards, recipe, run, '--epochs', '1')) == 0
    capsys.readouterr()
    val = sorted(p.name for p in shards.glob('val-*.tar'))
    pattern = f'{shards}/val-{{{val[0][4:10]}..{val[-1][4:10]}}}.tar'
    results = []
    for data in (str(shards), pattern):
        assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(run), '--data', data, '--workers', '0',
                     '--quiet', '--format', 'json']) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]['images'] == results[1]['images'] == 12 and results[0]['top1'] == results[1]['top1']
    source = open_shards(str(shards / val[0]))
    assert source.train.urls == () and source.val.urls == (str(shards / val[0]),)


def test_a_class_index_past_the_index_classes_names_the_shard(shards, recipe, tmp_path, capsys):
    """Shards whose index.json lists fewer classes than their samples use (shards and index of different
    writings) stopped the run with advice to build the network with num_classes."""
    other = tmp_path / 'other'
    other.mkdir()
    for path in shards.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    index = json.loads((shards / 'index.json').read_text())
    (other / 'index.json').write_text(json.dumps(dict(index, classes=['bar', 'dot'])))
    args = ('--epochs', '1', '--workers', '0', '--batch-size', '36')  # one step: every image in it
    assert main(train_args(other, recipe, tmp_path / 'run', *args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "class index '2', where its index.json lists 2 classes (0 to 1)" in err, err
    assert 'write them again with scnet shards' in err and '.tar: ' in err
