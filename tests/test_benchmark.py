"""``scnet benchmark`` and ``scnet.bench``: interleaved timing, memory, GEMM rates, reports, CLI flags.

Small networks at 32 px keep every run to a few seconds; speed *figures* are not asserted here (they belong
to benchmarks/ on a quiet machine), only that the measurements are the right ones and are reported right.
"""
import json
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from scnet import SCConv2d, create_model
from scnet.bench.cases import BenchmarkError, Contender, Settings, build_step
from scnet.bench.machine import core_generation, cpu_description, cpu_identity, machine_facts
from scnet.bench.memory import cpu_step_peak
from scnet.bench.rates import conv1x1_gflops, gemm_rates, matmul_gflops
from scnet.bench.runner import run_benchmark
from scnet.bench.timing import round_ratios, summarize, time_interleaved
from scnet.cli.main import main
from scnet.errors import UnknownModelError

SMALL = dict(input_size=(32, 32), seed=0)


# --- timing ---------------------------------------------------------------------------------------------

def test_rounds_rotate_the_order_and_drop_the_warmup():
    calls, syncs = [], []
    steps = {name: (lambda name=name: calls.append(name)) for name in 'abc'}
    ticks = []
    times = time_interleaved(steps, warmup=2, repeats=4, sync=lambda: syncs.append(1), progress=ticks.append)
    assert {k: len(v) for k, v in times.items()} == {'a': 4, 'b': 4, 'c': 4}
    assert len(calls) == len(syncs) == sum(ticks) == 18
    rounds = [calls[i:i + 3] for i in range(0, 18, 3)]
    assert rounds[:4] == [list('abc'), list('bca'), list('cab'), list('abc')]
    assert all(t >= 0 for v in times.values() for t in v)


def test_round_ratios_pair_the_rounds():
    # round 3 ran slow for both (a busy machine): its ratio is unchanged where each model's own spread widens
    baseline, other = [1.0, 1.0, 3.0, 1.0, 1.0], [2.0, 1.0, 6.0, 0.5, 1.0]
    q = round_ratios(baseline, other)
    assert (q['q1'], q['median'], q['q3']) == pytest.approx((0.5, 1.0, 1.0))
    assert round_ratios([2.0], [1.0]) == {'q1': 2.0, 'median': 2.0, 'q3': 2.0}
    with pytest.raises(ValueError, match='same number of rounds'):
        round_ratios([1.0, 1.0], [1.0])


def test_time_interleaved_rejects_bad_counts():
    with pytest.raises(ValueError, match='repeats'):
        time_interleaved({'a': lambda: None}, repeats=0)
    with pytest.raises(ValueError, match='warmup'):
        time_interleaved({'a': lambda: None}, warmup=-1)


def test_summarize_median_spread_and_throughput():
    s = summarize([0.4, 0.1, 0.2, 0.3, 0.2], items_per_call=8)
    assert s['median_ms'] == pytest.approx(200.0)
    assert s['min_ms'] == pytest.approx(100.0) and s['max_ms'] == pytest.approx(400.0)
    assert s['items_per_s'] == pytest.approx(40.0)
    assert s['spread_pct'] == pytest.approx((0.3 - 0.2) / 0.2 * 100)   # inclusive quartiles: 0.2 and 0.3
    assert s['repeats'] == 5
    with pytest.raises(ValueError):
        summarize([])


# --- machine and rates ----------------------------------------------------------------------------------

def test_machine_facts_are_json_and_name_the_cpu_and_threads():
    facts = machine_facts('cpu')
    json.dumps(facts)
    assert facts['torch_threads'] == torch.get_num_threads()
    assert facts['cpu'] and facts['usable_cpus'] >= 1
    assert facts['versions']['torch'] == torch.__version__.split('+')[0] or facts['versions']['torch']
    assert 'gpu' not in facts


def _cpuinfo(vendor, family, model, flags, name='AMD EPYC'):
    block = (f'processor\t: {{i}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n'
             f'model name\t: {name}\nstepping\t: 1\nflags\t\t: {flags}\n')
    # two processors: the first block's facts are read, the second's ignored
    return block.format(i=0) + '\n' + block.format(i=1).replace(f'model\t\t: {model}', 'model\t\t: 999') + '\n'


@pytest.mark.parametrize('vendor, family, model, generation', [
    ('AuthenticAMD', 23, 49, 'Zen 2'),            # EPYC 7002 (Rome)
    ('AuthenticAMD', 25, 1, 'Zen 3'),             # EPYC 7003 (Milan)
    ('AuthenticAMD', 25, 33, 'Zen 3'),            # Ryzen 5000 (Vermeer)
    ('AuthenticAMD', 25, 17, 'Zen 4'),            # EPYC 9004 (Genoa)
    ('AuthenticAMD', 25, 97, 'Zen 4'),            # Ryzen 7000 (Raphael)
    ('AuthenticAMD', 26, 2, 'Zen 5'),             # EPYC 9005 (Turin)
    ('AuthenticAMD', 26, 0x50, None),             # not in the table: unknown, not guessed
    ('GenuineIntel', 6, 143, 'Sapphire Rapids'),
    ('GenuineIntel', 6, 85, 'Skylake-SP / Cascade Lake'),
    ('GenuineIntel', 6, 1, None),
])
def test_cpu_identity_names_the_core_generation_from_family_and_model(vendor, family, model, generation):
    flags = 'fpu sse avx avx2 fma avx512f avx512_bf16 amx_tile clzero'
    ident = cpu_identity(_cpuinfo(vendor, family, model, flags))
    assert ident == {'vendor': vendor, 'family': family, 'model': model, 'stepping': 1, 'generation': generation,
                     'flags': ['avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_tile']}
    assert core_generation(vendor, family, model) == generation


def test_cpu_identity_reads_leading_zeros_and_hexadecimal_numbers():
    ident = cpu_identity(_cpuinfo('AuthenticAMD', '025', '0x11', ''))
    assert (ident['family'], ident['model'], ident['generation']) == (25, 17, 'Zen 4')
    assert cpu_identity(_cpuinfo('AuthenticAMD', 'unknown', '17', ''))['family'] is None


def test_cpu_identity_without_cpuinfo_and_on_arm():
    assert cpu_identity('') == {'vendor': None, 'family': None, 'model': None, 'stepping': None,
                                'generation': None, 'flags': []}
    arm = 'processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n'
    assert cpu_identity(arm)['flags'] == ['asimd', 'sve', 'bf16', 'i8mm']
    assert cpu_identity(arm)['generation'] is None


def test_cpu_description_names_the_generation_where_recorded():
    ident = cpu_identity(_cpuinfo('AuthenticAMD', 25, 17, 'avx2 avx512f'))
    new = {'cpu': 'AMD EPYC', 'cpu_capability': 'AVX512', 'cpu_identity': ident}
    assert cpu_description(new) == 'AMD EPYC (Zen 4, family 25 model 17), AVX512'
    unknown = {**new, 'cpu_identity': cpu_identity(_cpuinfo('GenuineIntel', 6, 1, ''))}
    assert cpu_description(unknown) == 'AMD EPYC (family 6 model 1), AVX512'
    assert cpu_description({'cpu': 'Test CPU', 'cpu_capability': 'AVX2'}) == 'Test CPU, AVX2'  # an older file
    here = machine_facts('cpu')
    assert here['cpu_identity'] == cpu_identity()
    assert cpu_description().startswith(here['cpu']) and cpu_description().endswith(here['cpu_capability'])


def test_gemm_rates_are_positive_and_finite():
    assert 0 < matmul_gflops(size=128, repeats=2) < 1e6
    assert 0 < conv1x1_gflops(channels=32, spatial=8, repeats=2) < 1e6
    rates = gemm_rates()
    assert rates['dtype'] == 'float32' and rates['matmul_gflops'] > 0 and rates['conv1x1_gflops'] > 0


def test_matmul_rate_stops_growing_once_a_call_takes_long_enough(monkeypatch):
    """A dtype without fast kernels (bfloat16 on an AVX2 CPU: seconds for one 2048 matmul) is timed at a small size."""
    import scnet.bench.rates as rates

    sizes, matmul = [], torch.matmul

    def slow_matmul(a, b):
        sizes.append(a.shape[0])
        time.sleep(0.06 if a.shape[0] >= 512 else 0)  # a slow kernel from 512 up
        return matmul(a, b)

    monkeypatch.setattr(torch, 'matmul', slow_matmul)
    assert rates.matmul_gflops(repeats=2) > 0
    assert max(sizes) == 512 and sizes[-3:] == [512, 512, 512]  # probed 256 and 512, timed at 512
    sizes.clear()
    monkeypatch.setattr(rates, '_ENOUGH_SECONDS', float('inf'))  # no size is slow enough: the full one
    rates.matmul_gflops(repeats=1)
    assert sizes[-2:] == [2048, 2048] and sizes.count(2048) == 2


# --- cases ----------------------------------------------------------------------------------------------

def test_settings_refuse_what_cannot_run():
    with pytest.raises(BenchmarkError, match='mode'):
        Settings(mode='serve')
    with pytest.raises(BenchmarkError, match='batch size'):
        Settings(batch_size=0)
    with pytest.raises(BenchmarkError, match='device'):
        Settings(device='tpu')
    if not torch.cuda.is_available():
        with pytest.raises(BenchmarkError, match='no CUDA GPU'):
            Settings(device='cuda')
    with pytest.raises(BenchmarkError, match='variant'):
        Contender('x', variant='tensorrt')


def test_same_contender_same_weights_and_a_real_training_step():
    settings = Settings(mode='train', batch_size=2, **SMALL)
    a = build_step(Contender.zoo('resnet26_cifar'), settings)
    b = build_step(Contender.zoo('resnet26_cifar'), settings)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    before = a.model.fc.weight.detach().clone()
    a()
    assert not torch.equal(before, a.model.fc.weight)      # the optimizer stepped
    assert a.model.training


def test_unknown_models_are_named():
    with pytest.raises(UnknownModelError, match='scnet5O'):
        build_step(Contender.zoo('scnet5O'), Settings(**SMALL))


# --- memory ---------------------------------------------------------------------------------------------

def test_cpu_peak_grows_with_the_batch():
    small = cpu_step_peak(Contender.zoo('resnet26_cifar'), Settings(mode='train', batch_size=2, **SMALL))
    large = cpu_step_peak(Contender.zoo('resnet26_cifar'), Settings(mode='train', batch_size=64, **SMALL))
    assert small['method'] == 'rss high-water mark'
    assert 0 <= small['peak_mb'] < large['peak_mb']
    # 64 images of resnet26_cifar's activations, saved for backward, are several MiB at least
    assert large['peak_mb'] - small['peak_mb'] > 5


def test_memory_failure_names_the_contender():
    with pytest.raises(BenchmarkError, match='ghost.*memory measurement failed'):
        cpu_step_peak(Contender('ghost', kwargs={'name': 'nope'}), Settings(**SMALL))


# --- runner ---------------------------------------------------------------------------------------------

def test_report_rows_ratios_and_rates():
    report = run_benchmark([Contender.zoo('resnet26_cifar'), Contender.zoo('scnet26_cifar')],
                           Settings(**SMALL), batch_sizes=[1, 2], warmup=1, repeats=3, memory=False)
    json.dumps(report, allow_nan=False)
    assert report['baseline'] == 'resnet26_cifar'
    assert [(r['model'], r['batch_size']) for r in report['results']] == [
        ('resnet26_cifar', 1), ('scnet26_cifar', 1), ('resnet26_cifar', 2), ('scnet26_cifar', 2)]
    for r in report['results']:
        assert r['repeats'] == 3 and r['images_per_s'] > 0
        assert r['gflops_per_s'] == pytest.approx(2 * r['forward_gmacs'] * r['images_per_s'])
        assert r['fraction_of_matmul'] == pytest.approx(r['gflops_per_s'] / report['gemm']['matmul_gflops'])
    base, sc = report['results'][2], report['results'][3]
    assert base['speed_ratio'] == 1.0
    assert sc['speed_ratio'] == pytest.approx(sc['images_per_s'] / base['images_per_s'])
    # the ratio round by round, from the per-round times each row keeps (none for the baseline itself)
    assert len(base['round_ms']) == len(sc['round_ms']) == 3 and 'round_ratio' not in base
    assert sc['round_ratio'] == round_ratios(base['round_ms'], sc['round_ms'])
    assert base['median_ms'] == pytest.approx(sorted(base['round_ms'])[1])
    # forward MACs as `scnet profile` counts them: scnet26_cifar at 32 px
    from scnet import create_model
    from scnet.complexity import count_complexity
    assert sc['forward_gmacs'] * 1e9 == pytest.approx(count_complexity(create_model('scnet26_cifar'), 32)[1])


def test_report_with_memory_has_memory_ratios():
    report = run_benchmark([Contender.zoo('resnet26_cifar'), Contender.zoo('scnet26_cifar')],
                           Settings(mode='train', batch_size=4, **SMALL), warmup=0, repeats=1, rates=False)
    base, sc = report['results']
    assert 'gemm' not in report and 'gflops_per_s' not in base
    assert base['memory_ratio'] == 1.0
    assert sc['memory_ratio'] == pytest.approx(sc['memory']['peak_mb'] / base['memory']['peak_mb'])


def test_training_at_batch_one_on_one_pixel_maps_gets_a_way_out():
    # scnet26_cifar at 32 px pools its last stage to 1x1: batch norm cannot train on one value per channel
    with pytest.raises(BenchmarkError, match='batch-size 2'):
        run_benchmark([Contender.zoo('scnet26_cifar')], Settings(mode='train', batch_size=1, **SMALL),
                      warmup=0, repeats=1, memory=False, rates=False)


def test_runner_refuses_empty_and_duplicate_contenders():
    with pytest.raises(BenchmarkError, match='at least one'):
        run_benchmark([], Settings(**SMALL))
    with pytest.raises(BenchmarkError, match='own label'):
        run_benchmark([Contender.zoo('resnet26_cifar')] * 2, Settings(**SMALL))


# --- CLI ------------------------------------------------------------------------------------------------

def _cli(tmp_path, *extra):
    out = tmp_path / 'report.json'
    code = main(['benchmark', '--models', 'resnet26_cifar', 'scnet26_cifar', '--input-size', '32', '--warmup', '1',
                 '--repeats', '2', '--no-memory', '--quiet', '--output', str(out), *extra])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_cli_writes_the_report_and_prints_a_table(tmp_path, capsys):
    code, report = _cli(tmp_path, '--batch-size', '2', '--seed', '3', '--threads', '1')
    assert code == 0
    assert report['settings']['batch_sizes'] == [2] and report['settings']['seed'] == 3
    assert report['machine']['torch_threads'] == 1
    printed = capsys.readouterr().out
    assert 'vs resnet26_cifar' in printed and 'scnet26_cifar' in printed and 'GEMM rate' in printed
    q = report['results'][1]['round_ratio']
    assert 'per round' in printed and f"{q['q1']:.2f}-{q['q3']:.2f}x" in printed
    assert printed.startswith(cpu_description(report['machine']) + ', 1 thread, torch')   # the CPU it ran on
    assert report['machine']['cpu_identity'] == cpu_identity()


def test_cli_default_batch_sizes_follow_the_mode(tmp_path):
    _, infer = _cli(tmp_path)
    assert infer['settings']['batch_sizes'] == [1, 8]
    assert infer['settings']['warmup'] == 1 and infer['settings']['repeats'] == 2


def test_cli_train_mode_amp_and_channels_last(tmp_path, capsys):
    code, report = _cli(tmp_path, '--mode', 'train', '--batch-size', '2', '--amp', '--channels-last',
                        '--format', 'markdown')
    assert code == 0
    s = report['settings']
    assert s['mode'] == 'train' and s['amp'] and s['channels_last'] and report['gemm']['dtype'] == 'bfloat16'
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith('|---') for line in lines) == 1
    header = lines[[line.startswith('|---') for line in lines].index(True) - 1]
    assert 'images/s' in header and 'GFLOP/s' not in header   # no inference-only columns in a training table


def test_cli_json_format_prints_the_report(tmp_path, capsys):
    code, report = _cli(tmp_path, '--batch-size', '1', '--format', 'json')
    assert code == 0
    assert json.loads(capsys.readouterr().out)['results'] == report['results']


def test_cli_variants_deployed_and_onnxruntime_agree_with_eager(tmp_path):
    code, report = _cli(tmp_path, '--batch-size', '2', '--variants', 'eager', 'deployed', 'onnxruntime')
    assert code == 0
    rows = {r['model']: r for r in report['results']}
    assert set(rows) == {f'{m}{v}' for m in ('resnet26_cifar', 'scnet26_cifar')
                         for v in ('', ' [deployed]', ' [onnxruntime]')}
    assert 'max_abs_diff_vs_eager' not in rows['scnet26_cifar']
    for m in ('resnet26_cifar', 'scnet26_cifar'):
        for v in (' [deployed]', ' [onnxruntime]'):
            assert rows[m + v]['variant'] == v.strip(' []')
            assert rows[m + v]['max_abs_diff_vs_eager'] < 1e-3
            assert rows[m + v]['images_per_s'] > 0


def test_cli_compile(tmp_path):
    out = tmp_path / 'c.json'
    assert main(['benchmark', '--models', 'resnet26_cifar', '--input-size', '32', '--batch-size', '2', '--warmup',
                 '1', '--repeats', '1', '--no-memory', '--quiet', '--compile', '--output', str(out)]) == 0
    assert json.loads(out.read_text())['settings']['compile'] is True


@pytest.mark.parametrize('args, message', [
    (['--models', 'scnet5O'], "unknown model 'scnet5O'"),
    (['--batch-size', '0'], '--batch-size must be positive'),
    (['--threads', '0'], '--threads must be at least 1'),
    (['--repeats', '0'], '--repeats'),
    (['--mode', 'train', '--variants', 'deployed'], 'eager models only'),
    (['--mode', 'train', '--variants', 'cuda_graph'], 'eager models only'),
    (['--variants', 'cuda_graph', '--compile'], 'drop --compile'),
    (['--input-size', '0'], 'must be positive'),
    (['--models', 'resnet26_cifar', 'resnet26_cifar'], '--models names resnet26_cifar more than once; give each'),
] + ([] if torch.cuda.is_available() else [(['--device', 'cuda'], 'no CUDA GPU'),
                                            (['--variants', 'cuda_graph'], 'it needs --device cuda')]))
def test_cli_errors_are_one_line(args, message, capsys):
    assert main(['benchmark', '--models', 'resnet26_cifar', '--input-size', '32', '--quiet', '--no-memory',
                 *args]) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1


def test_cuda_graph_variant_warms_up_outside_the_capture_and_replays_one_output(monkeypatch):
    """``scnet.bench.cuda_graph.capture_inference`` on a pretend GPU: the warm-up calls run on a side stream
    before the capture (cuDNN's search and Triton's compilations cannot run inside one), one call runs inside
    it, its memory is the allocator's peak during the capture, and a replay runs the graph, not the call,
    returning the captured output."""
    import contextlib

    from scnet.bench import cuda_graph

    events, state = [], {'stream': 'main', 'capturing': False, 'allocated': 100 * 2 ** 20, 'peak': 0}

    class FakeStream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            events.append(('wait', self.name, other.name))

    class FakeGraph:
        def replay(self):
            events.append(('replay',))

    @contextlib.contextmanager
    def on_stream(s):
        previous, state['stream'] = state['stream'], s.name
        try:
            yield
        finally:
            state['stream'] = previous

    @contextlib.contextmanager
    def capturing(graph):
        assert isinstance(graph, FakeGraph)
        state['capturing'] = True
        try:
            yield
        finally:
            state['capturing'] = False

    def call():
        events.append(('call', state['stream'], state['capturing']))
        state['peak'] = max(state['peak'], state['allocated'] + 3 * 2 ** 20)   # the call's intermediates
        return torch.full((1,), float(len(events)))

    main_stream = FakeStream('main')
    for name, value in {'current_stream': lambda device=None: main_stream,
                        'Stream': lambda device=None: FakeStream('side'), 'stream': on_stream, 'graph': capturing,
                        'CUDAGraph': FakeGraph, 'synchronize': lambda device=None: events.append(('sync',)),
                        'reset_peak_memory_stats': lambda device=None: state.update(peak=state['allocated']),
                        'memory_allocated': lambda device=None: state['allocated'],
                        'max_memory_allocated': lambda device=None: state['peak']}.items():
        monkeypatch.setattr(torch.cuda, name, value)

    replay, memory = cuda_graph.capture_inference(call, torch.device('cuda'), warmup=2)
    assert events == [('wait', 'side', 'main'), ('call', 'side', False), ('call', 'side', False),
                      ('wait', 'main', 'side'), ('sync',), ('call', 'main', True)]
    assert memory['peak_mb'] == 3.0 and memory['baseline_mb'] == 100.0 and 'capture' in memory['method']
    first, second = replay(), replay()
    assert first is second and events[-2:] == [('replay',), ('replay',)]   # the graph replays; the call does not


def test_a_step_captured_as_a_graph_reports_the_memory_of_its_capture(monkeypatch):
    """Replays allocate nothing, so a graph's row takes the peak measured while it was captured
    (``Step.captured_memory``) instead of timing more calls for memory."""
    import scnet.bench.runner as runner

    captured = {'peak_mb': 1.5, 'method': 'cuda allocator, during the capture (replays allocate nothing)'}

    def build(contender, settings):
        step = build_step(contender, settings)
        step.captured_memory = captured
        return step

    def no_measurement(*args, **kwargs):
        raise AssertionError('memory measured again')

    monkeypatch.setattr(runner, 'build_step', build)
    monkeypatch.setattr(runner, 'cpu_step_peak', no_measurement)
    report = run_benchmark([Contender('a', kwargs={'name': 'resnet26_cifar'})], Settings(input_size=(32, 32)),
                           warmup=0, repeats=1, rates=False)
    assert report['results'][0]['memory'] == captured


# --- benchmarks/: the other implementations ------------------------------------------------------------

def _benchmarks_module(name):
    import importlib
    import os
    import sys
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks')
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def test_other_implementations_compute_the_same_function():
    diffs = _benchmarks_module('other_implementations').output_differences(size=128, batch=2)
    assert diffs['logit_scale'] > 1
    assert diffs['literal_eqs_2_5'] < 1e-4 * diffs['logit_scale']
    assert diffs['authors_structure'] < 1e-4 * diffs['logit_scale']
    assert 'mmpose' not in diffs   # only when asked (its numbers: benchmarks/results/other_implementations.json)


FAKE_MMPOSE_SCNET = """
import torch
from torch import nn


class SCNet(nn.Module):
    def __init__(self, depth, out_indices=(0, 1, 2, 3)):
        super().__init__()
        assert depth in (50, 101) and out_indices == (3,)
        self.body = nn.Conv2d(3, 2048, 3, stride=32, padding=1)

    def forward(self, x):
        return (self.body(x),)
"""


def _hide_mmpose(monkeypatch, impl, contenders_dir):
    """As on a machine without mmpose: no .contenders on the path and no mmpose module imported."""
    monkeypatch.setattr(impl, 'CONTENDERS_DIR', str(contenders_dir))
    monkeypatch.setattr(sys, 'path', [p for p in sys.path if not p.rstrip('/').endswith('.contenders')])
    for name in [m for m in sys.modules if m == 'mmpose' or m.startswith('mmpose.')]:
        monkeypatch.delitem(sys.modules, name)


def test_mmpose_contender_missing_is_named_with_its_install_command(tmp_path, monkeypatch):
    impl = _benchmarks_module('implementations')
    other = _benchmarks_module('other_implementations')
    _hide_mmpose(monkeypatch, impl, tmp_path / 'empty')
    assert not impl.mmpose_available()
    with pytest.raises(impl.MissingContender, match='bash benchmarks/install_contenders.sh'):
        impl.mmpose_scnet('scnet50')
    assert other.MMPOSE not in other.contenders(False)
    assert [c.label for c in other.contenders(True)] == [c.label for c in other.CONTENDERS]


def test_mmpose_contender_imports_its_backbone_around_the_package_inits(tmp_path, monkeypatch):
    """mmpose's package __init__ files import its datasets (numpy-1 wheels): the contender must not run them."""
    impl = _benchmarks_module('implementations')
    _hide_mmpose(monkeypatch, impl, tmp_path / '.contenders')
    backbones = tmp_path / '.contenders' / 'mmpose' / 'models' / 'backbones'
    backbones.mkdir(parents=True)
    for folder in (backbones, backbones.parent, backbones.parent.parent):
        (folder / '__init__.py').write_text('raise ImportError("a package __init__ ran")\n')
    (backbones / 'scnet.py').write_text(FAKE_MMPOSE_SCNET)
    try:
        assert impl.mmpose_available()
        model = impl.mmpose_scnet('scnet50')
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
        with pytest.raises(ValueError, match='scnet50_v1d'):
            impl.mmpose_scnet('scnet50_v1d')
    finally:
        for name in [m for m in sys.modules if m == 'mmpose' or m.startswith('mmpose.')]:
            del sys.modules[name]


def test_authors_state_is_renamed_for_mmpose():
    impl = _benchmarks_module('implementations')
    from tests.authors_reference import random_authors_state_dict
    state = random_authors_state_dict('scnet50')
    renamed = impl.authors_to_mmpose_state(state)
    assert len(renamed) == len(state)
    # mmpose 1.3.2's SCNet-50 names, as its module tree spells them
    for authors, mmpose in (('layer1.0.conv1_a.weight', 'backbone.layer1.0.conv1.weight'),
                            ('layer3.5.bn1_a.running_var', 'backbone.layer3.5.bn1.running_var'),
                            ('layer4.2.conv1_b.weight', 'backbone.layer4.2.conv2.weight'),
                            ('layer2.0.bn1_b.bias', 'backbone.layer2.0.bn2.bias'),
                            ('layer1.0.k1.1.weight', 'backbone.layer1.0.k1.1.weight'),
                            ('layer1.0.scconv.k2.1.weight', 'backbone.layer1.0.scconv.k2.1.weight'),
                            ('layer2.0.downsample.1.running_mean', 'backbone.layer2.0.downsample.1.running_mean'),
                            ('layer1.2.conv3.weight', 'backbone.layer1.2.conv3.weight'),
                            ('bn1.weight', 'backbone.bn1.weight'), ('fc.bias', 'fc.bias')):
        assert renamed[mmpose] is state[authors]
    assert not [k for k in renamed if any(f'.{n}.' in k for n in ('conv1_a', 'bn1_a', 'conv1_b', 'bn1_b'))]


def test_literal_twin_trains_like_scnet():
    impl = _benchmarks_module('implementations')
    torch.manual_seed(0)
    ours = impl.create_model('scnet26_cifar', memory_efficient=False).double()
    literal = impl.literal_scnet('scnet26_cifar').double()
    literal.load_state_dict(impl.ours_to_literal_state(ours))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    ours(x).square().mean().backward()
    literal(x).square().mean().backward()
    twins = dict(literal.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(twins[impl.literal_key(name)].grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_layer_profile_times_every_scnet50_shape_and_writes_json(tmp_path, capsys, monkeypatch):
    profile = _benchmarks_module('layer_profile')
    # the shape list is SCNet-50's: 16 bottlenecks, and the MAC counts are the layers' own
    assert sum(count for *_, count in profile.SCNET50_SHAPES) == 16
    layer = SCConv2d(64, 64, stride=2)
    counted = {}
    for name in ('k1', 'k2', 'k3', 'k4'):
        getattr(layer, name).register_forward_hook(
            lambda m, i, o, name=name: counted.__setitem__(name, o[0].numel() * m.weight[0].numel()))
    layer.eval()(torch.randn(1, 64, 16, 16))
    assert profile.macs(64, 16, 2)['scconv'] == sum(counted.values())
    assert profile.macs(64, 16, 2)['conv'] == 64 * 64 * 9 * 8 * 8

    out = tmp_path / 'layer_profile.json'
    small = [(16, 8, 1, 2), (16, 8, 2, 1)]
    rows = profile.profile_shapes('train', 2, 1, shapes=small)
    assert [r['stride'] for r in rows] == [1, 2]
    assert set(rows[0]['ms']) == {'conv3x3', 'scconv', 'scconv_plain_autograd'}
    totals = profile.network_totals(rows)
    assert totals['scconv'] == pytest.approx(2 * rows[0]['ms']['scconv'] + rows[1]['ms']['scconv'], abs=0.02)

    monkeypatch.setattr(profile, 'SCNET50_SHAPES', small)  # the command on tiny shapes
    threads = torch.get_num_threads()
    try:
        assert profile.main(['--threads', '1', '--rounds', '1', '--infer-batch', '2', '--train-batch', '2',
                             '--tried', '--output', str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report['machine']['cpu'] and report['machine']['cpu_capability']
    assert [(g['mode'], g['batch']) for g in report['groups']] == [('infer', 2), ('train', 2)]
    infer, train = report['groups']
    # the designs left out are timed in inference only; the grouped K1|K3 only where K3 keeps the stride
    assert set(infer['rows'][0]['ms']) == {'conv3x3', 'scconv', 'scconv_plain_autograd', *profile.TRIED}
    assert 'grouped_k1_k3' not in infer['rows'][1]['ms'] and set(train['rows'][0]['ms']) == set(rows[0]['ms'])
    assert infer['network_ms']['grouped_k1_k3'] == pytest.approx(
        2 * infer['rows'][0]['ms']['grouped_k1_k3'] + infer['rows'][1]['ms']['scconv'], abs=0.02)
    printed = capsys.readouterr().out
    assert 'all conv2 layers' in printed and 'tried: grouped_k1_k4' in printed
    table = _benchmarks_module('tables').render_file(out, 'layer_profile.json')
    headers = [line for line in table.splitlines() if line.startswith('| width |')]
    assert len(headers) == 2 and 'onednn_direct' in headers[0] and 'onednn_direct' not in headers[1]
    assert table.count('| all conv2 layers |') == 2 and 'No table' not in table


def test_tried_designs_compute_the_layer(monkeypatch):
    profile = _benchmarks_module('layer_profile')
    for stride in (1, 2):
        layer = SCConv2d(16, 16, stride=stride).eval()
        x = torch.randn(2, 16, 12, 12)
        with torch.no_grad():
            expected = layer(x)
            for name, design in profile.TRIED.items():
                if name != 'grouped_k1_k3' or stride == 1:
                    torch.testing.assert_close(design(layer, x), expected, rtol=1e-5, atol=1e-5, msg=name)
        # a design that computed something else is caught before it is timed
        monkeypatch.setitem(profile.TRIED, 'grouped_k1_k4', lambda m, x: profile.grouped_k1_k4(m, x) * 1.01)
        with pytest.raises(AssertionError):
            profile._tried_fns(layer, x, stride)
        monkeypatch.undo()
    with pytest.raises(SystemExit):
        profile.main(['--rounds', '0'])


def test_small_networks_compares_both_training_paths_at_the_given_widths(tmp_path, capsys):
    small = _benchmarks_module('small_networks')
    labels = [c.label for c in small.contenders([8, 8, 16, 16])]
    assert labels == ['resnet26_cifar', 'scnet26_cifar', 'scnet26_cifar plain autograd']
    out = tmp_path / 'small.json'
    threads = torch.get_num_threads()
    try:
        assert small.main(['--models', 'resnet26', 'scnet26', '--channels', '4', '4', '8', '8', '--batch-size', '2',
                           '--input-size', '32',
                           '--threads', '1', '--warmup', '1', '--repeats', '1', '--no-memory', '--channels-last',
                           '--output', str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report['settings']['mode'] == 'train' and report['settings']['input_size'] == [32, 32]
    assert report['settings']['channels_last'] is True
    assert [r['model'] for r in report['results']] == ['resnet26', 'scnet26', 'scnet26 plain autograd']
    assert 'scnet26 plain autograd' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        small.main(['--channels', '3', '4', '8', '8'])
    with pytest.raises(SystemExit):
        small.main(['--models', 'resnet26', 'scnet5O'])
    assert "unknown model 'scnet5O'" in capsys.readouterr().err


def test_op_profile_sorts_every_operator_into_a_kind():
    op_profile = _benchmarks_module('op_profile')
    expected = {'aten::_slow_conv2d_forward': 'convolution, forward, small-map path',
                'aten::mkldnn_convolution': 'convolution, forward',
                'aten::convolution_backward': 'convolution, backward',
                'aten::native_batch_norm_backward': 'batch norm', 'aten::avg_pool2d_backward': 'pooling',
                'aten::copy_': 'copies and concatenation', 'aten::cat': 'copies and concatenation',
                'aten::sigmoid_': 'element-wise', 'aten::threshold_backward': 'element-wise',
                'aten::addmm': 'classifier and loss', 'aten::empty': 'framework',
                'CalibratedHalfBackward': 'framework', 'aten::convolution': 'framework'}
    assert {name: op_profile.kind_of(name) for name in expected} == expected
    assert op_profile.ORDER[-1] == 'framework' and len(set(op_profile.ORDER)) == len(op_profile.ORDER)


def test_op_profile_writes_each_models_time_by_kind(tmp_path, capsys):
    op_profile = _benchmarks_module('op_profile')
    out = tmp_path / 'op_profile.json'
    threads = torch.get_num_threads()
    try:
        assert op_profile.main(['--models', 'resnet26_cifar', 'scnet26_cifar', '--input-size', '32',
                                '--channels', '8', '16', '16', '32',
                                '--infer-batch', '1', '--train-batch', '2', '--infer-steps', '2',
                                '--train-steps', '1', '--warmup', '1', '--threads', '1', '--tried',
                                '--output', str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report['machine']['cpu'] and report['machine']['cpu_capability']
    assert report['settings']['channels'] == [8, 16, 16, 32]
    widths = sum(p.numel() for p in create_model('scnet26_cifar', channels=(8, 16, 16, 32)).parameters())
    assert report['groups'][0]['rows'][1]['parameters'] == widths
    assert [(g['mode'], g['batch']) for g in report['groups']] == [('infer', 1), ('train', 2)]
    infer, train = report['groups']
    # --tried adds the oneDNN-routed twin to inference only
    assert [r['model'] for r in infer['rows']] == ['resnet26_cifar', 'scnet26_cifar', 'scnet26_cifar onednn_direct']
    assert [r['model'] for r in train['rows']] == ['resnet26_cifar', 'scnet26_cifar']
    for group in report['groups']:
        base, sc = group['rows'][:2]
        for row in group['rows']:
            assert row['wall_ms'] > 0 and set(row['kinds_ms']) == set(op_profile.ORDER)
            assert sum(row['kinds_ms'].values()) == pytest.approx(row['profiled_ms'], abs=0.05)
            assert row['top_ops'] and row['top_ops'][0]['ms'] >= row['top_ops'][-1]['ms']
        for kind in op_profile.ORDER:
            assert group['excess_ms']['scnet26_cifar'][kind] == pytest.approx(
                sc['kinds_ms'][kind] - base['kinds_ms'][kind], abs=0.002)
    # SC-Conv's pooled context maps are small: at batch 1 PyTorch sends them to its im2col kernel, unless the
    # tried design routes them to oneDNN (other small maps at 32 px, the 1x1 convolutions', still land there)
    small = 'convolution, forward, small-map path'
    assert infer['rows'][1]['kinds_ms'][small] > 0
    sc_calls, tried_calls = (infer['rows'][i]['kinds_calls'] for i in (1, 2))
    assert tried_calls[small] < sc_calls[small]
    assert tried_calls['convolution, forward'] >= sc_calls['convolution, forward'] + 8  # 8 SC layers, 8 K2s
    assert infer['rows'][1]['kinds_ms']['convolution, backward'] == 0
    assert train['rows'][1]['kinds_ms']['convolution, backward'] > 0
    # SC-Conv calls more operators than the plain 3x3 convolution it replaces (split, pooling, K2..K4, two norms,
    # the gate, the concatenation), and the idle time between them is counted
    for group in report['groups']:
        base, sc = group['rows'][:2]
        assert sc['operators'] >= base['operators'] + 8 * 8
        assert all(row['between_ops_ms'] >= 0 for row in group['rows'])
    printed = capsys.readouterr().out
    assert 'small-map path' in printed and 'between operators' in printed
    table = _benchmarks_module('tables').render_file(out, 'op_profile.json')
    assert table.count('| between operators |') == 2 and table.count('| top-level operators |') == 2
    assert table.count('| kind | resnet26_cifar | scnet26_cifar | scnet26_cifar onednn_direct |') == 1
    assert table.count('| kind | resnet26_cifar | scnet26_cifar | scnet26_cifar - resnet26_cifar |') == 1
    assert '| convolution, forward, small-map path |' in table and 'No table' not in table
    for bad in (['--train-steps', '0'], ['--infer-batch', '0'], ['--infer-batch', '--train-batch'],
                ['--channels', '8', '16', '16', '33'], ['--models', 'scnet50', 'scnet50']):
        with pytest.raises(SystemExit):
            op_profile.main(bad)
    with pytest.raises(SystemExit):
        op_profile.main(['--models', 'resnet50', 'scnet5O'])
    assert "unknown model 'scnet5O'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        op_profile.main(['--models', 'scnet26_cifar', 'resnet26_cifar', '--channels', '8', '8', '8', '8', '--tried'])
    assert 'resnet26_cifar, has no SC-Conv' in capsys.readouterr().err
    with pytest.raises(ValueError, match='no SCConv2d'):
        op_profile.build('resnet26_cifar onednn_direct', size=32)


def test_op_profile_channels_last_keeps_the_small_map_path(tmp_path):
    # what docs/performance.md says: a channels-last network's small batch-1 maps still skip oneDNN
    op_profile = _benchmarks_module('op_profile')
    out = tmp_path / 'op_profile_cl.json'
    threads = torch.get_num_threads()
    try:
        assert op_profile.main(['--models', 'scnet26_cifar', '--input-size', '32', '--channels', '8', '16', '16', '32',
                                '--infer-batch', '1', '--train-batch', '--infer-steps', '1', '--warmup', '0',
                                '--threads', '1', '--channels-last', '--output', str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report['settings']['channels_last'] is True and report['groups'][0]['excess_ms'] == {}
    assert report['groups'][0]['rows'][0]['kinds_calls']['convolution, forward, small-map path'] >= 8  # the K2s


def test_op_profile_counts_the_idle_time_between_top_level_operators():
    op_profile = _benchmarks_module('op_profile')

    def event(name, start, end, parent=None, thread=1):
        return SimpleNamespace(name=name, cpu_parent=parent, thread=thread,
                               time_range=SimpleNamespace(start=start, end=end))

    outer = event('aten::conv2d', 100, 400)
    engine = event('autograd::engine::evaluate_function: ReluBackward0', 1150, 1300)
    events = [event('aten::relu_', 1000, 1100), outer, event('aten::mkldnn_convolution', 110, 390, parent=outer),
              event('aten::batch_norm', 700, 900), event('ProfilerStep', 0, 5000), engine,
              event('aten::threshold_backward', 1200, 1250, parent=engine),  # the backward's: counts
              event('aten::empty', 1210, 1220, parent=event('aten::threshold_backward', 1200, 1250, parent=engine)),
              event('aten::add', 450, 460, thread=2)]  # another thread's operator does not count
    # main thread: conv2d 100-400, batch_norm 700-900, relu_ 1000-1100, threshold_backward 1200-1250:
    # idle 300 + 100 + 100 us over 2 steps
    assert op_profile.between_operators(events, steps=2) == {'operators': 2.0, 'between_ops_ms': 0.25}
    assert op_profile.between_operators([], steps=1) == {'operators': 0.0, 'between_ops_ms': 0.0}
