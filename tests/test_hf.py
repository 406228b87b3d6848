"""Training and evaluation on a Hugging Face dataset (saved to disk, or parquet files): the same images in
the same order as the folder they were made from, so the same weights; a mid-epoch resume included."""
import json

import pytest
import torch
from safetensors.torch import load_file

import scnet.train.preemption as preemption
from scnet.cli.main import main
from tests.test_train import read_metrics, recipe, train_args, write_folder  # noqa: F401 (fixture)

datasets = pytest.importorskip('datasets')  # the `hf` extra; CI installs it with the `test` extra
datasets.disable_progress_bars()

ARGS = ('--epochs', '2', '--seed', '5', '--batch-size', '4')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('data') / 'data')


def _dataset_dict(folder, image='image', label='label'):
    """The folder's images, in ImageFolder's order, as a DatasetDict with train and validation splits."""
    classes = sorted(p.name for p in (folder / 'train').iterdir())
    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=classes)})
    splits = {}
    for split, name in (('train', 'train'), ('val', 'validation')):
        files = [p for c in classes for p in sorted((folder / split / c).iterdir())]
        splits[name] = datasets.Dataset.from_dict(
            {image: [{'bytes': p.read_bytes(), 'path': None} for p in files],
             label: [classes.index(p.parent.name) for p in files]}, features=features)
    return datasets.DatasetDict(splits)


def _same_weights(a, b):
    a, b = load_file(a / 'model.safetensors'), load_file(b / 'model.safetensors')
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_saved_and_parquet_datasets_train_like_their_folder(folder, recipe, tmp_path, monkeypatch, capsys):
    saved, parquet = tmp_path / 'saved', tmp_path / 'parquet'
    dd = _dataset_dict(folder)
    dd.save_to_disk(str(saved))
    parquet.mkdir()
    for name, split in dd.items():
        split.to_parquet(str(parquet / f'{name}-00000-of-00001.parquet'))
    assert main(train_args(folder, recipe, tmp_path / 'folder', *ARGS)) == 0
    assert main(train_args(saved, recipe, tmp_path / 'hf', *ARGS)) == 0
    assert _same_weights(tmp_path / 'folder', tmp_path / 'hf')
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    assert config['classes'] == ['bar', 'dot', 'ring'] and config['data_root'] == str(saved)

    # parquet files, the run interrupted right after a state saved in the middle of epoch 2, then resumed
    real = preemption.StepCheckpoints.after_step

    def stop_in_epoch_2(self):
        real(self)
        if self.epoch == 2 and self.step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(preemption.StepCheckpoints, 'after_step', stop_in_epoch_2)
    assert main(train_args(parquet, recipe, tmp_path / 'cut', *ARGS, '--checkpoint-every', '2')) == 130
    monkeypatch.undo()
    # saved after global steps 2, 4, ... (9 an epoch): the last one at step 3 of epoch 2; step 4 is trained again
    assert torch.load(tmp_path / 'cut' / 'last.pt', weights_only=True)['step'] == 3
    assert main(['train', '--output', str(tmp_path / 'cut'), '--resume', '--quiet']) == 0
    assert _same_weights(tmp_path / 'folder', tmp_path / 'cut')
    assert [r['train_loss'] for r in read_metrics(tmp_path / 'cut')] == \
        [r['train_loss'] for r in read_metrics(tmp_path / 'folder')]
    capsys.readouterr()
    assert main(['eval', '--model', 'scnet26_cifar', '--checkpoint', str(tmp_path / 'cut' / 'model.safetensors'),
                 '--data', str(parquet), '--format', 'json', '--workers', '0', '--quiet']) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['images'] == 12 and result['top1'] == pytest.approx(read_metrics(tmp_path / 'cut')[-1]['val_top1'])


def test_columns_are_detected_or_named(folder, recipe, tmp_path, capsys):
    dd = _dataset_dict(folder, image='img', label='fine_label')
    dd = dd.map(lambda row: {'thumb': row['img']}).cast_column('thumb', datasets.Image())  # a second image column
    dd.save_to_disk(str(tmp_path / 'two'))
    capsys.readouterr()
    assert main(train_args(tmp_path / 'two', recipe, tmp_path / 'run', '--epochs', '1')) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'several Image column(s) img, thumb' in err and '#image=COLUMN' in err
    spec = f'{tmp_path / "two"}#image=img,label=fine_label'
    assert main(train_args(spec, recipe, tmp_path / 'run', '--epochs', '1')) == 0
    assert read_metrics(tmp_path / 'run')[0]['val_images'] == 12
    assert main(train_args(f'{tmp_path / "two"}#image=nope', recipe, tmp_path / 'other', '--epochs', '1')) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    # a column of another kind named as the images: pyarrow's "Unsupported cast from int64 to struct" before
    assert main(train_args(f'{tmp_path / "two"}#image=fine_label', recipe, tmp_path / 'other', '--epochs', '1')) == 2
    err = capsys.readouterr().err.strip()
    assert "the column 'fine_label' holds ClassLabel" in err and 'name an Image column (img, thumb)' in err, err


def test_a_damaged_dataset_is_one_line_naming_it(recipe, tmp_path, capsys):
    """Damaged parquet files and a saved dataset with a truncated arrow file ended in pyarrow's traceback."""
    parquet = tmp_path / 'pq'
    parquet.mkdir()
    for split in ('train', 'validation'):
        (parquet / f'{split}-00000.parquet').write_bytes(b'PAR1' + bytes(range(256)) * 8)
    saved = tmp_path / 'saved'
    _dataset_dict(write_folder(tmp_path / 'data')).save_to_disk(str(saved))
    arrow = next((saved / 'train').glob('*.arrow'))
    arrow.write_bytes(arrow.read_bytes()[:300])
    for data in (parquet, saved):
        capsys.readouterr()
        assert main(train_args(data, recipe, tmp_path / f'run_{data.name}', '--epochs', '1')) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f'scnet train: error: {data}: not a readable Hugging Face dataset (') and \
            'save the dataset again' in err, err
        assert not (tmp_path / f'run_{data.name}' / 'model.safetensors').exists()


def test_a_dataset_spec_naming_nothing_says_so(recipe, tmp_path, capsys):
    spec = f'{tmp_path / "nope"}#image=img,label=cls'
    assert main(train_args(spec, recipe, tmp_path / 'run', '--epochs', '1')) == 2
    assert f'{tmp_path / "nope"}: no such folder or file (a Hugging Face dataset' in capsys.readouterr().err


def test_a_validation_split_with_its_own_class_label_is_read_by_class_name(folder, tmp_path):
    """Each split of a DatasetDict has its own ClassLabel: a validation split without one of the classes
    numbers the others differently, and its labels are mapped to the training classes by name."""
    from scnet.data.hf import HFDataError, open_hf

    dd = _dataset_dict(folder)
    classes = dd['train'].features['label'].names  # bar, dot, ring
    val = dd['validation'].filter(lambda row: row['label'] != 1)  # no 'dot' image
    val_names = [classes[i] for i in val['label']]
    without_dot = datasets.ClassLabel(names=['bar', 'ring'])
    val = val.map(lambda row: {'label': without_dot.str2int(classes[row['label']])}).cast_column('label', without_dot)
    datasets.DatasetDict({'train': dd['train'], 'validation': val}).save_to_disk(str(tmp_path / 'subset'))
    data = open_hf(str(tmp_path / 'subset'))
    split = data.split('val', None)
    assert [data.classes[split[i][1]] for i in range(len(split))] == val_names
    assert 'ring' in val_names and 'bar' in val_names  # indices 1 and 0 in the split's own ClassLabel

    other = datasets.ClassLabel(names=['bar', 'cat'])
    val = dd['validation'].filter(lambda row: row['label'] != 1).map(
        lambda row: {'label': min(row['label'], 1)}).cast_column('label', other)
    datasets.DatasetDict({'train': dd['train'], 'validation': val}).save_to_disk(str(tmp_path / 'other'))
    with pytest.raises(HFDataError, match=r"the validation split has classes the train split has not \('cat'\)"):
        open_hf(str(tmp_path / 'other'))

    unlabelled = dd['validation'].map(lambda row: {'label': -1})
    datasets.DatasetDict({'train': dd['train'], 'validation': unlabelled}).save_to_disk(str(tmp_path / 'test'))
    split = open_hf(str(tmp_path / 'test')).split('val', None)
    with pytest.raises(HFDataError, match=r'row 0: no label \(-1\)'):
        split[0]
