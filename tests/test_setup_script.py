"""scripts/pip_sources.py: the package sources pip is configured with, as uv's flags (scripts/setup.sh)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'pip_sources.py'


def _module():
    spec = importlib.util.spec_from_file_location('pip_sources', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_environment_wins_over_install_over_global_and_lists_split():
    sources = _module()
    listing = ("global.cert='/etc/ssl/certs/ca.crt'\n"
               "global.extra-index-url='file:///opt/a file:///opt/b'\n"
               "global.index-url='https://mirror.example/simple'\n"
               "install.index-url='https://install.example/simple'\n"
               ":env:.find-links='/opt/wheels'\n"
               "global.find-links='/elsewhere'\n"
               "global.constraint='/etc/xdg/pip/constraints.txt'\n"
               "global.timeout='60'\n"
               "not a setting\n")
    config = sources.parse_config_list(listing)
    assert config == {'extra-index-url': 'file:///opt/a file:///opt/b', 'index-url': 'https://install.example/simple',
                      'find-links': '/opt/wheels', 'constraint': '/etc/xdg/pip/constraints.txt'}
    assert sources.uv_arguments(config) == [
        '--index-url', 'https://install.example/simple', '--extra-index-url', 'file:///opt/a',
        '--extra-index-url', 'file:///opt/b', '--find-links', '/opt/wheels',
        '--constraint', '/etc/xdg/pip/constraints.txt']
    assert sources.uv_arguments({}) == []


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_')}
    env.update(PIP_CONFIG_FILE=os.devnull, **env_extra)   # no configuration file, only what the test sets
    return subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)


def test_the_script_reads_pip_own_view_of_the_environment():
    done = _run({'PIP_INDEX_URL': 'https://mirror.example/simple', 'PIP_FIND_LINKS': '/opt/w1 /opt/w2'})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['--index-url', 'https://mirror.example/simple',
                                        '--find-links', '/opt/w1', '--find-links', '/opt/w2']
    # nothing configured: no output at all, so setup.sh passes no empty argument to uv
    nothing = _run({})
    assert nothing.returncode == 0 and nothing.stdout == ''
