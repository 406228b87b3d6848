"""``scnet.complexity`` and ``scnet profile``: our Params / MAdds against the paper's Tables 1 and 3.

Networks are built on the meta device, so the whole file runs in seconds on a small CPU.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import scnet
import scnet.complexity
from scnet.cli.main import main
from scnet.complexity import (PAPER_ROWS, InputSizeError, paper_models, paper_rows, parse_input_size,
                              profile_model, profile_models, profile_paper)


@pytest.fixture(scope='module')
def paper_profile():
    return profile_paper(224)


def test_every_built_paper_row_matches_the_paper_at_224(paper_profile):
    """The acceptance criterion: params within 0.1M and MAdds within 3% for every Table 1 / 3 row we build."""
    built = {row['model']: row for row in paper_profile if row['model'] is not None}
    assert set(built) == {r.model for r in PAPER_ROWS if r.model is not None}
    for paper in PAPER_ROWS:
        if paper.model is None:
            continue
        ours = built[paper.model]
        assert abs(ours['params_m'] - paper.params_m) <= 0.1 + 1e-6, (paper.label, ours)
        assert abs(ours['macs_g'] - paper.madds_g) / paper.madds_g <= 0.03, (paper.label, ours)
        assert ours['within_tolerance'] is True and ours['note'].startswith('match'), ours
        assert ours['flops_g'] == pytest.approx(2 * ours['macs_g'], abs=2e-3)


def test_paper_data_covers_both_tables():
    labels = {(r.table, r.label) for r in PAPER_ROWS}
    assert sum(r.table == 1 for r in PAPER_ROWS) == 13 and sum(r.table == 3 for r in PAPER_ROWS) == 12
    assert (3, 'SCNet-50 (300 ep)') in labels and (3, 'GE-SCNet-50') in labels
    assert [r.table for r in paper_rows('scnet50')] == [1, 3, 3]
    for row in PAPER_ROWS:  # a network listed twice has the same complexity in both tables
        first = paper_rows(row.model)[0] if row.model else row
        assert (row.params_m, row.madds_g) == (first.params_m, first.madds_g)
    assert set(paper_models()) <= set(scnet.list_models())


def test_rows_the_project_does_not_build_say_why(paper_profile):
    missing = [row for row in paper_profile if row['model'] is None]
    assert [row['paper_row'] for row in missing] == ['ResNet-50 + CBAM', 'GCNet (ResNet-50)', 'ResNet-50 + GALA',
                                                     'ResNet-50 + AA']
    assert all(row['note'].startswith('not built: ') and row['macs_g'] is None for row in missing)


def test_zoo_networks_outside_the_paper_profile_with_empty_paper_columns():
    """With the paper's networks above, every zoo network is shown to run on the meta device."""
    rows = profile_models([name for name in scnet.list_models() if name not in paper_models()])
    assert {'scnet50_v1d', 'scnet26', 'scnet26_cifar'} <= {row['model'] for row in rows}
    for row in rows:
        assert row['params_m'] > 0 and row['macs_g'] > 0, row
        assert row['paper_params_m'] is None and row['within_tolerance'] is None and row['note'], row


def test_a_module_is_profiled_where_it_lives_and_keeps_its_mode():
    model = scnet.create_model('scnet26_cifar', num_classes=10).train()
    row = profile_model(model, 32)
    assert model.training and row['paper_params_m'] is None
    assert row['params_m'] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=1e-3)
    # frozen parameters are parameters: a partly frozen network, or a deployed one, is not counted as empty
    frozen = profile_model(scnet.create_model('scnet26_cifar', num_classes=10).requires_grad_(False), 32)
    assert frozen['params_m'] == row['params_m'] and frozen['macs_g'] == row['macs_g']
    deployed = scnet.deploy(model.eval(), channels_last=False, example_input=torch.randn(2, 3, 32, 32)).module
    # its parameters do not require gradients; folding drops each norm's weight and bias for a convolution bias
    assert not any(p.requires_grad for p in deployed.parameters())
    assert 0.9 * row['params_m'] < profile_model(deployed, 32)['params_m'] < row['params_m']


def test_a_backbone_of_one_input_channel_is_fed_one_channel():
    """timm's features_only wrapper keeps no in_chans: a grey backbone was fed 3 channels and failed."""
    grey = profile_model('scnet26_cifar', 32, features_only=True, in_chans=1)
    module = scnet.create_model('scnet26_cifar', features_only=True, in_chans=1)
    assert profile_model(module, 32)['macs_g'] == grey['macs_g'] > 0
    # the stem's first conv on one channel instead of three: fewer MACs than the RGB backbone
    assert grey['macs_g'] < profile_model('scnet26_cifar', 32, features_only=True)['macs_g']


def test_a_variant_is_profiled_but_not_compared_with_the_default_network_row():
    row = profile_model('scnet50', pooling_r=2)  # a Table 2 ablation: more MAdds than the paper's SCNet-50
    assert row['macs_g'] > profile_model('scnet50')['macs_g']
    assert row['within_tolerance'] is None and 'pooling_r=2' in row['note']


def test_one_name_and_module_arguments():
    """A single name was profiled letter by letter ("unknown model 's'"); options beside a module were a bare
    TypeError."""
    assert [row['model'] for row in profile_models('scnet26_cifar', 32)] == ['scnet26_cifar']
    with pytest.raises(scnet.InvalidArgumentTypeError, match=r"model arguments \['pooling_r'\] need a model name"):
        profile_model(scnet.create_model('scnet26_cifar', channels=[8, 16, 32, 64]), 32, pooling_r=2)


@pytest.mark.parametrize('value, expected', [(224, (224, 224)), ('224', (224, 224)), ('320x240', (320, 240)),
                                             ((96, 128), (96, 128))])
def test_parse_input_size(value, expected):
    assert parse_input_size(value) == expected


@pytest.mark.parametrize('value', ['0', '320x', 'x240', '-3', 'big', (1, 2, 3), 2.5, True, '9999999999999',
                                   '224x70000'])
def test_bad_input_sizes_raise_an_scnet_error(value):
    with pytest.raises(InputSizeError):
        parse_input_size(value)


def test_cli_json_rows_have_the_documented_keys(capsys):
    assert main(['profile', '--models', 'scnet50', 'scnet26', '--format', 'json']) == 0
    rows = json.loads(capsys.readouterr().out)
    keys = {'model', 'input_size', 'params_m', 'macs_g', 'flops_g', 'paper_row', 'paper_tables', 'paper_params_m',
            'paper_madds_g', 'paper_flops_g', 'params_delta_m', 'madds_rel_diff_pct', 'within_tolerance', 'note'}
    assert [row['model'] for row in rows] == ['scnet50', 'scnet26'] and all(set(row) == keys for row in rows)
    assert rows[0]['within_tolerance'] is True and rows[0]['paper_madds_g'] == 4.0
    assert rows[1]['paper_row'] is None and rows[1]['within_tolerance'] is None


def test_cli_default_markdown_is_a_table_of_every_paper_row(capsys, monkeypatch, paper_profile):
    calls = []

    def reuse_paper_profile(input_size, **kwargs):  # the fixture's rows: profiling them twice costs seconds
        calls.append(input_size)
        return paper_profile

    monkeypatch.setattr(scnet.complexity, 'profile_paper', reuse_paper_profile)
    assert main(['profile', '--format', 'markdown']) == 0
    assert calls == [(224, 224)]
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith('|')]
    assert table[1].startswith('|---')
    assert len({len(line.split('|')) for line in table}) == 1  # the same number of cells on every line
    body = table[2:]
    assert len(body) == len(paper_models()) + 4  # + the Table 3 rows we do not build
    assert all(line.rstrip(' |').endswith(('match', 'no MLP)')) for line in body[:len(paper_models())])
    assert sum('not built: ' in line for line in body) == 4
    assert 'FLOPs = 2 x MAdds' in out


def test_cli_input_size_hxw_scales_macs_with_pixels(capsys):
    assert main(['profile', '--models', 'scnet50', '--input-size', '320x240', '--format', 'json']) == 0
    big = json.loads(capsys.readouterr().out)[0]
    base = profile_model('scnet50', 224)
    assert big['input_size'] == [320, 240] and big['params_m'] == base['params_m']
    assert big['macs_g'] / base['macs_g'] == pytest.approx(320 * 240 / 224 ** 2, rel=0.03)
    assert big['within_tolerance'] is None and big['madds_rel_diff_pct'] is None and '224x224' in big['note']


@pytest.mark.parametrize('argv, needle', [(['--models', 'scnet5'], "unknown model 'scnet5'"),
                                          (['--input-size', '320x'], "input size '320x'"),
                                          (['--input-size', '0'], "input size '0'")])
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, needle):
    assert main(['profile', *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == '' and needle in captured.err and captured.err.count('\n') == 1


def test_cli_help_states_the_conventions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['profile', '--help'])
    assert exit_info.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())
    assert 'FLOPs = 2 x MAdds' in text and 'not counted' in text and 'HxW' in text


def test_the_installed_command_reports_an_unknown_model():
    proc = subprocess.run([sys.executable, '-m', 'scnet', 'profile', '--models', 'resnet50', 'scnet5'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.startswith("scnet profile: error: unknown model 'scnet5'")
