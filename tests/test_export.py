"""``scnet.export`` and ``scnet export``: ONNX / TorchScript / torch.export files that load back in their runtime
and compute what the network computes, written atomically, with one-line errors."""
import copy
import json

import onnx
import pytest
import torch
from torch import nn

import scnet
from scnet.cli.main import main
from scnet.export import ExportError, LoadedModel, check_parity, export_model, load_exported, write_json
from scnet.weights.io import read_shape, save_state_dict

SUFFIX = {'onnx': 'onnx', 'torchscript': 'ts', 'exported': 'pt2'}


def randomise_bns(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


@pytest.fixture(scope='module')
def tiny():
    """A narrow SCNet-26 (every layer type of the zoo, few weights) and its deployed copy."""
    model = randomise_bns(scnet.create_model('scnet26_cifar', num_classes=10, channels=(8, 16, 32, 64))).eval()
    return model, scnet.deploy(model, channels_last=False, example_input=torch.randn(2, 3, 16, 16))


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith('.')]


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript', 'exported'])
def test_each_format_round_trips_with_a_dynamic_batch(fmt, tiny, tmp_path):
    model, deployed = tiny
    path = export_model(deployed, fmt, tmp_path / f'tiny.{SUFFIX[fmt]}', torch.randn(1, 3, 16, 16))
    assert path.is_file() and leftovers(tmp_path) == []
    loaded = load_exported(path, fmt)
    assert isinstance(loaded, LoadedModel) and loaded.fmt == fmt and fmt in repr(loaded)
    for batch in (1, 3):  # traced on one batch size, run on another
        x = torch.randn(batch, 3, 16, 16)
        assert loaded(x).shape == (batch, 10)
        assert check_parity(model, loaded, x) < 1e-4
    if fmt == 'onnx':  # the file holds the folded network and a named, free batch dimension
        graph = onnx.load(str(path)).graph
        assert 'BatchNormalization' not in {node.op_type for node in graph.node}
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_onnx_without_dynamic_batch_has_a_fixed_input_shape(tiny, tmp_path):
    model, _ = tiny
    fixed = export_model(model, 'onnx', tmp_path / 'fixed.onnx', torch.randn(1, 3, 16, 16), dynamic_batch=False)
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 16, 16]
    assert check_parity(model, load_exported(fixed, 'onnx'), torch.randn(1, 3, 16, 16)) < 1e-4


def test_a_failed_export_leaves_the_previous_file_and_no_partial_file(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    target = tmp_path / 'model.ts'
    target.write_text('previous')

    def broken_save(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(torch.jit, 'save', broken_save)
    with pytest.raises(ExportError, match='model.ts: cannot write \\(disk full\\)'):
        export_model(model, 'torchscript', target, torch.randn(1, 3, 16, 16))
    assert target.read_text() == 'previous' and leftovers(tmp_path) == []


class NotTraceable(nn.Module):
    def forward(self, x):
        return x[0] if x.sum() > 0 else x[1]  # data-dependent control flow: torch.export refuses it


def test_a_failed_trace_is_one_line_naming_the_format(tmp_path):
    with pytest.raises(ExportError, match=r'^exported export of NotTraceable failed \(') as e:
        export_model(NotTraceable().eval(), 'exported', tmp_path / 'm.pt2', torch.randn(2, 3))
    assert '\n' not in str(e.value) and e.value.__cause__ is not None and leftovers(tmp_path) == []


def test_export_errors_name_the_problem(tiny, tmp_path):
    model, _ = tiny
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ExportError, match="unknown export format 'tflite'; choose one of onnx, torchscript"):
        export_model(model, 'tflite', tmp_path / 'm', x)
    with pytest.raises(ExportError, match='no such directory'):
        export_model(model, 'onnx', tmp_path / 'missing' / 'm.onnx', x)
    with pytest.raises(ExportError, match='is a directory'):
        export_model(model, 'torchscript', tmp_path, x)
    with pytest.raises(ExportError, match='training mode: call model.eval()'):
        export_model(nn.Conv2d(3, 3, 1), 'onnx', tmp_path / 'm.onnx', x)
    with pytest.raises(ExportError, match='batched tensor'):
        export_model(model, 'onnx', tmp_path / 'm.onnx', [1, 2])
    for fmt in ('onnx', 'exported'):  # an empty batch, which the dynamic batch would have broadcast
        with pytest.raises(ExportError, match=r'holds no image \(shape \(0, 3, 16, 16\)\); give a batch of at'):
            export_model(model, fmt, tmp_path / 'm', x[:0])
    with pytest.raises(ExportError, match='no such file'):
        load_exported(tmp_path / 'none.onnx', 'onnx')
    (tmp_path / 'text.pt2').write_text('not a model')
    for fmt in ('onnx', 'torchscript', 'exported'):
        with pytest.raises(ExportError, match=f'cannot be loaded as {fmt}.*--format {fmt}') as e:
            load_exported(tmp_path / 'text.pt2', fmt)
        assert '\n' not in str(e.value)
    with pytest.raises(ExportError, match=r'returns shape \(1, 3, 16, 16\), the model \(1, 10\)'):
        check_parity(model, lambda t: t, x)
    assert issubclass(ExportError, scnet.ScnetError)


def test_write_json_is_atomic_and_readable(tmp_path):
    path = write_json(tmp_path / 'r.json', {'a': 1})
    assert json.loads(path.read_text()) == {'a': 1} and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- the command


def export_cli(capsys, *argv):
    code = main(['export', '--repeats', '1', *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_onnx_prints_the_table_and_writes_the_report(tmp_path, capsys):
    out_file = tmp_path / 'net.onnx'
    code, out, err = export_cli(capsys, '--model', 'scnet26_cifar', '--num-classes', '10', '--format', 'onnx',
                                '--output', str(out_file), '--input-size', '16x24')
    assert code == 0, err
    assert '45 BatchNorms folded, 0 left' in out
    assert 'max abs diff' in out and 'onnxruntime (CPU)' in out and 'exported ms/batch' in out
    report = json.loads((tmp_path / 'net.onnx.json').read_text())
    assert report['input_shape'] == [1, 3, 16, 24] and report['parity_ok'] is True
    assert report['max_abs_diff'] < 1e-4 and report['folded_bns'] == 45 and report['deployed'] is True
    assert report['file_bytes'] == out_file.stat().st_size and report['repeats'] == 1
    assert set(report['ms_per_batch']) == {'torch_eager', 'exported'} and 'onnxruntime' in report
    assert leftovers(tmp_path) == []


def test_cli_refuses_to_overwrite_without_force_and_no_deploy(tmp_path, capsys):
    out_file = tmp_path / 'net.ts'
    args = ['--model', 'resnet26_cifar', '--num-classes', '3', '--format', 'torchscript', '--output', str(out_file),
            '--input-size', '16', '--no-deploy']
    assert export_cli(capsys, *args)[0] == 0
    report = json.loads((tmp_path / 'net.ts.json').read_text())
    assert report['deployed'] is False and report['folded_bns'] == 0 and report['unfolded_bns'] is None
    before = out_file.read_bytes()
    code, _, err = export_cli(capsys, *args)
    assert code == 2 and err.strip() == f'scnet export: error: {out_file} exists; pass --force to replace it, or ' \
                                        'choose another --output'
    assert out_file.read_bytes() == before
    code, out, _ = export_cli(capsys, *args[:-1], '--force')  # deployed this time
    assert code == 0 and '29 BatchNorms folded' in out
    assert json.loads((tmp_path / 'net.ts.json').read_text())['deployed'] is True


def test_cli_loads_a_safetensors_checkpoint(tmp_path, capsys):
    model = randomise_bns(scnet.create_model('resnet26_cifar', num_classes=7)).eval()
    checkpoint = save_state_dict(model.state_dict(), tmp_path / 'weights.safetensors')
    out_file = tmp_path / 'net.pt2'
    code, out, err = export_cli(capsys, '--model', 'resnet26_cifar', '--checkpoint', str(checkpoint),
                                '--format', 'exported', '--output', str(out_file), '--batch-size', '2')
    assert code == 0, err
    report = json.loads((tmp_path / 'net.pt2.json').read_text())
    assert report['checkpoint'] == str(checkpoint) and report['input_shape'] == [2, 3, 32, 32]
    x = torch.randn(4, 3, 32, 32)
    assert check_parity(model, load_exported(out_file, 'exported'), x) < 1e-4  # the checkpoint's 7 classes


def test_cli_refuses_a_checkpoint_whose_classifier_does_not_fit(tmp_path, capsys):
    """``create_model`` would only warn and give a new, random classifier: the file would pass its parity check
    and classify at random."""
    checkpoint = save_state_dict(scnet.create_model('resnet26_cifar', num_classes=7).state_dict(),
                                 tmp_path / 'weights.safetensors')
    out_file = tmp_path / 'net.ts'
    code, _, err = export_cli(capsys, '--model', 'resnet26_cifar', '--checkpoint', str(checkpoint), '--num-classes',
                              '3', '--format', 'torchscript', '--output', str(out_file), '--input-size', '16')
    assert code == 2 and err.strip() == (
        f'scnet export: error: {checkpoint} has 7 classes, not 3: its classifier would be replaced by a random one; '
        'pass --num-classes 7 or leave it out (--num-classes 0 exports the features, without classifier)')
    assert not out_file.exists() and not (tmp_path / 'net.ts.json').exists()
    # a safetensors file's class count comes from its header; another format's from reading it whole
    assert read_shape(checkpoint, 'fc.weight') == [7, 1024] and read_shape(checkpoint, 'head.weight') is None
    pickled = tmp_path / 'weights.pt'
    torch.save(scnet.create_model('resnet26_cifar', num_classes=7).state_dict(), pickled)
    assert read_shape(pickled, 'fc.weight') is None
    code, _, err = export_cli(capsys, '--model', 'resnet26_cifar', '--checkpoint', str(pickled), '--num-classes',
                              '3', '--format', 'torchscript', '--output', str(out_file), '--input-size', '16')
    assert code == 2 and f'{pickled} has 7 classes, not 3' in err
    code, out, err = export_cli(capsys, '--model', 'resnet26_cifar', '--checkpoint', str(checkpoint), '--num-classes',
                                '7', '--format', 'torchscript', '--output', str(out_file), '--input-size', '16')
    assert code == 0 and ', 7 classes, ' in out, err
    assert json.loads((tmp_path / 'net.ts.json').read_text())['num_classes'] == 7


def test_cli_says_when_the_file_has_no_classifier(tmp_path, capsys):
    """--num-classes 0 is timm's network without classifier: the file outputs pooled features, not scores."""
    checkpoint = save_state_dict(scnet.create_model('resnet26_cifar', num_classes=7).state_dict(),
                                 tmp_path / 'weights.safetensors')
    out_file = tmp_path / 'features.ts'
    code, out, err = export_cli(capsys, '--model', 'resnet26_cifar', '--checkpoint', str(checkpoint), '--num-classes',
                                '0', '--format', 'torchscript', '--output', str(out_file), '--input-size', '16')
    assert code == 0, err
    assert 'no classifier (--num-classes 0): outputs 1024 pooled features per image' in out.splitlines()[0]
    report = json.loads((tmp_path / 'features.ts.json').read_text())
    assert (report['num_classes'], report['classifier'], report['output_shape']) == (0, False, [1, 1024])
    assert load_exported(out_file, 'torchscript')(torch.randn(2, 3, 16, 16)).shape == (2, 1024)


def test_cli_checkpoint_of_another_network_is_one_line(tmp_path, capsys):
    checkpoint = save_state_dict(scnet.create_model('resnet26_cifar', num_classes=7).state_dict(),
                                 tmp_path / 'weights.safetensors')
    code, _, err = export_cli(capsys, '--model', 'scnet26_cifar', '--checkpoint', str(checkpoint), '--format',
                              'torchscript', '--output', str(tmp_path / 'net.ts'))
    assert code == 2 and err.count('\n') == 1, err
    assert err.startswith(f'scnet export: error: {checkpoint} does not fit scnet26_cifar: pass the --model it was '
                          'trained as (`scnet models` lists them), or a checkpoint of scnet26_cifar; keys: ')
    assert 'missing from the checkpoint (e.g. layer1.0.conv2.k1.weight)' in err
    assert '8 not in the network (e.g. layer1.0.conv2.weight)' in err


@pytest.mark.parametrize('argv, message', [
    (['--model', 'scnet26_cifr'], "unknown model 'scnet26_cifr'. Did you mean scnet26_cifar"),
    (['--output', '{tmp}/missing/net.onnx'], 'missing: no such directory; create it first'),
    (['--output', '{tmp}'], 'is a directory; --output takes a file name'),
    (['--checkpoint', '{tmp}/garbage.pth'], 'garbage.pth: not a readable PyTorch checkpoint'),
    (['--checkpoint', '{tmp}/none.safetensors'], 'none.safetensors: no such checkpoint file'),
    (['--batch-size', '0'], '--batch-size and --repeats must be positive'),
    (['--num-classes', '-1'], '--num-classes must be 0 (no classifier) or more'),
    (['--input-size', 'big'], "input size 'big' is not N or HxW"),
])
def test_cli_errors_are_one_line_with_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / 'garbage.pth').write_bytes(b'\x00not a checkpoint')
    argv = [a.replace('{tmp}', str(tmp_path)) for a in argv]
    base = {'--model': 'resnet26_cifar', '--format': 'torchscript', '--output': str(tmp_path / 'net.ts')}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    code, _, err = export_cli(capsys, *[x for kv in base.items() for x in kv])
    assert code == 2 and message in err
    assert err.count('\n') == 1 and err.startswith('scnet export: error: ')
    assert not (tmp_path / 'net.ts').exists()


def test_cli_unknown_format_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(['export', '--model', 'resnet26_cifar', '--format', 'tflite', '--output', 'x'])
    assert e.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(['export', '--help'])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    for flag in ('--model', '--checkpoint', '--num-classes', '--format', '--output', '--input-size', '--batch-size',
                 '--repeats', '--no-deploy', '--force'):
        assert flag in usage


def test_a_probe_failure_names_the_flags_that_make_the_input(tmp_path, capsys, monkeypatch):
    """deploy's advice is its Python argument (example_input=); scnet export builds that input from its flags."""
    import sys

    from scnet.deploy import DeployError

    def failing(model, **kwargs):
        raise DeployError('the model failed on the probe input of shape (100000, 3, 32, 32) (RuntimeError: '
                          "can't allocate memory); pass example_input= with a valid input",
                          failed_probe=((100000, 3, 32, 32), "RuntimeError: can't allocate memory"))

    # the module (scnet.deploy, the attribute, is the function): run() imports deploy from it when it runs
    monkeypatch.setattr(sys.modules['scnet.deploy'], 'deploy', failing)
    code, _, err = export_cli(capsys, '--model', 'resnet26_cifar', '--format', 'torchscript', '--output',
                              str(tmp_path / 'net.ts'))
    assert code == 2 and 'example_input=' not in err
    assert 'the example input is made from --batch-size and --input-size' in err


def test_cli_builds_the_network_the_checkpoint_records(tmp_path, capsys):
    """The model options scnet train records beside the weights (channels, pooling_r, pool: the last two
    change no tensor's shape) and its image size: built without them, the file would compute another network
    while its parity check, against that same network, passed."""
    import json as _json

    options = {'channels': [8, 16, 32, 64], 'pooling_r': 2, 'pool': 'max'}
    trained = randomise_bns(scnet.create_model('scnet26_cifar', num_classes=3, **options)).eval()
    meta = {'model': 'scnet26_cifar', 'classes': _json.dumps(['a', 'b', 'c']), 'image_size': '16',
            'eval_resize': '16', 'model_kwargs': _json.dumps(options)}
    run = tmp_path / 'run'
    save_state_dict(trained.state_dict(), run / 'model.safetensors', metadata=meta)
    out_file = tmp_path / 'net.pt2'
    code, out, err = export_cli(capsys, '--model', 'scnet26_cifar', '--checkpoint', str(run), '--format', 'exported',
                                '--output', str(out_file))
    assert code == 0, err
    assert _json.loads((tmp_path / 'net.pt2.json').read_text())['input_shape'] == [1, 3, 16, 16]  # recorded size
    x = torch.randn(2, 3, 16, 16)
    assert check_parity(trained, load_exported(out_file, 'exported'), x) < 1e-4
    code, _, err = export_cli(capsys, '--model', 'resnet26_cifar', '--checkpoint', str(run), '--format', 'exported',
                              '--output', str(tmp_path / 'other.pt2'))
    assert code == 2 and 'holds weights of scnet26_cifar (recorded in it), not of resnet26_cifar: pass --model ' \
                          'scnet26_cifar' in err


def test_cli_weights_of_other_widths_recording_nothing_name_the_widths_and_take_model_kwargs(tmp_path, capsys):
    """Weights saved from Python (no metadata) of a narrower network: the error reads the widths off the weights
    and gives the flag that builds it; with the flag the file computes the trained network."""
    import json as _json

    trained = randomise_bns(scnet.create_model('scnet26_cifar', num_classes=3, channels=(8, 16, 32, 64))).eval()
    bare = save_state_dict(trained.state_dict(), tmp_path / 'bare.safetensors')
    out_file = tmp_path / 'net.ts'  # (TorchScript: the quickest format to write)
    argv = ['--model', 'scnet26_cifar', '--checkpoint', str(bare), '--format', 'torchscript', '--output', str(out_file),
            '--input-size', '16']
    code, _, err = export_cli(capsys, *argv)
    assert code == 2 and err.count('\n') == 1 and not out_file.exists()
    assert err.startswith(f'scnet export: error: {bare} does not fit scnet26_cifar: it fits with channels=(8, 16, 32, '
                          '64), which it does not record: pass --model-kwargs channels=8,16,32,64; keys: ')
    code, _, err = export_cli(capsys, *argv, '--model-kwargs', 'channels=8,16,32,64')
    assert code == 0, err
    assert _json.loads((tmp_path / 'net.ts.json').read_text())['model_kwargs'] == {'channels': [8, 16, 32, 64]}
    x = torch.randn(2, 3, 16, 16)
    assert check_parity(trained, load_exported(out_file, 'torchscript'), x) < 1e-4
    with pytest.raises(SystemExit) as usage_error:
        export_cli(capsys, *argv, '--model-kwargs', 'channels')
    err = capsys.readouterr().err
    assert usage_error.value.code == 2 and "argument --model-kwargs: 'channels' is not KEY=VALUE (e.g. " in err
    grey = tmp_path / 'grey.ts'  # a network of one input channel: the example input has one
    code, _, err = export_cli(capsys, '--model', 'scnet26_cifar', '--format', 'torchscript', '--output', str(grey),
                              '--input-size', '16', '--model-kwargs', 'in_chans=1', 'channels=8,16,32,64')
    assert code == 0, err
    assert _json.loads((tmp_path / 'grey.ts.json').read_text())['input_shape'] == [1, 1, 16, 16]
    code, _, err = export_cli(capsys, *argv, '--force', '--model-kwargs', 'channels=8,16,32,64', 'colour=2')
    assert code == 2 and err.count('\n') == 1 and 'colour' in err  # an option no network takes: one line


def test_check_parity_refuses_a_model_in_training_mode(tiny, tmp_path):
    """In training mode batch norm would use and change batch statistics: a false difference, and the
    model's running statistics changed by a check."""
    model = copy.deepcopy(tiny[0])
    x = torch.randn(2, 3, 16, 16)
    path = export_model(model, 'exported', tmp_path / 'net.pt2', x)
    model.train()
    before = model.bn1.running_mean.clone()
    with pytest.raises(ExportError, match=r'call model.eval\(\) first'):
        check_parity(model, load_exported(path, 'exported'), x)
    assert torch.equal(model.bn1.running_mean, before)


@pytest.mark.parametrize('fmt', ['exported', 'torchscript', 'onnx'])
def test_a_loaded_file_names_an_input_it_cannot_take(fmt, tiny, tmp_path):
    model = tiny[0]
    path = export_model(model, fmt, tmp_path / f'net.{fmt}', torch.randn(1, 3, 16, 16))
    loaded = load_exported(path, fmt)
    assert loaded(torch.randn(3, 3, 16, 16)).shape == (3, 10)  # another batch is fine
    for bad in (torch.randn(1, 1, 16, 16), torch.randn(1, 3, 16, 16, dtype=torch.float64)):
        with pytest.raises(ExportError, match=rf'\({fmt}\) cannot run an input of shape .*only the batch may change'):
            loaded(bad)
    with pytest.raises(ExportError, match='takes a tensor, got list'):
        loaded([1, 2])
