"""The scnet command itself: help everywhere, version, errors, and `scnet models`."""
import json
import subprocess
import sys

import pytest

from scnet.cli.main import COMMANDS, main


@pytest.mark.parametrize('command', COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, '--help'])
    assert e.value.code == 0
    assert f'usage: scnet {command}' in capsys.readouterr().out


def test_top_level_help_and_version(capsys):
    with pytest.raises(SystemExit):
        main(['--help'])
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
    with pytest.raises(SystemExit):
        main(['--version'])
    assert 'scnet-torch' in capsys.readouterr().out


@pytest.mark.parametrize('pattern, message', [
    ('scnet_50', "no model matches 'scnet_50'; did you mean scnet50"),
    ('scnet', "no model matches 'scnet'; did you mean scnet50, scnet26, scnet101? a pattern names models with shell "
              "wildcards, e.g. 'scnet*'"),
    ('zz*', "no model matches 'zz*' (`scnet models` lists them all)"),
])
def test_a_pattern_that_matches_no_model_says_so(pattern, message, capsys):
    assert main(['models', pattern]) == 2
    assert message in capsys.readouterr().err


def test_models_table_pattern_and_json(capsys):
    assert main(['models']) == 0
    table = capsys.readouterr().out
    assert 'scnet50 ' in table and 'resnet50 ' in table and "authors' weights" in table
    assert main(['models', '*v1d', '--format', 'json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r['model'] for r in rows} == {'scnet50_v1d', 'scnet101_v1d'}
    assert next(r for r in rows if r['model'] == 'scnet50_v1d') == dict(
        model='scnet50_v1d', params_m=25.584, in_paper=True, authors_weights=True)
    assert main(['models', 'scnet5*', '--format', 'markdown']) == 0
    assert capsys.readouterr().out.startswith('| model | params (M)')


def test_console_script_and_python_m():
    out = subprocess.run([sys.executable, '-m', 'scnet', 'models', 'scnext*'], capture_output=True, text=True)
    assert out.returncode == 0 and 'scnext101_32x4d' in out.stdout


def test_bad_arguments_exit_2_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(['models', '--format', 'yaml'])
    assert e.value.code == 2
    assert "invalid choice: 'yaml'" in capsys.readouterr().err
