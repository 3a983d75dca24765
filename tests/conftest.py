"""Shared fixtures: a token cache directory shared by the whole session, and a CLI runner."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A model small enough that a subprocess run is dominated by start-up, not training.
TINY = ['--config.data.tokenizer=byte', '--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
        '--config.data.seq_len=32', '--config.train.batch_size=4', '--config.train.log_every=5',
        '--config.train.warmup_steps=5', '--config.eval.every_steps=10',
        '--config.eval.max_batches=2', '--config.checkpoint.every_steps=10',
        '--config.sample.num_samples=1', '--config.sample.max_new_tokens=8']


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('cache'))


def run_cli(module, *args, env=None, timeout=300, **popen):
  full_env = dict(os.environ, **(env or {}))
  full_env.setdefault('JAX_PLATFORMS', 'cpu')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout, **popen)
