"""research/cpu.py: the malloc setting stops XLA's per-call page faults, and the estimate that
decides it agrees with the compiled step; the compiler options take wide models' dots off
YNNPACK on the CPU only, and a flag the user set wins."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments.positional import lost_in_middle
from research import config as config_lib, cpu, parallel
from research.data import pipeline
from research.train import trainer
from tests.conftest import ROOT

# A jitted cumsum over 32 MB keeps a temporary buffer above glibc's 32 MB mmap ceiling, so by
# default every call maps it afresh and faults in each page.
_FAULTS = '''
import json, resource, sys
if sys.argv[1] == 'keep':
  from research import cpu
  assert cpu.keep_freed_memory()
import jax, jax.numpy as jnp

import pytest
f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x), axis=0)[-1].sum())
x = jnp.ones((2048, 4096))
# Kept: the heap grows over the first calls to what overlapping calls need (measured: no new
# fault after the first 50 of 300 calls, and no growth), then serves every call. Once in a full
# suite run it grew once more after call 40, so this reports the quietest of the windows asked.
for _ in range(int(sys.argv[2])):
  f(x).block_until_ready()
windows = []
for _ in range(int(sys.argv[3])):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(8):
    f(x).block_until_ready()
  windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8)
print(json.dumps(min(windows)))
'''


def _faults_per_call(mode, warmup, windows):
  r = subprocess.run([sys.executable, '-c', _FAULTS, mode, str(warmup), str(windows)], cwd=ROOT,
                     capture_output=True, text=True, timeout=120,
                     env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'})
  assert r.returncode == 0, r.stderr
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_keep_freed_memory_stops_the_page_faults_of_each_call():
  default, kept = _faults_per_call('default', 2, 1), _faults_per_call('keep', 60, 4)
  assert default > 4000  # 32 MB of 4 KiB pages faulted again every call
  assert kept < default / 20


def _step_temp_bytes(config):
  data = pipeline.prepare(config)
  tr = trainer.make_trainer(config_lib.resolve(config, vocab_size=data.tokenizer.vocab_size),
                         parallel.make_mesh(config.mesh.shape))
  state = tr.init(jax.random.PRNGKey(0))
  batch = jax.device_put(data.train_batch(0), tr.batch_sh)
  return tr.train_fn.lower(state, batch).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_large_temporaries_estimate_agrees_with_the_compiled_step():
  """The config-only estimate that decides the malloc setting sides with XLA's real buffer."""
  wide = lost_in_middle.get_config('cpu')  # 2 layers, d_model 128, 128 x 32 tokens
  tiny = lost_in_middle.get_config('cpu')
  tiny.model.num_layers, tiny.model.d_model, tiny.train.batch_size = 1, 32, 4
  for config, large in ((wide, True), (tiny, False)):
    assert cpu.needs_large_temporaries(config) == large
    assert (_step_temp_bytes(config) > cpu._MMAP_CEILING) == large


def test_will_run_on_cpu_follows_jax_platforms(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert cpu.will_run_on_cpu()
  for platforms in ('cuda', 'tpu', 'cpu,cuda'):
    monkeypatch.setenv('JAX_PLATFORMS', platforms)
    assert not cpu.will_run_on_cpu()


def _ynn_dots(compiled_text):
  return sum('ynn_fusion' in line and 'dot_general' in line for line in compiled_text.splitlines())


def test_compiler_options_take_wide_models_dots_off_ynnpack_on_cpu_only(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert cpu.compiler_options('gpu', 512) is None and cpu.compiler_options('tpu', 512) is None
  assert cpu.compiler_options('cpu', cpu.EIGEN_DOTS_FROM_D_MODEL - 1) is None
  options = cpu.compiler_options('cpu', cpu.EIGEN_DOTS_FROM_D_MODEL)
  a = jnp.ones((64, 64))
  fn = lambda x, y: x @ y  # noqa: E731
  default = jax.jit(fn).lower(a, a).compile().as_text()
  ours = jax.jit(fn, compiler_options=options).lower(a, a).compile().as_text()
  assert _ynn_dots(default) == 1 and _ynn_dots(ours) == 0
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  assert cpu.compiler_options('cpu', 512) is None
