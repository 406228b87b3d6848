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
    RunFolder(tmp_path / 'old', resume=False, final_files=()).close()  # the refused one released its lock
    assert sorted(p.name for p in (tmp_path / 'old').iterdir()) == ['model.safetensors', LOCK_NAME]
