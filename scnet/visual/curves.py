"""Training curves of ``scnet train`` runs: read ``RUN_DIR/metrics.jsonl`` and draw PNG figures.

A run directory holds ``metrics.jsonl`` (one JSON object per finished epoch) and ``config.json`` (the run's
settings, among them ``model``). The figures put several runs on the same axes, one colour per run; the
main classifier is drawn solid and the auxiliary (side) classifier after res3 dashed, as in Fig. 5 of the
paper (res3 side-supervision accuracy of ResNet-50 and SCNet-50 on the same axes).

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure`` rendered by Agg): no
display, no pyplot global state.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from scnet.errors import ScnetError
from scnet.files import write_json_atomic
from scnet.visual.images import save_png

__all__ = ['MetricsError', 'read_metrics', 'run_model', 'summarize', 'plot_runs', 'METRIC_KEYS', 'FIGURES',
           'DPI']

PathLike = Union[str, 'os.PathLike[str]']

#: Numeric keys of a metrics.jsonl record (besides ``epoch``); any of them may be absent or null.
METRIC_KEYS = ('lr', 'train_loss', 'train_top1', 'val_loss', 'val_top1', 'val_top5', 'images_per_sec',
               'epoch_time_s', 'skipped_images', 'aux_train_loss', 'aux_val_top1', 'aux_val_top5',
               'ema_val_loss', 'ema_val_top1', 'ema_val_top5')

#: Accuracy keys summarised in summary.json (best, its epoch, last).
SUMMARY_KEYS = ('val_top1', 'val_top5', 'aux_val_top1', 'aux_val_top5', 'ema_val_top1', 'ema_val_top5')

DPI = 120
#: File name -> figure size in inches; the PNG is ``figsize * DPI`` pixels (no tight cropping).
FIGURES: Dict[str, Tuple[float, float]] = {
    'loss.png': (12.0, 4.8),
    'accuracy.png': (12.0, 4.8),
    'lr.png': (8.0, 4.8),
    'throughput.png': (8.0, 4.8),
}

MAIN_STYLE = '-'   # main classifier
AUX_STYLE = '--'   # auxiliary classifier after res3
AUX_NAME = 'res3 auxiliary head'
EMA_STYLE = ':'    # the EMA of the weights (--ema-decay), evaluated beside the model
EMA_NAME = 'EMA of the weights'
#: The curves drawn beside a panel's main one: key prefix -> (line style, legend name).
_COMPANIONS = {'aux_': (AUX_STYLE, AUX_NAME), 'ema_': (EMA_STYLE, EMA_NAME)}
LEGEND_WRAP = 30  # characters per line of a legend label


class MetricsError(ScnetError, ValueError):
    """A run directory without usable metrics, or bad arguments to the plotting functions."""


# ---------------------------------------------------------------------------------------------- reading

def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_record(record: object, where: str) -> Dict[str, object]:
    if not isinstance(record, dict):
        raise MetricsError(f'{where}: expected a JSON object, got {type(record).__name__}')
    epoch = record.get('epoch')
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise MetricsError(f"{where}: 'epoch' must be a positive integer, got {epoch!r}")
    for key in METRIC_KEYS:
        value = record.get(key)
        if value is not None and not _is_number(value):
            raise MetricsError(f'{where}: {key!r} must be a number, got {value!r}')
    return record


def read_metrics(run_dir: PathLike) -> List[Dict[str, object]]:
    """The epochs recorded in ``run_dir/metrics.jsonl``, sorted by epoch.

    A final line that does not end with a newline and does not parse is the trace of a run killed
    mid-write and is ignored; any other line that is not a JSON object with a positive integer ``epoch``
    (and numbers or null for the known metrics) raises :class:`MetricsError` naming the file and line.
    Blank lines are skipped. When an epoch appears twice (a resumed run appending again), the later line
    wins. Raises :class:`MetricsError` when the directory, the file, or any complete epoch is missing.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MetricsError(f'{run_dir}: no such run directory')
    path = run_dir / 'metrics.jsonl'
    if not path.is_file():
        raise MetricsError(f'no metrics.jsonl in {run_dir} (a run directory of `scnet train` has one)')
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MetricsError(f'cannot read {path}: {e.strerror or e}') from None
    lines = data.split(b'\n')  # the last item is b'' when the file ends with a newline
    by_epoch: Dict[int, Dict[str, object]] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last_unterminated = number == len(lines)  # only a final line without '\n' can be a partial write
        try:
            record = json.loads(raw.decode('utf-8'))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if last_unterminated:
                break
            reason = e.msg if isinstance(e, json.JSONDecodeError) else 'not UTF-8 text'
            raise MetricsError(f'{path} line {number}: not a valid JSON line ({reason})') from None
        record = _check_record(record, f'{path} line {number}')
        by_epoch[record['epoch']] = record
    if not by_epoch:
        raise MetricsError(f'{path} is empty: no finished epoch recorded yet')
    return [by_epoch[e] for e in sorted(by_epoch)]


def run_model(run_dir: PathLike) -> Optional[str]:
    """The ``model`` of ``run_dir/config.json``; None when the file, or a string ``model`` in it, is missing."""
    try:
        config = json.loads((Path(run_dir) / 'config.json').read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    model = config.get('model') if isinstance(config, dict) else None
    return model.strip() if isinstance(model, str) and model.strip() else None


def _folder_name(run_dir: Path) -> str:
    return run_dir.resolve().name or str(run_dir)


def _unique_labels(labels: Sequence[str], run_dirs: Sequence[Path]) -> List[str]:
    """Two runs of the same model get their folder names added; any remaining clash gets ' #2', ' #3'..."""
    out = [f'{lab} ({_folder_name(d)})' if labels.count(lab) > 1 and _folder_name(d) != lab else lab
           for lab, d in zip(labels, run_dirs)]
    seen: Dict[str, int] = {}
    for i, lab in enumerate(out):
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            out[i] = f'{lab} #{seen[lab]}'
    return out


# -------------------------------------------------------------------------------------------- summary

def _finite(value: object) -> Optional[float]:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _series(metrics: Sequence[Dict[str, object]], key: str) -> Tuple[List[int], List[float]]:
    """Epochs and values of ``key`` (NaN where absent or null); empty when no epoch has it."""
    if not any(_is_number(m.get(key)) for m in metrics):
        return [], []
    return ([m['epoch'] for m in metrics],
            [float(m[key]) if _is_number(m.get(key)) else math.nan for m in metrics])


def summarize(metrics: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """Best (with its epoch; the first on a tie) and last value of each accuracy, mean images/s.

    Keys absent from every epoch are left out (the aux ones for a run without a side classifier); NaN
    and infinite values are ignored; ``last`` is the value of the last epoch that has one.
    """
    out: Dict[str, object] = {'epochs': len(metrics), 'last_epoch': metrics[-1]['epoch']}
    for key in SUMMARY_KEYS:
        points = [(m['epoch'], v) for m in metrics if (v := _finite(m.get(key))) is not None]
        if not points:
            continue
        best_epoch, best = max(points, key=lambda p: (p[1], -p[0]))
        out[key] = {'best': best, 'best_epoch': best_epoch, 'last': points[-1][1], 'last_epoch': points[-1][0]}
    speeds = [v for m in metrics if (v := _finite(m.get('images_per_sec'))) is not None]
    out['mean_images_per_sec'] = sum(speeds) / len(speeds) if speeds else None
    return out


# ----------------------------------------------------------------------------------------------- drawing

def _colours(n: int) -> List[Tuple[float, float, float, float]]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps['tab10'](i) for i in range(n)]
    if n <= 20:
        return [colormaps['tab20'](i) for i in range(n)]
    return [colormaps['turbo'](i / (n - 1)) for i in range(n)]


def _new_figure(name: str, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGURES[name], dpi=DPI, layout='constrained')
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _style_axes(ax, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=12)
    ax.set_xlabel('epoch')
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, which='major', alpha=0.35)
    ax.grid(True, which='minor', alpha=0.12)


def _plot(ax, epochs, values, colour, linestyle: str, gid: str, **kwargs) -> bool:
    if not epochs:
        return False
    few = len(epochs) <= 30  # markers keep short runs (and isolated points between gaps) visible
    kwargs.setdefault('linewidth', 1.8 if linestyle == MAIN_STYLE else 1.6)
    ax.plot(epochs, values, color=colour, linestyle=linestyle, marker='o' if few else None, markersize=3.5,
            gid=gid, **kwargs)
    return True


def _legends(ax, labels: Sequence[str], colours, styles: Sequence[Tuple[str, str]]) -> None:
    """One legend right of ``ax`` (outside the axes, so that it never hides a curve; a single legend, so
    that the constrained layout makes room for all of it): one entry per run in its colour, then, when
    more than one line style is used, what each style means. Long labels are wrapped."""
    import textwrap

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linewidth=2.5) for c in colours]
    texts = [textwrap.fill(lab, LEGEND_WRAP).replace('$', r'\$') for lab in labels]  # '$' literal, not mathtext
    if len(styles) > 1:
        handles.append(Line2D([], [], linestyle='none'))
        texts.append('line style')
        handles += [Line2D([], [], color='0.25', linestyle=s, linewidth=1.8) for s, _ in styles]
        texts += [name for _, name in styles]
    legend = ax.legend(handles, texts, title='run', loc='upper left', bbox_to_anchor=(1.02, 1.0),
                       borderaxespad=0.0, fontsize=9, title_fontsize=9)
    if len(styles) > 1:
        legend.get_texts()[len(labels)].set_fontweight('bold')  # the sub-heading


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f'no {what} recorded', transform=ax.transAxes, ha='center', va='center',
            fontsize=11, color='0.4')


def _two_panel(name: str, runs, labels, colours, suptitle: str, panels) -> 'object':
    """``panels``: (title, ylabel, main key, companion keys) for the left and the right axes; each companion
    (``aux_...``, ``ema_...``) is drawn in the run's colour, in its own line style, where a run recorded it."""
    fig, axes = _new_figure(name, ncols=2)
    drawn_styles: Dict[str, Tuple[str, str]] = {}
    for ax, (title, ylabel, key, companions) in zip(axes, panels):
        drawn = False
        for (run_dir, metrics), label, colour in zip(runs, labels, colours):
            drawn |= _plot(ax, *_series(metrics, key), colour, MAIN_STYLE, f'{label}|{key}')
            for companion in companions:
                style = _COMPANIONS[companion[:4]]
                if _plot(ax, *_series(metrics, companion), colour, style[0], f'{label}|{companion}'):
                    drawn = True
                    drawn_styles[companion[:4]] = style
        _style_axes(ax, title, ylabel)
        if not drawn:
            _no_data(ax, key)
    extra = [drawn_styles[prefix] for prefix in _COMPANIONS if prefix in drawn_styles]
    _legends(axes[-1], labels, colours, [(MAIN_STYLE, 'main head'), *extra])
    words = {AUX_STYLE: 'dashed', EMA_STYLE: 'dotted'}
    note = ', '.join(f'{words[style]}: {what}' for style, what in extra)
    fig.suptitle(suptitle + (f'  (solid: main head, {note})' if note else ''), fontsize=13)
    return fig


def _loss_figure(runs, labels, colours):
    return _two_panel('loss.png', runs, labels, colours, 'Loss per epoch', [
        ('Training loss', 'loss (mean over the epoch)', 'train_loss', ('aux_train_loss',)),
        ('Validation loss', 'loss', 'val_loss', ('ema_val_loss',))])


def _accuracy_figure(runs, labels, colours):
    return _two_panel('accuracy.png', runs, labels, colours, 'Validation accuracy', [
        ('Top-1 accuracy', 'top-1 accuracy (%)', 'val_top1', ('aux_val_top1', 'ema_val_top1')),
        ('Top-5 accuracy', 'top-5 accuracy (%)', 'val_top5', ('aux_val_top5', 'ema_val_top5'))])


def _single_figure(name: str, key: str, runs, labels, colours, title: str, ylabel: str, schedule=False):
    """One panel of ``key``; ``schedule``: the learning rate, drawn as steps (one value per epoch), on a
    log axis when it spans a factor of 10, and with lines thinning from the first run to the last so that
    runs sharing a schedule (the usual case) all stay visible."""
    fig, (ax,) = _new_figure(name)
    drawn = False
    values: List[float] = []
    n = len(runs)
    for i, ((run_dir, metrics), label, colour) in enumerate(zip(runs, labels, colours)):
        epochs, series = _series(metrics, key)
        extra = dict(drawstyle='steps-post', linewidth=1.6 + 3.4 * (n - 1 - i) / max(n - 1, 1)) if schedule else {}
        drawn |= _plot(ax, epochs, series, colour, MAIN_STYLE, f'{label}|{key}', **extra)
        values += [v for v in series if math.isfinite(v)]
    _style_axes(ax, title, ylabel)
    if schedule and values and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_yscale('log')  # step schedules (0.1 -> 0.01 -> 0.001) read best on a log axis
    if not drawn:
        _no_data(ax, key)
    _legends(ax, labels, colours, [(MAIN_STYLE, 'main')])
    return fig


def _lr_figure(runs, labels, colours):
    return _single_figure('lr.png', 'lr', runs, labels, colours, 'Learning rate per epoch', 'learning rate',
                          schedule=True)


def _throughput_figure(runs, labels, colours):
    return _single_figure('throughput.png', 'images_per_sec', runs, labels, colours, 'Throughput per epoch',
                          'throughput (images/s)')


def plot_runs(run_dirs: Sequence[PathLike], output_dir: PathLike, *,
              labels: Optional[Sequence[str]] = None) -> List[Path]:
    """Draw the curves of one or more runs and summarise them; returns the paths written.

    Writes into ``output_dir`` (created if needed): ``loss.png`` (training loss, with the aux head's
    dashed, and validation loss, the EMA's dotted), ``accuracy.png`` (validation top-1 and top-5, aux head
    dashed as in the paper's Fig. 5, EMA of the weights dotted), ``lr.png``, ``throughput.png`` (images/s)
    and ``summary.json`` (per run: best value with its epoch and last value of each validation accuracy,
    the aux head's and the EMA's included, mean images/s). Runs are labelled with
    ``labels``, else the model of their config.json, else their folder's name.
    """
    from scnet.visual.loading import as_list

    run_dirs = [Path(d) for d in as_list(run_dirs)]
    if not run_dirs:
        raise MetricsError('no run directory given')
    if labels is not None:
        labels = [str(lab) for lab in as_list(labels)]
        if len(labels) != len(run_dirs):
            raise MetricsError(f'{len(labels)} label(s) given for {len(run_dirs)} run(s): give one per run')
    runs = [(d, read_metrics(d)) for d in run_dirs]  # all inputs checked before anything is written
    models = [run_model(d) for d in run_dirs]
    if labels is None:
        labels = [model or _folder_name(d) for model, d in zip(models, run_dirs)]
    labels = _unique_labels(labels, run_dirs)

    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise MetricsError(f'output {output_dir} exists and is not a directory')
    output_dir.mkdir(parents=True, exist_ok=True)

    colours = _colours(len(runs))
    written: List[Path] = []
    for name, draw in (('loss.png', _loss_figure), ('accuracy.png', _accuracy_figure), ('lr.png', _lr_figure),
                       ('throughput.png', _throughput_figure)):
        path = output_dir / name
        save_png(draw(runs, labels, colours), path, dpi=DPI)
        written.append(path)

    summary = {'runs': [dict(label=label, model=model, run_dir=str(d), **summarize(metrics))
                        for (d, metrics), label, model in zip(runs, labels, models)]}
    path = output_dir / 'summary.json'
    write_json_atomic(summary, path)
    written.append(path)
    return written
