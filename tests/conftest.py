"""Shared fixtures: a token cache directory shared by the whole session, and a CLI runner whose
subprocesses share one JAX compilation cache."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A model small enough that a subprocess run is dominated by start-up, not training.
TINY = ['--config.data.tokenizer=byte', '--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
        '--config.data.seq_len=32', '--config.train.batch_size=4', '--config.train.log_every=5',
        '--config.train.warmup_steps=5', '--config.eval.every_steps=10',
        '--config.eval.max_batches=2', '--config.checkpoint.every_steps=10',
        '--config.sample.num_samples=1', '--config.sample.max_new_tokens=8']


# The slowest files first (seconds of the default suite on two workers, 2026-12-02), so that the
# two workers, which take whole files in this order, do not end with one running a long file alone.
_SLOW_FIRST = ('test_cli',  # 191
               'test_model',  # 220 before its forwards were jitted
               'test_decode',  # 88
               'test_archs',  # 75
               'test_sweep',  # 71
               'test_positional',  # 109 before the jitted forwards
               'test_faults', 'test_sharding', 'test_kv_retrieval',  # 57 to 48
               'test_attention_patterns', 'test_scaling_fits')  # 39, 22


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.stem
    return _SLOW_FIRST.index(name) if name in _SLOW_FIRST else len(_SLOW_FIRST)
  items.sort(key=rank)  # stable: each file's tests keep their order


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('cache'))


# JAX's persistent compilation cache (it reads JAX_COMPILATION_CACHE_DIR), shared by every CLI
# subprocess of the session: the tests start launch.train on the same tiny model many times, and a
# hit loads the compiled train, eval, init and sampling programs instead of compiling them again
# (a TINY 200-step run: 18-20 s -> 10-11 s). The first run of each program still compiles it.
# Tests in this process do not use it, and launch.bench and launch.compile turn it off.
# The pytest process that starts the session (the one whose workers pytest-xdist starts, or the
# only one) makes the directory and removes it at the end; workers inherit its path.
_CACHE_VAR = 'TESTS_JAX_COMPILATION_CACHE_DIR'


def pytest_configure(config):
  if not hasattr(config, 'workerinput'):
    os.environ[_CACHE_VAR] = tempfile.mkdtemp(prefix='jax-compilation-cache-')


def pytest_unconfigure(config):
  if not hasattr(config, 'workerinput'):
    shutil.rmtree(os.environ.pop(_CACHE_VAR), ignore_errors=True)


def cli_env(**extra):
  """A CLI subprocess's environment: this one's, on the CPU, with the shared compilation cache."""
  env = dict(os.environ, **extra)
  env.setdefault('JAX_PLATFORMS', 'cpu')
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ[_CACHE_VAR])
  return env


def run_cli(module, *args, env=None, timeout=300, **popen):
  full_env = cli_env(**(env or {}))
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout, **popen)
