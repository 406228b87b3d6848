"""``scnet plot`` and ``scnet.visual.curves``: metrics.jsonl reading, the PNG figures, summary.json, errors.

Runs are fake ``metrics.jsonl`` files (the format ``scnet train`` writes) in temporary directories; the
figures are rendered twice in all (several runs, one run), the rest is checked without rendering.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scnet.cli.main import main
from scnet.visual.curves import (DPI, FIGURES, MetricsError, _accuracy_figure, _colours, _loss_figure,
                                 _unique_labels, plot_runs, read_metrics, run_model, summarize)

PNGS = ('loss.png', 'accuracy.png', 'lr.png', 'throughput.png')
TAB10_BLUE, TAB10_ORANGE = (31, 119, 180), (255, 127, 14)  # the colours of the first and second run

# scnet50 with a res3 auxiliary head: val_top1 peaks at epoch 3 (ties at 60.0 on epochs 3 and 4 for top-5)
AUX_VAL_TOP1 = [20.0, 45.5, 61.25, 60.5]
AUX_VAL_TOP5 = [40.0, 55.0, 60.0, 60.0]
AUX_AUX_TOP1 = [10.0, 30.0, 35.0, 38.0]
AUX_SPEED = [100.0, 200.0, 300.0, 400.0]


def record(epoch: int, val_top1: float, val_top5: float, speed: float, aux_top1=None) -> dict:
    row = dict(epoch=epoch, lr=0.1 * 0.1 ** ((epoch - 1) // 2), train_loss=7.0 - epoch, train_top1=val_top1 - 1,
               val_loss=6.5 - epoch, val_top1=val_top1, val_top5=val_top5, images_per_sec=speed,
               epoch_time_s=60.0, skipped_images=0)
    if aux_top1 is not None:
        row.update(aux_train_loss=7.5 - epoch / 2, aux_val_top1=aux_top1, aux_val_top5=aux_top1 + 20)
    return row


def write_run(run_dir: Path, rows, model=None, tail: str = '') -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows) + tail)
    if model is not None:
        (run_dir / 'config.json').write_text(json.dumps({'model': model, 'epochs': 100, 'lr': 0.1}))
    return run_dir


def aux_rows():
    return [record(e, t1, t5, s, aux) for e, t1, t5, s, aux in
            zip(range(1, 5), AUX_VAL_TOP1, AUX_VAL_TOP5, AUX_SPEED, AUX_AUX_TOP1)]


def plain_rows():
    return [record(e, 10.0 * e, 30.0 + e, 50.0) for e in range(1, 4)]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('runs')
    aux = write_run(root / 'run_a', aux_rows(), model='scnet50')
    # a run being written: killed in the middle of its 4th line
    plain = write_run(root / 'run_b', plain_rows(), model='resnet50', tail='{"epoch": 4, "lr": 0.00')
    return aux, plain


@pytest.fixture(scope='module')
def several(runs, tmp_path_factory):
    """`scnet plot RUN_A RUN_B` from an empty directory: figures go to ./plots."""
    cwd = tmp_path_factory.mktemp('cwd')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        code = main(['plot', str(runs[0]), str(runs[1])])
    return code, cwd / 'plots'


# ------------------------------------------------------------------------------------ metrics.jsonl

def test_read_metrics_ignores_a_truncated_last_line(runs):
    rows = read_metrics(runs[1])
    assert [r['epoch'] for r in rows] == [1, 2, 3]
    assert rows == plain_rows()
    assert read_metrics(runs[0]) == aux_rows()


def test_read_metrics_resumed_run_later_line_wins(tmp_path):
    rows = [record(1, 1.0, 2.0, 9.0), record(2, 2.0, 3.0, 9.0), record(2, 5.0, 6.0, 9.0), record(3, 3.0, 4.0, 9.0)]
    write_run(tmp_path, rows, tail='\n\n')  # blank lines are skipped
    got = read_metrics(tmp_path)
    assert [(r['epoch'], r['val_top1']) for r in got] == [(1, 1.0), (2, 5.0), (3, 3.0)]


GOOD = json.dumps(record(1, 1.0, 2.0, 3.0))


@pytest.mark.parametrize('content, message', [
    ('', r'metrics.jsonl is empty: no finished epoch'),
    ('\n  \n', r'metrics.jsonl is empty'),
    ('{"epoch": 1, "val_t', r'metrics.jsonl is empty'),  # only a partial first line
    (f'{GOOD}\n{{"epoch": 2, "lr"\n{GOOD}\n', r'metrics.jsonl line 2: not a valid JSON line'),
    (f'{GOOD}\nnot json\n', r'metrics.jsonl line 2: not a valid JSON line'),  # complete (ends with \n): corrupt
    (f'{GOOD}\n\xff\xfe\n{GOOD}', r'line 2: not a valid JSON line \(not UTF-8 text\)'),
    (f'{GOOD}\n[1, 2]\n', r'line 2: expected a JSON object, got list'),
    ('{"lr": 0.1}\n', r"line 1: 'epoch' must be a positive integer, got None"),
    ('{"epoch": 0}\n', r"line 1: 'epoch' must be a positive integer, got 0"),
    ('{"epoch": true}\n', r"'epoch' must be a positive integer, got True"),
    ('{"epoch": 1, "val_top1": "71.2"}\n', r"line 1: 'val_top1' must be a number, got '71.2'"),
])
def test_read_metrics_errors_name_file_and_line(tmp_path, content, message):
    (tmp_path / 'metrics.jsonl').write_bytes(content.encode('latin-1'))
    with pytest.raises(MetricsError, match=message):
        read_metrics(tmp_path)


def test_read_metrics_missing_dir_or_file(tmp_path):
    (tmp_path / 'empty_run').mkdir()
    with pytest.raises(MetricsError, match=r'no metrics.jsonl in .*empty_run'):
        read_metrics(tmp_path / 'empty_run')
    with pytest.raises(MetricsError, match=r'nowhere: no such run directory'):
        read_metrics(tmp_path / 'nowhere')


# ------------------------------------------------------------------------------------------- summary

def test_summary_json(several, runs):
    code, out = several
    assert code == 0
    summary = json.loads((out / 'summary.json').read_text())
    a, b = summary['runs']
    assert (a['label'], a['model'], a['run_dir']) == ('scnet50', 'scnet50', str(runs[0]))
    assert (a['epochs'], a['last_epoch']) == (4, 4)
    assert a['val_top1'] == dict(best=61.25, best_epoch=3, last=60.5, last_epoch=4)
    assert a['val_top5'] == dict(best=60.0, best_epoch=3, last=60.0, last_epoch=4)  # first epoch of a tie
    assert a['aux_val_top1'] == dict(best=38.0, best_epoch=4, last=38.0, last_epoch=4)
    assert a['aux_val_top5'] == dict(best=58.0, best_epoch=4, last=58.0, last_epoch=4)
    assert a['mean_images_per_sec'] == pytest.approx(250.0)
    assert (b['label'], b['epochs']) == ('resnet50', 3)  # the truncated 4th epoch is not counted
    assert b['val_top1'] == dict(best=30.0, best_epoch=3, last=30.0, last_epoch=3)
    assert 'aux_val_top1' not in b and 'aux_val_top5' not in b
    assert b['mean_images_per_sec'] == 50.0


def test_summarize_skips_missing_and_nan():
    rows = [dict(epoch=1, val_top1=float('nan'), images_per_sec=None), dict(epoch=2, val_top1=5.0),
            dict(epoch=3, val_top1=None, images_per_sec=10.0)]
    s = summarize(rows)
    assert s['val_top1'] == dict(best=5.0, best_epoch=2, last=5.0, last_epoch=2)
    assert 'val_top5' not in s and s['mean_images_per_sec'] == 10.0


def test_labels_model_folder_and_duplicates(tmp_path):
    write_run(tmp_path / 'x', plain_rows(), model='scnet50')
    write_run(tmp_path / 'y', plain_rows())
    assert run_model(tmp_path / 'x') == 'scnet50' and run_model(tmp_path / 'y') is None
    dirs = [Path('runs/lr0.1'), Path('runs/lr0.2'), Path('other/lr0.1'), Path('z')]
    assert _unique_labels(['scnet50', 'scnet50', 'scnet50', 'resnet50'], dirs) == [
        'scnet50 (lr0.1)', 'scnet50 (lr0.2)', 'scnet50 (lr0.1) #2', 'resnet50']


# ------------------------------------------------------------------------------------------- figures

@pytest.mark.parametrize('name', PNGS)
def test_pngs_size_and_not_blank(several, name):
    code, out = several
    with Image.open(out / name) as im:
        assert im.format == 'PNG'
        assert im.size == (round(FIGURES[name][0] * DPI), round(FIGURES[name][1] * DPI))
        assert 100 <= round(im.info['dpi'][0]) <= 150
        pixels = np.asarray(im.convert('RGB'))
    assert pixels.std() > 0
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 10
    assert TAB10_BLUE in colours and TAB10_ORANGE in colours  # both runs are drawn


def test_cli_writes_every_file_into_plots(several):
    code, out = several
    assert sorted(p.name for p in out.iterdir()) == sorted(PNGS + ('summary.json',))
    assert not list(out.glob('.*'))  # no temporary files left behind


def test_accuracy_figure_aux_dashed_main_solid(runs):
    data = [(d, read_metrics(d)) for d in runs]
    colours = _colours(2)
    fig = _accuracy_figure(data, ['scnet50', 'resnet50'], colours)
    top1, top5 = fig.axes
    lines = {line.get_gid(): line for line in top1.get_lines()}
    assert set(lines) == {'scnet50|val_top1', 'scnet50|aux_val_top1', 'resnet50|val_top1'}
    assert lines['scnet50|val_top1'].get_linestyle() == '-'
    assert lines['scnet50|aux_val_top1'].get_linestyle() == '--'
    assert lines['scnet50|val_top1'].get_color() == lines['scnet50|aux_val_top1'].get_color() == colours[0]
    assert lines['resnet50|val_top1'].get_color() == colours[1]
    assert list(lines['scnet50|aux_val_top1'].get_ydata()) == AUX_AUX_TOP1
    assert {line.get_gid() for line in top5.get_lines()} == {'scnet50|val_top5', 'scnet50|aux_val_top5',
                                                             'resnet50|val_top5'}
    assert top1.get_ylabel() == 'top-1 accuracy (%)' and top1.get_xlabel() == 'epoch'
    legend = top5.get_legend()
    assert {'scnet50', 'resnet50', 'main head', 'res3 auxiliary head'} <= {t.get_text() for t in legend.get_texts()}
    assert top1.get_legend() is None
    # long labels too: the legend sits right of the axes, off the curves, and inside the image
    fig2 = _accuracy_figure(data, ['SCNet-50, lr 0.1, batch 256, seed 0, 100 epochs', 'resnet50'], colours)
    fig2.draw_without_rendering()
    ax, legend = fig2.axes[1], fig2.axes[1].get_legend()
    assert ax.get_window_extent().x1 <= legend.get_window_extent().x0
    assert legend.get_window_extent().x1 <= fig2.bbox.x1
    assert '\n' in legend.get_texts()[0].get_text()  # wrapped
    assert 'dashed: res3 auxiliary head' in fig.get_suptitle()
    # without an aux head: no dashed line, no style legend
    fig = _loss_figure(data[1:], ['resnet50'], colours[:1])
    assert {line.get_linestyle() for ax in fig.axes for line in ax.get_lines()} == {'-'}
    assert 'dashed' not in fig.get_suptitle()
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ['resnet50']


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_single_run_writes_into_run_dir(tmp_path, capsys):
    run = write_run(tmp_path / 'run', aux_rows(), model='scnet50')
    assert main(['plot', str(run), '--labels', 'SCNet-50 ($r$=4)']) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run / n) for n in PNGS + ('summary.json',)]
    assert all(Path(p).stat().st_size > 10_000 for p in printed[:4])
    assert json.loads((run / 'summary.json').read_text())['runs'][0]['label'] == 'SCNet-50 ($r$=4)'


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and err.startswith('scnet plot: error: ')
    return err


def test_cli_errors_exit_2_with_one_line(tmp_path, runs, capsys):
    (tmp_path / 'no_metrics').mkdir()
    assert 'no metrics.jsonl in ' in error_of(['plot', str(tmp_path / 'no_metrics')], capsys)
    assert 'no_metrics' in error_of(['plot', str(runs[0]), str(tmp_path / 'no_metrics'), '-o',
                                     str(tmp_path / 'out')], capsys)
    assert not (tmp_path / 'out').exists()  # every run is read before anything is written
    write_run(tmp_path / 'empty', [])
    assert 'metrics.jsonl is empty' in error_of(['plot', str(tmp_path / 'empty')], capsys)
    write_run(tmp_path / 'corrupt', plain_rows(), tail='{"epoch": 4,,}\n' + GOOD + '\n')
    assert 'corrupt/metrics.jsonl line 4: not a valid JSON line' in error_of(
        ['plot', str(tmp_path / 'corrupt')], capsys)
    err = error_of(['plot', str(runs[0]), str(runs[1]), '--labels', 'only-one'], capsys)
    assert '--labels: 1 label(s) given for 2 run directories' in err
    (tmp_path / 'file').write_text('')
    with pytest.raises(SystemExit) as e:  # refused while the command line is parsed
        main(['plot', str(runs[0]), '-o', str(tmp_path / 'file')])
    assert e.value.code == 2 and 'is a file, not a folder' in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(['plot', '--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert 'usage: scnet plot' in out and 'metrics.jsonl' in out and '--labels' in out and 'accuracy.png' in out


def test_a_run_with_an_ema_of_the_weights_has_its_curves_and_summary(tmp_path):
    """`scnet train --ema-decay` records ema_val_*: drawn dotted in the run's colour, summarised beside the
    model's."""
    from scnet.visual.curves import summarize

    rows = [dict(record(e, 10.0 * e, 30.0 + e, 50.0), ema_val_loss=6.0 - e, ema_val_top1=12.0 * e,
                 ema_val_top5=33.0 + e) for e in range(1, 4)]
    run = write_run(tmp_path / 'ema_run', rows, model='scnet50')
    data = [(run, read_metrics(run))]
    fig = _accuracy_figure(data, ['scnet50'], _colours(1))
    lines = {line.get_gid(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {'scnet50|val_top1', 'scnet50|ema_val_top1'}
    assert lines['scnet50|ema_val_top1'].get_linestyle() == ':'
    assert list(lines['scnet50|ema_val_top1'].get_ydata()) == [12.0, 24.0, 36.0]
    assert 'dotted: EMA of the weights' in fig.get_suptitle() and 'dashed' not in fig.get_suptitle()
    assert 'EMA of the weights' in {t.get_text() for t in fig.axes[1].get_legend().get_texts()}
    loss = _loss_figure(data, ['scnet50'], _colours(1))
    assert {line.get_gid() for line in loss.axes[1].get_lines()} == {'scnet50|val_loss', 'scnet50|ema_val_loss'}
    assert summarize(rows)['ema_val_top1'] == dict(best=36.0, best_epoch=3, last=36.0, last_epoch=3)


def test_one_run_given_as_a_string_is_one_run(runs, tmp_path):
    """A path string is one run, not the sequence of its characters ("r: no such run directory")."""
    written = plot_runs(str(runs[0]), tmp_path / 'one', labels='mine')
    assert {p.name for p in written} >= {'accuracy.png', 'summary.json'}
    assert [r['label'] for r in json.loads((tmp_path / 'one' / 'summary.json').read_text())['runs']] == ['mine']
