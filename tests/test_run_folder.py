"""One run per output folder: the lock that process 0 of a run holds, tried with two real processes."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scnet.cli.main import main
from scnet.train.run_folder import LOCK_NAME, RunError, RunFolder

REPO = Path(__file__).resolve().parents[1]

# a run that has started (its folder locked, an epoch saved) and keeps going until it is killed
HOLDER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from scnet.train.run_folder import RunFolder
    from scnet.train.state import save_atomic
    run = RunFolder(Path(sys.argv[1]), resume=False)
    save_atomic({'epoch': 1, 'history': [{'epoch': 1}]}, run.path / 'last.pt')
    print('started', flush=True)
    time.sleep(300)
''')


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_one_does_not_block_resume(tmp_path, capsys):
    run = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'started'
        with pytest.raises(RunError, match=rf'^{run} is in use by another run \(process {holder.pid} on '):
            RunFolder(run, resume=True)
        # through the command line, as a user starting the same run twice sees it: one line, status 2
        for args in (['train', '--data', str(tmp_path), '--model', 'scnet26_cifar'], ['train', '--resume']):
            assert main([*args, '--output', str(run), '--quiet']) == 2
            err = capsys.readouterr().err.strip()
            assert err.splitlines() == [f'scnet train: error: {run} is in use by another run (process {holder.pid} '
                                        f'on {err.split(" on ")[1]}'] and 'choose another --output' in err
        assert sorted(p.name for p in run.iterdir()) == ['last.pt', LOCK_NAME]  # the refused runs wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert (run / LOCK_NAME).read_text().startswith(f'process {holder.pid} on ')  # left behind by the kill
    resumed = RunFolder(run, resume=True)  # the operating system released the dead process's lock
    assert resumed.start_epoch == 1 and (run / LOCK_NAME).read_text().startswith('process ')
    with pytest.raises(RunError, match='is in use by another run'):
        RunFolder(run, resume=True)  # held again, now by this process
    resumed.close()
    RunFolder(run, resume=True).close()


def test_a_run_refused_by_its_checks_leaves_no_folder_and_no_lock(tmp_path):
    with pytest.raises(RunError, match='nothing to resume'):
        RunFolder(tmp_path / 'new', resume=True)
    assert not (tmp_path / 'new').exists()
    run = RunFolder(tmp_path / 'new', resume=False)
    assert (tmp_path / 'new' / LOCK_NAME).exists()
    del run  # an error before anything was written: the folder this run created goes again
    assert not (tmp_path / 'new').exists()
    (tmp_path / 'old').mkdir()
    (tmp_path / 'old' / 'model.safetensors').write_bytes(b'')
    with pytest.raises(RunError, match='already holds a run'):
        RunFolder(tmp_path / 'old', resume=False)
    (tmp_path / 'old' / 'model.safetensors').unlink()
    RunFolder(tmp_path / 'old', resume=False).close()  # the refused one released its lock
    assert sorted(p.name for p in (tmp_path / 'old').iterdir()) == [LOCK_NAME]


def test_a_new_run_refuses_a_folder_of_other_files_and_takes_its_own_earlier_start(tmp_path, capsys):
    """A new run writes config.json and metrics.jsonl: a folder holding anything else (a project folder given as
    --output, someone's notes, a config.json that is not a run's) is refused before anything is written, the
    lock included; the records of an earlier start that stopped before its first checkpoint are the run's own."""
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('keep me')
    (mine / 'metrics.jsonl').write_text('{"my": 1}\n')
    with pytest.raises(RunError, match=r'mine holds files that are not a run.s \(metrics.jsonl \(not a run.s\), '
                                       r'notes.txt\), which a new run '
                                       r'would write among or replace .*choose a new or empty --output'):
        RunFolder(mine, resume=False)
    assert sorted(p.name for p in mine.iterdir()) == ['metrics.jsonl', 'notes.txt']
    assert (mine / 'metrics.jsonl').read_text() == '{"my": 1}\n'
    settings = tmp_path / 'settings'
    settings.mkdir()
    for text in ('["not", "a", "run"]', '{"name": "my-app", "version": "1.0"}'):  # JSON, but not a run's settings
        (settings / 'config.json').write_text(text)
        with pytest.raises(RunError, match=r"config.json \(not a run's\)"):
            RunFolder(settings, resume=False)
    (settings / 'config.json').unlink()
    for text in ('my notes\n', '{"my": 1}\n'):  # a metrics.jsonl of someone else's
        (settings / 'metrics.jsonl').write_text(text)
        with pytest.raises(RunError, match=r"metrics.jsonl \(not a run's\)"):
            RunFolder(settings, resume=False)
    (settings / 'metrics.jsonl').unlink()
    (settings / 'tensorboard').mkdir()
    (settings / 'tensorboard' / 'my_run.txt').write_text('x')
    with pytest.raises(RunError, match=r"tensorboard \(not a run's\)"):
        RunFolder(settings, resume=False)
    assert (settings / 'tensorboard' / 'my_run.txt').read_text() == 'x'
    assert main(['train', '--data', str(tmp_path), '--output', str(mine), '--quiet']) == 2
    assert 'holds files that are not a run' in capsys.readouterr().err
    earlier = tmp_path / 'earlier'  # a start that stopped before its first checkpoint
    (earlier / 'tensorboard').mkdir(parents=True)
    (earlier / 'tensorboard' / 'events.out.tfevents.1.host.1.0').write_bytes(b'')
    (earlier / 'config.json').write_text('{"model": "scnet26_cifar", "epochs": 2, "batch_size": 8, "seed": 0}')
    (earlier / 'metrics.jsonl').write_text('{"epoch": 1, "train_loss": 1.0}\n')
    (earlier / LOCK_NAME).write_text('process 1 on host\n')
    (earlier / '.last.pt.x1y2.partial').write_bytes(b'')
    RunFolder(earlier, resume=False).close()


@pytest.mark.parametrize('mmap', [False, True])
def test_a_damaged_training_state_gives_no_unsafe_advice(tmp_path, mmap):
    """torch's own message for a file it cannot read with weights_only suggests unpickling it without limits:
    for a damaged last.pt that is wrong, and for a foreign one unsafe; the error says what the file is not."""
    from scnet.errors import CheckpointError
    from scnet.train.state import load_state

    damaged = tmp_path / 'last.pt'
    damaged.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError) as e:
        load_state(damaged, mmap=mmap)
    assert 'cannot read the training state (not a file of plain tensors that torch.load can read safely)' in \
        str(e.value) and 'weights_only' not in str(e.value)


def test_a_file_given_as_the_run_folder_is_refused(tmp_path):
    from scnet.train.run_folder import RunError, RunFolder

    notes = tmp_path / 'notes.txt'
    notes.write_text('keep me')
    for resume in (False, True):
        with pytest.raises(RunError, match='notes.txt is a file, not a run folder'):
            RunFolder(notes, resume=resume)
    assert notes.read_text() == 'keep me'


def test_a_run_state_is_read_whole_once_where_a_network_is_built_from_it(tmp_path, monkeypatch):
    """A last.pt also holds the optimiser's state (and a run's EMA weights): reading the run's settings maps the
    file (torch.load(mmap=True)) instead of reading it, a legacy-format file is still read, and building the
    network of a last.pt reads the file whole once, not three times."""
    import torch

    import scnet
    from scnet.train.classifier_checkpoint import read_classifier_metadata
    from scnet.train.state import load_state

    kwargs = {'channels': [8, 16, 32, 64], 'num_classes': 3}
    net = scnet.create_model('scnet26_cifar', **kwargs)
    state = {'model': net.state_dict(), 'optimizer': {'state': {0: {'momentum_buffer': torch.ones(1000)}}},
             'config': {'model': 'scnet26_cifar', 'model_kwargs': {'channels': [8, 16, 32, 64]}, 'classes':
                        ['a', 'b', 'c']}, 'epoch': 1, 'history': []}
    torch.save(state, tmp_path / 'last.pt')
    torch.save(state, tmp_path / 'legacy.pt', _use_new_zipfile_serialization=False)
    for name in ('last.pt', 'legacy.pt'):
        loaded = load_state(tmp_path / name, mmap=True)
        assert loaded['config'] == state['config'] and torch.equal(loaded['optimizer']['state'][0]['momentum_buffer'],
                                                                   torch.ones(1000))

    reads = []
    real_load = torch.load

    def load(f, *args, **kw):
        reads.append('mapped' if kw.get('mmap') else 'whole')
        return real_load(f, *args, **kw)

    monkeypatch.setattr(torch, 'load', load)
    assert read_classifier_metadata(tmp_path / 'last.pt').model == 'scnet26_cifar'
    assert reads == ['mapped']
    reads.clear()
    built = scnet.create_model('scnet26_cifar', checkpoint=str(tmp_path / 'last.pt'))
    assert reads.count('whole') == 1, reads
    for a, b in zip(built.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
