"""Runs that survive preemption: killed or sent SIGTERM in the middle of an epoch, resumed, and ending with the
weights of an uninterrupted run (CPU, bit for bit)."""
import os
import signal
import socket
import time

import pytest
import torch
from safetensors.torch import load_file

from scnet.cli.main import main
from scnet.train.preemption import PREEMPTED_EXIT_STATUS, resume_requested
from scnet.train.sampling import ShardedBatchSampler
from scnet.train.run_folder import LOCK_NAME
from tests.test_train import _run_cli_signalling_itself, data, read_metrics, recipe, train_args  # noqa: F401 (fixtures)

# 36 training images in batches of 4: 9 optimiser steps an epoch; stochastic depth and mixup draw from the
# generators a mid-epoch state must restore
ARGS = ('--epochs', '2', '--seed', '7', '--batch-size', '4', '--drop-path', '0.1', '--mixup', '0.2')


_READ = {}  # last.pt -> (its stat when read, the state read): polling reads a file again only once it changed


def _state(run):
    path = run / 'last.pt'
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if _READ.get(path, (None,))[0] != stamp:
            _READ[path] = (stamp, torch.load(path, weights_only=True))
        return _READ[path][1]
    except Exception:  # not written yet
        return None


def _wait_for(condition, what, timeout=120):
    """Poll every 5 ms: the runs take tens of milliseconds a step, and the poller shares their two cores."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f'timed out waiting for {what}')


@pytest.mark.slow
def test_killed_or_terminated_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(data, recipe, tmp_path):
    full, killed, stopped = tmp_path / 'full', tmp_path / 'killed', tmp_path / 'stopped'
    # SIGKILL right after the state saved at step 3 of epoch 2; SIGTERM as step 5 of epoch 2 is taken
    victim = _run_cli_signalling_itself(train_args(data, recipe, killed, *ARGS, '--checkpoint-every', '1'),
                                        signal.SIGKILL, epoch=2, step=3, tmp=tmp_path)
    terminated = _run_cli_signalling_itself(train_args(data, recipe, stopped, *ARGS), signal.SIGTERM,
                                            epoch=2, step=5, tmp=tmp_path)
    assert victim.wait() == -signal.SIGKILL, victim.stderr.read()
    saved = _state(killed)
    assert (saved['epoch'], saved['step']) == (1, 3)
    assert [r['epoch'] for r in read_metrics(killed)] == [1]
    # the terminated run saved its state and ended with status 143
    assert terminated.wait() == PREEMPTED_EXIT_STATUS, terminated.stderr.read()
    err = terminated.stderr.read().strip()
    assert err.startswith('scnet train: stopped by SIGTERM') and f'--output {stopped} --resume' in err, err
    assert len(err.splitlines()) == 1
    # at the step taken when the signal came
    saved = _state(stopped)
    assert (saved['epoch'], saved.get('step')) == (1, 5)
    assert not (stopped / 'model.safetensors').exists()

    # the uninterrupted run in this process (one thread, like the others)
    assert main(train_args(data, recipe, full, *ARGS)) == 0
    for run in (killed, stopped):
        assert main(['train', '--output', str(run), '--resume', '--quiet']) == 0
        a, b = load_file(full / 'model.safetensors'), load_file(run / 'model.safetensors')
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run
        # the resumed epoch's loss counts the steps trained before the kill too
        for key in ('train_loss', 'lr'):
            assert [r[key] for r in read_metrics(run)] == [r[key] for r in read_metrics(full)], key
        assert [r['train_images'] for r in read_metrics(run)] == [36, 36]


def test_checkpoint_every_is_checked_and_the_sampler_skips_the_steps_done(data, recipe, tmp_path, capsys):
    with pytest.raises(SystemExit):  # refused while parsing (scnet/cli/arg_types.py); the recipe checks files
        main(train_args(data, recipe, tmp_path / 'run', '--checkpoint-every', '-1'))
    assert 'argument --checkpoint-every: must be 0 or more, got -1' in capsys.readouterr().err
    recipe.write_text(recipe.read_text() + '\ncheckpoint_every: -1\n')
    assert main(train_args(data, recipe, tmp_path / 'run')) == 2
    assert 'checkpoint_every must be >= 0' in capsys.readouterr().err
    sampler = ShardedBatchSampler(40, 8, accum_steps=2, seed=1)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.set_epoch(3, start_step=2)
    assert list(sampler) == whole[4:] and len(sampler) == 6
    with pytest.raises(ValueError, match='outside the epoch'):
        sampler.set_epoch(3, start_step=6)


def test_a_worker_restarted_by_torchrun_resumes_by_itself(tmp_path, monkeypatch):
    (tmp_path / 'last.pt').write_bytes(b'')
    monkeypatch.delenv('TORCHELASTIC_RESTART_COUNT', raising=False)
    assert not resume_requested(tmp_path, False) and resume_requested(tmp_path, True)
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    assert resume_requested(tmp_path, False) and not resume_requested(tmp_path / 'new', False)


def kill_run_mid_epoch(run, *, launchers=()):
    """SIGKILL the process holding ``run`` (process 0) right after it saved a state in the middle of an epoch,
    any epoch: the widest window, for runs whose epochs last a fraction of a second while the poller shares two
    cores with them. Stops early if one of the ``launchers`` that run it has ended."""
    def due():
        assert all(p.poll() is None for p in launchers), 'a launcher ended before the kill'
        return (s := _state(run)) and s.get('step')

    _wait_for(due, 'a state saved in the middle of an epoch')
    os.kill(int((run / LOCK_NAME).read_text().split()[1]), signal.SIGKILL)


def free_port() -> int:
    """A TCP port nobody listens on now (for a rendezvous: tests running side by side must not share one)."""
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def test_sigterm_to_the_job_while_an_epoch_is_evaluated_saves_its_training(data, recipe, tmp_path, monkeypatch,
                                                                            capsys):
    """A scheduler's SIGTERM reaches every process of the job, the loader workers too. The validation loader's
    workers died of it and the run stopped with a DataLoader error, its epoch unsaved; now they outlive it, the
    evaluation is cut short, and the epoch's training is saved (the resumed run evaluates it again)."""
    import scnet.data.folders as folders
    import scnet.train.trainer as trainer
    from torch.utils.data import get_worker_info

    armed = []  # set once epoch 1 is trained: the validation workers forked after it signal the job
    get, train_one_epoch = folders.CheckedImageFolder.__getitem__, trainer.train_one_epoch

    def get_then_signal(self, index):
        if armed and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGTERM)   # this worker
            os.kill(os.getppid(), signal.SIGTERM)  # the training process (this test's)
        return get(self, index)

    monkeypatch.setattr(folders.CheckedImageFolder, '__getitem__', get_then_signal)
    monkeypatch.setattr(trainer, 'train_one_epoch', lambda *a, **k: (train_one_epoch(*a, **k), armed.append(1))[0])
    run = tmp_path / 'run'
    assert main(train_args(data, recipe, run, '--epochs', '1', '--workers', '2')) == PREEMPTED_EXIT_STATUS
    err = capsys.readouterr().err.strip()
    assert err.startswith('scnet train: stopped by SIGTERM while evaluating epoch 1') and len(err.splitlines()) == 1
    saved = torch.load(run / 'last.pt', weights_only=True)
    assert (saved['epoch'], saved['step']) == (0, 4)  # 36 images in batches of 8: all 4 steps trained
    assert saved['epoch_seconds'] > 0  # the epoch's training time, for its row after the resume
    monkeypatch.undo()
    assert main(['train', '--output', str(run), '--resume', '--quiet']) == 0
    rows = read_metrics(run)
    assert [(r['epoch'], r['train_images'], r['val_images']) for r in rows] == [(1, 32, 12)]
    # the epoch's own training time and speed, not those of the resume's 0 steps
    assert rows[0]['epoch_time_s'] >= saved['epoch_seconds']
    assert rows[0]['images_per_sec'] == pytest.approx(32 / rows[0]['epoch_time_s'])


def test_a_run_stopped_by_a_damaged_image_can_stop_its_loader_workers(data, recipe, tmp_path, capsys, monkeypatch):
    """The workers ignored SIGTERM from every sender: after a worker's error PyTorch could not stop them, nor
    could multiprocessing at exit, so `scnet train --workers 2` printed the damaged image's line and then
    never exited. Now a SIGTERM from the main process ends them (one from elsewhere still does not)."""
    import multiprocessing
    import tempfile

    # the workers (forked: they inherit it) make multiprocessing's pymp-* folders for passing batches, which a
    # worker ended by SIGTERM leaves: under this test's tmp folder, not in /tmp for good
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))

    (data / 'train' / 'bar' / '000.png').write_bytes(b'\x89PNG damaged')
    assert main(train_args(data, recipe, tmp_path / 'run', '--epochs', '1', '--workers', '2')) == 2
    assert '000.png: unreadable image' in capsys.readouterr().err
    alive = []
    for worker in multiprocessing.active_children():  # what multiprocessing does at exit
        worker.terminate()
        worker.join(timeout=10)
        alive.append(worker.is_alive())
        worker.kill()  # (before the fix: so that this test process can exit)
    assert not any(alive)


def test_a_state_saved_mid_epoch_is_not_continued_on_data_of_another_epoch_length(data, recipe, tmp_path,
                                                                                   monkeypatch, capsys):
    """Resumed on fewer images (--data-moved, or images removed from the folder), the saved step lay past the new
    epoch's end: a ValueError traceback from the sampler. Now one line, before anything is written."""
    import scnet.train.preemption as preemption
    from tests.test_train import write_folder

    real = preemption.StepCheckpoints.after_step

    def stop_at_step_5(self):
        real(self)
        if self.step == 5:
            raise KeyboardInterrupt  # the process dies right after a state was saved mid-epoch

    monkeypatch.setattr(preemption.StepCheckpoints, 'after_step', stop_at_step_5)
    run = tmp_path / 'run'
    assert main(train_args(data, recipe, run, '--epochs', '1', '--batch-size', '4', '--checkpoint-every', '1')) == 130
    monkeypatch.undo()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    smaller = write_folder(tmp_path / 'smaller', per_class=(4, 4))  # 12 images: 3 steps an epoch
    capsys.readouterr()
    assert main(['train', '--output', str(run), '--resume', '--data', str(smaller), '--data-moved', '--quiet']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'last.pt was saved at step 5 of epoch 1, an epoch of 9 steps, and the ' \
        'data now gives 3 steps an epoch' in err and f'--init {run / "last.pt"}' in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_loader_worker_ignores_sigterm_from_others_and_ends_on_its_main_process():
    """Under forkserver (Python 3.14's default on Linux) a worker's parent is the fork server, not the process
    that stops it: main_process_sigterm_only gives the worker the main process's id, taken where the loader is
    built. Here this test's process is the main one, and a process between it and the worker the fork server."""
    from scnet.train.preemption import main_process_sigterm_only

    init = main_process_sigterm_only()
    ready, told = os.pipe(), os.pipe()
    server = os.fork()
    if server == 0:  # the fork server
        status = 3
        try:
            worker = os.fork()
            if worker == 0:
                try:
                    init(0)
                    os.write(ready[1], b'x')
                    time.sleep(20)
                finally:
                    os._exit(1)
            os.read(ready[0], 1)
            os.kill(worker, signal.SIGTERM)  # from another process than the main one: ignored
            time.sleep(0.3)
            if os.waitpid(worker, os.WNOHANG)[0] == 0:
                os.write(told[1], str(worker).encode())
                _, code = os.waitpid(worker, 0)
                status = 0 if os.WIFEXITED(code) and os.WEXITSTATUS(code) == 0 else 4
        finally:
            os._exit(status)
    os.close(told[1])  # (so that the read below ends if the fork server has nothing to tell)
    worker = int(os.read(told[0], 32) or 0)
    if worker:
        os.kill(worker, signal.SIGTERM)  # from the main process: the worker ends
    _, code = os.waitpid(server, 0)
    assert os.WEXITSTATUS(code) == 0, {3: 'the worker died of a SIGTERM from another process',
                                       4: 'the worker outlived the main process\'s SIGTERM'}.get(os.WEXITSTATUS(code))
