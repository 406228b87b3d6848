"""benchmarks/gpu.sh's CPU dry run: every section runs at tiny sizes and lands in the JSON report, so the GPU
script cannot rot between the sessions that have a GPU."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_benchmark import _benchmarks_module
from tests.test_gate_op import interpreter_limitation

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ('compile_warmup', 'train_amp', 'ddp', 'gate_op', 'models_eager', 'models_compiled')
MODELS = {'resnet50', 'scnet50', "scnet50 authors' structure"}


# dependencies of scnet that the lent GPU machines' image lacks: the script must not need them
NOT_ON_THE_GPU_IMAGE = ('webdataset', 'braceexpand', 'pycocotools', 'datasets')


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    absent = tmp_path / 'absent'
    for name in NOT_ON_THE_GPU_IMAGE:
        (absent / name).mkdir(parents=True)
        (absent / name / '__init__.py').write_text(f'raise ImportError("{name}: not on the GPU image")\n')
    path = os.pathsep.join(filter(None, [str(absent), os.environ.get('PYTHONPATH')]))
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1', PYTHONPATH=path)
    proc = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu.sh'), '--dry-run', '--output-dir', str(tmp_path),
                           '--log-dir', str(tmp_path / 'logs')],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # the sections in their own processes (Triton's interpreter, torchrun) left their logs where asked
    assert {'gate_op.log', 'ddp.log'} <= {p.name for p in (tmp_path / 'logs').iterdir()}
    report = json.loads((tmp_path / 'gpu_dry_run.json').read_text())
    assert report['dry_run'] is True and not (tmp_path / 'gpu.json').exists()
    assert {'cpu', 'versions', 'torch_threads'} <= set(report['machine'])
    assert 'triton' in report['machine']['versions']
    sections = report['sections']
    assert set(sections) == set(SECTIONS)
    # the gate section runs the kernels in Triton's interpreter: where that cannot run them (an old Triton), the
    # other sections are checked and the test is then skipped with the reason
    gate_not_run = sections['gate_op']['status'] != 'ok' and interpreter_limitation()
    for name in SECTIONS:
        if name == 'gate_op' and gate_not_run:
            continue
        assert sections[name]['status'] == 'ok', (name, sections[name].get('error'), sections[name].get('traceback'))
    if not gate_not_run:
        check_gate_section(sections['gate_op']['result'])

    # batch-1 inference replayed from CUDA graphs comes after the eager runs; on the CPU it says why it cannot
    graphs = [r for r in sections['models_eager']['result']['runs'] if r['variant'] == 'cuda_graph']
    assert [(r['mode'], r['batch_size']) for r in graphs] == [('infer', 1)] and 'CUDA' in graphs[0]['skipped']
    for name in ('models_eager', 'models_compiled'):
        runs = [r for r in sections[name]['result']['runs'] if r.get('variant') != 'cuda_graph']
        assert {(r['mode'], r['batch_size']) for r in runs} == {('infer', 1), ('infer', 2), ('train', 2)}
        for run in runs:
            assert 'error' not in run and 'skipped' not in run, (name, run)
            assert {r['model'] for r in run['results']} == MODELS
            if name == 'models_compiled':  # resnet50 and scnet50 interleaved, then the authors' structure alone
                assert [r['model'] for r in run['results'] if r.get('timed_separately')] == [
                    "scnet50 authors' structure"]
            assert all(r['images_per_s'] > 0 and r['speed_ratio'] > 0 for r in run['results'])

    warm = sections['compile_warmup']['result']['compile_s']
    assert warm and all(times for times in warm.values())
    train = sections['train_amp']['result']
    assert train['exit_status'] == 0 and '--amp' in train['command'] and train['metrics'][-1]['epoch'] == 1
    ddp = sections['ddp']['result']
    assert ddp['backend'] == 'gloo' and ddp['world_size'] == 1 and ddp['all_reduce_ok'] and ddp['finite']

    summary = report['summary']['scnet50_vs_resnet50']
    assert {(e['variant'], e['mode'], e['batch_size']) for e in summary} == {
        (v, m, b) for v in ('eager', 'compiled') for m, b in (('infer', 1), ('infer', 2), ('train', 2))}
    assert all('meets_target' in e for e in summary if e['batch_size'] == 1)
    if gate_not_run:
        pytest.skip(f'the gate_op section was not checked: {gate_not_run}')


def check_gate_section(gate):
    assert gate['shapes'] and all(s['layers'] >= 1 for s in gate['shapes'])
    combos = {(r['dtype'], r['layout']) for r in gate['rows']}
    assert combos == {(d, l) for d in ('float32', 'bfloat16') for l in ('channels_last', 'nchw')}
    for row in gate['rows']:
        assert set(row['forward_us']) == {'fused', 'eager', 'layer_eager'}
        tol = 1e-5 if row['dtype'] == 'float32' else 0.1
        assert row['max_abs_error']['fused'] < tol and row['max_abs_error']['eager'] < tol
        assert max(row['max_abs_grad_error']['fused'].values()) < 10 * tol
    if gate['triton_importable']:
        assert gate['kernels'].startswith('triton interpreter')
    in_graphs = gate['in_graphs']  # BN3 and the gate compiled with the operator and with the plain operations
    assert 'errors' not in in_graphs and 'skipped' not in in_graphs, in_graphs
    for kind in ('forward_us', 'forward_backward_us'):
        assert set(in_graphs[kind]) == {'operator', 'plain_operations'} and all(in_graphs[kind].values())
        assert in_graphs[kind.replace('_us', '_operator_speedup')] > 0


def test_summary_names_the_cuda_graph_replays_apart_from_the_eager_runs():
    """The batch-1 replays from CUDA graphs (run only on a GPU) are summarised as their own variant, against the
    same target as eager batch 1; a skipped run (the CPU) leaves no entry."""
    gpu = _benchmarks_module('gpu')

    def run(variant, scnet, skipped=None):
        if skipped:
            return {'mode': 'infer', 'batch_size': 1, 'variant': variant, 'skipped': skipped}
        return {'mode': 'infer', 'batch_size': 1, 'variant': variant, 'results': [
            {'model': 'resnet50', 'images_per_s': 100.0, 'speed_ratio': 1.0},
            {'model': 'scnet50', 'images_per_s': 100.0 * scnet, 'speed_ratio': scnet}]}

    sections = {'models_eager': {'status': 'ok', 'result': {'runs': [run('eager', 0.6), run('cuda_graph', 0.95)]}}}
    entries = gpu._summary(sections)['scnet50_vs_resnet50']
    assert [(e['variant'], e['scnet50_speed_ratio'], e['target'], e['meets_target']) for e in entries] == [
        ('eager', 0.6, 0.9, False), ('cuda_graph', 0.95, 0.9, True)]
    sections['models_eager']['result']['runs'][1] = run('cuda_graph', 0, skipped='CUDA graphs need a CUDA GPU')
    assert [e['variant'] for e in gpu._summary(sections)['scnet50_vs_resnet50']] == ['eager']


def test_layer_eager_column_times_the_layer_without_the_fused_gate(monkeypatch):
    """On a GPU ``calibrated_product`` takes the Triton kernels for every tensor; the report's ``layer_eager``
    column must time the layer's ATen path instead."""
    from scnet.layers import calibration

    gpu = _benchmarks_module('gpu')

    def fused(*args):
        raise AssertionError('the fused gate ran')

    monkeypatch.setattr(calibration, 'gate_op_available', lambda tensor: True)
    monkeypatch.setattr(calibration, 'gated_product', fused)
    f, x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 4, 2, 2)
    with pytest.raises(AssertionError, match='fused gate ran'):
        calibration.calibrated_product(f, x, ctx, True, 'nearest')
    with gpu._layer_without_fused_gate():
        y = calibration.calibrated_product(f, x, ctx, True, 'nearest')
    up = torch.nn.functional.interpolate(ctx, size=(8, 8), mode='nearest')
    torch.testing.assert_close(y, f * torch.sigmoid(x + up))


def test_terminated_run_ends_its_workers(tmp_path):
    """A time limit from outside (SIGTERM to the driver) ends the workers too, though each runs in its own
    session, and leaves their logs."""
    logs = tmp_path / 'logs'
    env = dict(os.environ, OMP_NUM_THREADS='1', TMPDIR=str(tmp_path))  # the workers' configs lie under tmp_path
    driver = subprocess.Popen([sys.executable, str(REPO / 'benchmarks' / 'gpu.py'), '--dry-run', '--sections',
                               'gate_op', '--output-dir', str(tmp_path), '--log-dir', str(logs)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        give_up = time.time() + 60
        while not (logs / 'gate_op.log').exists() and driver.poll() is None and time.time() < give_up:
            time.sleep(0.1)
        assert driver.poll() is None, driver.stderr.read()[-2000:]
        assert (logs / 'gate_op.log').exists()
        time.sleep(0.5)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if driver.poll() is None:
            driver.kill()

    def workers():
        found = []
        for cmdline in Path('/proc').glob('[0-9]*/cmdline'):
            try:
                text = cmdline.read_bytes().replace(b'\0', b' ').decode(errors='replace')
            except OSError:
                continue
            if str(tmp_path) in text and '--worker' in text:
                found.append(text)
        return found

    assert workers() == []
    assert (logs / 'gate_op.log').exists()
