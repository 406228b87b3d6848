"""Impossible flag values are refused while the command line is parsed, before any work (scnet/cli/arg_types.py):
each case names the flag and the problem, and nothing is written."""
from pathlib import Path

import pytest

from scnet.cli.main import main

# Every command below would otherwise start work (read data, build a model) before meeting the bad value;
# the other arguments are placeholders that parsing does not open.
EVAL = ['eval', '--model', 'resnet26_cifar', '--checkpoint', 'c.safetensors', '--data', 'd']
DETECT_EVAL = ['detect', 'eval', '--checkpoint', 'c', '--val-ann', 'a.json', '--val-images', 'i']
POSE_EVAL = ['pose', 'eval', '--checkpoint', 'c', '--val-ann', 'a.json', '--val-images', 'i']
DETECT_PREDICT = ['detect', 'predict', '--checkpoint', 'c', '--images', 'i']
POSE_PREDICT = ['pose', 'predict', '--checkpoint', 'c', '--images', 'i']


@pytest.mark.parametrize('argv, message', [
    (EVAL + ['--batch-size', '0'], 'argument --batch-size: must be at least 1, got 0'),
    (EVAL + ['--workers', '-2'], 'argument --workers: must be 0 or more, got -2'),
    (EVAL + ['--image-size', '0'], 'argument --image-size: must be at least 1, got 0'),
    (EVAL + ['--resize', '-3'], 'argument --resize: must be at least 1, got -3'),
    (EVAL + ['--batch-size', 'many'], "argument --batch-size: 'many' is not a whole number"),
    (DETECT_EVAL + ['--batch-size', '0'], 'argument --batch-size: must be at least 1'),
    (DETECT_EVAL + ['--workers', '-1'], 'argument --workers: must be 0 or more'),
    (DETECT_EVAL + ['--image-size', '-3'], 'argument --image-size: must be at least 1'),
    (DETECT_PREDICT + ['--output', 'o', '--image-size', '-2'], 'argument --image-size: must be at least 1'),
    (DETECT_PREDICT + ['--output', 'o', '--score-threshold', '1.5'],
     'argument --score-threshold: must be between 0 and 1, got 1.5'),
    (POSE_EVAL + ['--batch-size', '0'], 'argument --batch-size: must be at least 1'),
    (POSE_PREDICT + ['--output', 'o', '--kpt-thresh', '-0.1'], 'argument --kpt-thresh: must be between 0 and 1'),
    (POSE_PREDICT + ['--output', 'o', '--box-score-thresh', 'nan'], "argument --box-score-thresh: 'nan' is not a "
                                                                    'finite number'),
    (['pose', 'synth', '--output', 'o', '--num-train', '0'], 'argument --num-train: must be at least 1'),
    (['detect', 'shapes', 'o', '--num-val', '-1'], 'argument --num-val: must be at least 1'),
    (['cam', '--models', 'resnet26_cifar', '--image-size', '-5'], 'argument --image-size: must be at least 1'),
    (['cam', '--models', 'resnet26_cifar', '--alpha', '2'], 'argument --alpha: must be between 0 and 1'),
    (['features', '--model', 'resnet26_cifar', '--image-size', '-1'], 'argument --image-size: must be at least 1'),
    (['features', '--model', 'resnet26_cifar', '--top', '0'], 'argument --top: must be at least 1'),
    (['erf', '--output', 'o', '--samples', '0'], 'argument --samples: must be at least 1'),
    (['erf', '--output', 'o', '--batch-size', '0'], 'argument --batch-size: must be at least 1'),
    (['erf', '--output', 'o', '--input-size', '0'], 'argument --input-size: must be at least 1'),
    (['train', '--epochs', 'two'], "argument --epochs: 'two' is not a whole number"),
    (['train', '--batch-size', '0'], 'argument --batch-size: must be at least 1'),
    (['train', '--lr', '-1'], 'argument --lr: must be above 0, got -1'),
    (['train', '--lr', 'inf'], "argument --lr: 'inf' is not a finite number"),
    (['train', '--workers', '-1'], 'argument --workers: must be 0 or more'),
    (['train', '--accum-steps', '0'], 'argument --accum-steps: must be at least 1'),
    (['train', '--checkpoint-every', '-1'], 'argument --checkpoint-every: must be 0 or more'),
    (['train', '--weight-decay', '-1'], 'argument --weight-decay: must be 0 or more'),
    (['train', '--warmup-epochs', '-1'], 'argument --warmup-epochs: must be 0 or more'),
    (['train', '--aux-weight', '-0.5'], 'argument --aux-weight: must be 0 or more'),
    (['train', '--label-smoothing', '1.5'], 'argument --label-smoothing: must be between 0 and 1'),
    (['train', '--reprob', '2'], 'argument --reprob: must be between 0 and 1'),
    (['train', '--mixup', '-1'], 'argument --mixup: must be 0 or more'),
    (['train', '--cutmix', '-1'], 'argument --cutmix: must be 0 or more'),
    (['train', '--ema-decay', '1.5'], 'argument --ema-decay: must be between 0 and 1'),
    (['train', '--drop-path', '-0.1'], 'argument --drop-path: must be between 0 and 1'),
    (['train', '--grad-clip', '0'], 'argument --grad-clip: must be above 0'),
    (['train', '--bce-target-thresh', '3'], 'argument --bce-target-thresh: must be between 0 and 1'),
    (['train', '--image-size', '0'], 'argument --image-size: must be at least 1'),
    (['train', '--eval-image-size', '0'], 'argument --eval-image-size: must be at least 1'),
    (['train', '--eval-resize', '0'], 'argument --eval-resize: must be at least 1'),
    (['train', '--seed', '99999999999999999999'], 'argument --seed: must be between 0 and 4294967295'),
    (['erf', '--seeds', '0', '-1'], 'argument --seeds: must be between 0 and 4294967295, got -1'),
    (['cam', '--models', 'resnet26_cifar', '--seed', '2**40'], "argument --seed: '2**40' is not a whole number"),
    (['shards', 'in', 'out', '--seed', '4294967296'], 'argument --seed: must be between 0 and 4294967295'),
])
def test_impossible_numbers_are_refused_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err
    assert list(tmp_path.iterdir()) == []  # no run folder, no output folder, no report


@pytest.mark.parametrize('argv, message', [
    (EVAL + ['--output', '{tmp}'], 'argument --output: {tmp} is a folder; give a file name, e.g. {tmp}/result.json'),
    (EVAL + ['--output', '{tmp}/missing/r.json'], 'argument --output: folder {tmp}/missing does not exist; create '
                                                  'the folder first'),
    (EVAL + ['--output', '{tmp}/a_file/r.json'], 'argument --output: folder {tmp}/a_file is a file'),
    (DETECT_EVAL + ['--output', '{tmp}'], 'argument --output: {tmp} is a folder'),
    (POSE_EVAL + ['--output', '{tmp}/missing/m.json'], 'argument --output: folder {tmp}/missing does not exist'),
    (POSE_EVAL + ['--results', '{tmp}'], 'argument --results: {tmp} is a folder'),
    (['train', '--output', '{tmp}/a_file'], 'argument --output: {tmp}/a_file is a file, not a folder'),
    (['detect', 'train', '--output', '{tmp}/a_file'], 'argument --output: {tmp}/a_file is a file, not a folder'),
    (['pose', 'train', '--output', '{tmp}/a_file/run'], 'argument --output: {tmp}/a_file/run lies under '
                                                        '{tmp}/a_file, which is a file'),
    (DETECT_PREDICT + ['--output', '{tmp}/a_file'], 'argument --output: {tmp}/a_file is a file'),
    (POSE_PREDICT + ['--output', '{tmp}/a_file'], 'argument --output: {tmp}/a_file is a file'),
    (['pose', 'synth', '--output', '{tmp}/a_file'], 'argument --output: {tmp}/a_file is a file'),
    (['detect', 'shapes', '{tmp}/a_file'], 'argument output: {tmp}/a_file is a file'),
    (['erf', '--output', '{tmp}/a_file'], 'argument --output/-o: {tmp}/a_file is a file'),
    (['cam', '--models', 'resnet26_cifar', '--output', '{tmp}/a_file'], '{tmp}/a_file is a file'),
    (['features', '--model', 'resnet26_cifar', '--output', '{tmp}/a_file'], '{tmp}/a_file is a file'),
    (['shards', '{tmp}', '{tmp}/a_file'], 'argument OUT: {tmp}/a_file is a file'),
    (['benchmark', '--output', '{tmp}/missing/r.json'], 'argument --output: folder {tmp}/missing does not exist'),
    (EVAL + ['--output', '{tmp}/a_file'], 'argument --output: {tmp}/a_file exists and is not an earlier report'),
    (DETECT_EVAL + ['--output', '{tmp}/a_file'], '{tmp}/a_file exists and is not an earlier report of scnet'),
    (['plot', '{tmp}', '--output', '{tmp}/a_file'], 'argument --output/-o: {tmp}/a_file is a file, not a folder'),
])
def test_outputs_that_cannot_be_written_are_refused_before_any_work(argv, message, tmp_path, capsys):
    (tmp_path / 'a_file').write_text('keep me')
    argv = [a.replace('{tmp}', str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message.replace('{tmp}', str(tmp_path)) in err and 'Traceback' not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file'] and (tmp_path / 'a_file').read_text() == 'keep me'


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """A folder that takes no new file: read-only for a normal user, and (where the suite runs as root, whom
    permission bits do not stop) refusing new files as the kernel would, at the one call that creates them."""
    import errno
    import os
    import tempfile

    folder = tmp_path / 'locked'
    folder.mkdir()
    folder.chmod(0o555)
    create = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return create(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, 'mkstemp', mkstemp)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize('argv', [
    ['train', '--output', '{locked}/run'], ['train', '--output', '{locked}'], ['shards', '{tmp}', '{locked}/s'],
    ['plot', '{tmp}', '--output', '{locked}'], ['cam', '--models', 'resnet26_cifar', '--output', '{locked}'],
    ['features', '--model', 'resnet26_cifar', '--output', '{locked}/f'], ['erf', '--output', '{locked}'],
    ['benchmark', '--output', '{locked}/b.json'], EVAL + ['--output', '{locked}/r.json'],
    ['detect', 'train', '--output', '{locked}/run'], ['pose', 'synth', '--output', '{locked}/p'],
])
def test_outputs_in_a_folder_that_takes_no_file_are_refused_before_any_work(argv, locked, tmp_path, capsys):
    argv = [a.replace('{locked}', str(locked)).replace('{tmp}', str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f'cannot write into {locked} (Permission denied); choose a folder you can write to' in err
    assert 'Traceback' not in err and list(locked.iterdir()) == []


def test_an_os_error_during_a_command_is_one_line(monkeypatch, capsys):
    """What the checks before the work cannot foresee (a disk that fills up, a folder removed meanwhile): one line
    naming the file and the reason, exit status 2; an out-of-memory error names the flags that shrink the work."""
    import errno

    import scnet.cli.models as models

    def full(args):
        raise OSError(errno.ENOSPC, 'No space left on device', '/data/run/last.pt')

    monkeypatch.setattr(models, 'run', full)
    assert main(['models']) == 2
    err = capsys.readouterr().err
    assert err.strip() == ('scnet models: error: /data/run/last.pt: No space left on device; check the paths given '
                           'and that their folders can be written')

    def no_memory(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(models, 'run', no_memory)
    assert main(['models']) == 2
    assert 'error: out of memory (' in capsys.readouterr().err

    def bug(args):
        raise RuntimeError('an internal error')

    monkeypatch.setattr(models, 'run', bug)
    with pytest.raises(RuntimeError, match='an internal error'):  # a bug keeps its traceback
        main(['models'])


def test_an_evaluation_report_goes_where_asked(tmp_path, capsys):
    """The accepted cases: a new file in an existing folder, and (--workers 0, --alpha 0) the boundary values."""
    from scnet.cli.main import build_parser

    args = build_parser().parse_args(EVAL + ['--output', str(tmp_path / 'r.json'), '--workers', '0'])
    assert args.output == str(tmp_path / 'r.json') and args.workers == 0 and args.batch_size == 64
    (tmp_path / 'earlier.json').write_text('{"top1": 1.0}')  # an earlier report: replaced
    assert build_parser().parse_args(EVAL + ['--output', str(tmp_path / 'earlier.json')]).output == \
        str(tmp_path / 'earlier.json')
    args = build_parser().parse_args(['cam', '--models', 'resnet26_cifar', '--alpha', '0', '--output',
                                      str(tmp_path / 'new' / 'deeper')])
    assert args.alpha == 0.0 and args.output == str(tmp_path / 'new' / 'deeper')
    args = build_parser().parse_args(['train', '--label-smoothing', '0.1', '--lr', '1e-3', '--checkpoint-every', '0'])
    assert (args.label_smoothing, args.lr, args.checkpoint_every) == (0.1, 1e-3, 0)


def test_a_report_replaces_an_earlier_report_only(tmp_path, capsys):
    """A report file may replace an earlier report (a JSON object, or a list of COCO results), never an
    annotation file, a list of something else or someone's notes: the evaluation once replaced the
    annotations it was scored on."""
    import json

    from scnet.cli.main import build_parser

    files = {'instances_val.json': {'images': [], 'annotations': [], 'categories': []},
             'numbers.json': [1, 2, 3], 'earlier.json': {'task': 'bbox', 'metrics': {'AP': 1.0}},
             'results.json': [{'image_id': 1, 'category_id': 1, 'keypoints': [], 'score': 0.9}], 'empty.json': []}
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    for argv in (DETECT_EVAL + ['--output'], POSE_EVAL + ['--results'], EVAL + ['--output']):
        for name in ('instances_val.json', 'numbers.json'):
            with pytest.raises(SystemExit):
                main(argv + [str(tmp_path / name)])
            assert f'{tmp_path / name} exists and is not an earlier report of scnet' in capsys.readouterr().err
        for name in ('earlier.json', 'results.json', 'empty.json'):
            build_parser().parse_args(argv + [str(tmp_path / name)])
    assert {p.name: json.loads(p.read_text()) for p in tmp_path.iterdir()} == files


def test_evaluation_workers_default_to_at_most_the_cpu_count(monkeypatch):
    """More loader processes than cores only make PyTorch warn; an evaluation does not depend on them."""
    import os

    from scnet.cli.main import build_parser

    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    assert build_parser().parse_args(EVAL).workers == 2
    assert build_parser().parse_args(EVAL + ['--workers', '6']).workers == 6
    monkeypatch.setattr(os, 'cpu_count', lambda: 16)
    assert build_parser().parse_args(EVAL).workers == 4
    assert build_parser().parse_args(DETECT_EVAL).workers == 2


def test_a_report_never_replaces_a_run_file_or_an_input_of_the_command(tmp_path, capsys):
    """A run's config.json and a one-epoch metrics.jsonl are JSON objects, and were replaced as if earlier
    reports; pose eval --results replaced the --val-boxes file it read."""
    import json

    run = tmp_path / 'run'
    run.mkdir()
    (run / 'model.safetensors').write_bytes(b'weights')
    (run / 'config.json').write_text(json.dumps({'model': 'scnet26_cifar'}))
    (run / 'metrics.jsonl').write_text(json.dumps({'epoch': 1, 'val_top1': 50.0}) + '\n')
    for name in ('config.json', 'metrics.jsonl'):
        with pytest.raises(SystemExit):
            main(EVAL + ['--output', str(run / name)])
        assert f'{run / name} exists and is not an earlier report of scnet' in capsys.readouterr().err
    boxes = tmp_path / 'detections.json'
    boxes.write_text(json.dumps([{'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 4, 4], 'score': 0.9}]))
    for argv, said in ((['--boxes', str(boxes), '--results', str(boxes)], '--results'),
                       (['--boxes', str(boxes), '--output', str(boxes)], '--output'),
                       (['--results', str(tmp_path / 'r.json'), '--output', str(tmp_path / 'r.json')], '--results')):
        assert main(POSE_EVAL + argv) == 2
        err = capsys.readouterr().err
        assert f'{said} ' in err and 'would replace it; give' in err and len(err.strip().splitlines()) == 1, err
    ann = tmp_path / 'a.json'
    ann.write_text('[]')  # a list: an earlier report by its form, but the annotations of this evaluation
    assert main(['detect', 'eval', '--checkpoint', 'c', '--val-ann', str(ann), '--val-images', 'i', '--results',
                 str(ann)]) == 2
    assert 'is the file of --val-ann, which the command reads' in capsys.readouterr().err
    assert json.loads(boxes.read_text())[0]['score'] == 0.9 and ann.read_text() == '[]'
