"""``scnet convert``: both layouts in, our layout out as safetensors, and one-line errors with status 2.

The authors' checkpoint here is random tensors with their released names and shapes
(``data/official_layout/scnet50.json``); ``test_weights`` shows such a conversion reproduces their logits.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import scnet
from scnet.cli.main import main
from scnet.weights import convert_authors_state_dict, read_state_dict, save_state_dict
from tests.authors_reference import load_layout, random_authors_state_dict

SCNET50_PARAMS = load_layout('scnet50')['num_params']


@pytest.fixture(scope='module')
def authors_state():
    return random_authors_state_dict('scnet50')


@pytest.fixture(scope='module')
def authors_pth(tmp_path_factory, authors_state):
    path = tmp_path_factory.mktemp('authors') / 'scnet50-0123abcd.pth'
    torch.save(authors_state, path)
    return path


def metadata(path: Path) -> dict:
    with safe_open(str(path), framework='pt') as f:
        return f.metadata()


def assert_same_tensors(actual, expected):
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def run_convert(capsys, *args):
    rc = main(['convert', *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, *fragments):
    assert rc == 2
    assert out == ''
    assert err.startswith('scnet convert: error: ') and err.count('\n') == 1, err
    for fragment in fragments:
        assert fragment in err


def test_converts_the_authors_layout(tmp_path, capsys, authors_pth, authors_state):
    out_path = tmp_path / 'scnet50.safetensors'
    rc, out, _ = run_convert(capsys, authors_pth, out_path)
    assert rc == 0
    assert out.count('\n') == 1 and f'{SCNET50_PARAMS:,} parameters' in out and "authors' layout" in out
    assert_same_tensors(read_state_dict(out_path), convert_authors_state_dict(authors_state))
    assert metadata(out_path) == {'format': 'pt', 'source': authors_pth.name, 'layout': 'authors'}


def test_model_check_and_metadata(tmp_path, capsys, authors_pth):
    out_path = tmp_path / 'scnet50.safetensors'
    rc, out, _ = run_convert(capsys, authors_pth, out_path, '--model', 'scnet50')
    assert rc == 0 and 'fits scnet50 (1000 classes)' in out
    assert metadata(out_path)['model'] == 'scnet50'


def test_our_layout_passes_through(tmp_path, capsys, authors_state):
    ours = convert_authors_state_dict(authors_state)
    wrapped = tmp_path / 'ours.pth'
    torch.save({'epoch': 3, 'model': {'module.' + k: v for k, v in ours.items()}}, wrapped)
    out_path = tmp_path / 'out.safetensors'
    rc, out, _ = run_convert(capsys, wrapped, out_path, '--model', 'scnet50')
    assert rc == 0 and "scnet's layout" in out
    assert_same_tensors(read_state_dict(out_path), ours)
    assert metadata(out_path)['layout'] == 'scnet'
    # and a safetensors file in, converted to itself
    again = tmp_path / 'again.safetensors'
    assert run_convert(capsys, out_path, again)[0] == 0
    assert_same_tensors(read_state_dict(again), ours)


def test_number_of_classes_comes_from_the_checkpoint(tmp_path, capsys, authors_state):
    state = dict(authors_state, **{'fc.weight': torch.zeros(10, 2048), 'fc.bias': torch.zeros(10)})
    path = tmp_path / 'ten.pth'
    torch.save(state, path)
    rc, out, _ = run_convert(capsys, path, tmp_path / 'ten.safetensors', '--model', 'scnet50')
    assert rc == 0 and 'fits scnet50 (10 classes)' in out


def test_wrong_model_is_one_line_naming_keys(tmp_path, capsys, authors_pth):
    out_path = tmp_path / 'out.safetensors'
    rc, out, err = run_convert(capsys, authors_pth, out_path, '--model', 'scnet101')
    assert_one_line_error(rc, out, err, 'does not fit', 'missing from the checkpoint (e.g. layer3.')
    assert not out_path.exists()
    rc, out, err = run_convert(capsys, authors_pth, out_path, '--model', 'scnet_50')
    assert_one_line_error(rc, out, err, 'unknown model', 'scnet50')


def test_missing_file(tmp_path, capsys):
    out_path = tmp_path / 'out.safetensors'
    assert_one_line_error(*run_convert(capsys, tmp_path / 'absent.pth', out_path), 'absent.pth')
    assert not out_path.exists()


def test_unwritable_output(tmp_path, capsys, authors_pth):
    blocker = tmp_path / 'file'
    blocker.write_text('a file where a folder is needed')
    assert_one_line_error(*run_convert(capsys, authors_pth, blocker / 'out.safetensors'), 'cannot write')


def test_out_is_replaced_only_with_force_and_never_when_it_is_in(tmp_path, capsys, authors_pth):
    """OUT was replaced whatever it was: IN itself (a pickle overwritten by safetensors bytes), a run's
    last.pt, a device node."""
    out_path = tmp_path / 'out.safetensors'
    out_path.write_bytes(b'a file of the user')
    assert_one_line_error(*run_convert(capsys, authors_pth, out_path), 'exists; pass --force to replace it')
    assert out_path.read_bytes() == b'a file of the user'
    assert run_convert(capsys, authors_pth, out_path, '--force')[0] == 0
    assert metadata(out_path)['layout'] == 'authors'
    before = authors_pth.read_bytes()
    assert_one_line_error(*run_convert(capsys, authors_pth, authors_pth, '--force'), 'is IN itself')
    link = tmp_path / 'link.pth'
    link.symlink_to(authors_pth)
    assert_one_line_error(*run_convert(capsys, authors_pth, link, '--force'), 'is IN itself')
    assert authors_pth.read_bytes() == before
    assert_one_line_error(*run_convert(capsys, authors_pth, tmp_path, '--force'), 'is a folder')
    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    assert_one_line_error(*run_convert(capsys, authors_pth, fifo, '--force'), 'not a regular file')


def test_the_metadata_of_a_run_checkpoint_is_kept(tmp_path, capsys):
    """A run's checkpoint records its model, options and classes; converted without them it no longer loaded
    by its folder ("records no model name"), nor in the detection and pose commands."""
    from scnet.weights import save_state_dict

    net = scnet.create_model('scnet26_cifar', channels=[8, 16, 32, 64], num_classes=3)
    recorded = {'model': 'scnet26_cifar', 'model_kwargs': '{"channels": [8, 16, 32, 64]}', 'classes': '["a", "b", "c"]'}
    source = save_state_dict(net.state_dict(), tmp_path / 'run.safetensors', metadata=recorded)
    out_path = tmp_path / 'model.safetensors'
    assert run_convert(capsys, source, out_path)[0] == 0
    assert metadata(out_path) == {**recorded, 'format': 'pt', 'source': 'run.safetensors', 'layout': 'scnet'}
    loaded = scnet.create_model('scnet26_cifar', checkpoint=str(out_path))  # its options, from the metadata
    assert loaded.num_classes == 3


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'echo pwned > {self.marker}',)


def test_malicious_file_is_refused(tmp_path, capsys):
    marker, path = tmp_path / 'pwned', tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': _Payload(marker)}, path)
    assert_one_line_error(*run_convert(capsys, path, tmp_path / 'out.safetensors'), 'run code')
    assert not marker.exists()
    assert not (tmp_path / 'out.safetensors').exists()


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_corrupt_file(tmp_path, capsys, suffix):
    path = tmp_path / f'weights{suffix}'
    state = {'w': torch.randn(4096)}
    if suffix == '.pth':
        torch.save(state, path)
    else:
        save_state_dict(state, path)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    assert_one_line_error(*run_convert(capsys, path, tmp_path / 'out.safetensors'), path.name)


def test_help_explains_both_layouts(capsys):
    with pytest.raises(SystemExit) as info:
        main(['convert', '--help'])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ('conv1_a', 'scconv', 'conv2.k1', 'safetensors', 'weights_only', '--model'):
        assert word in text


def test_console_script(tmp_path, authors_pth):
    script = shutil.which('scnet', path=str(Path(sys.executable).parent)) or shutil.which('scnet')
    assert script, 'the scnet console script is not installed'
    out_path = tmp_path / 'scnet50.safetensors'
    done = subprocess.run([script, 'convert', str(authors_pth), str(out_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f'{SCNET50_PARAMS:,} parameters' in done.stdout
    assert metadata(out_path)['layout'] == 'authors'
    # (errors through a real process: tests/test_profile.py; convert's own: test_missing_file above)
