"""launch.compile: one-line errors without libtpu; with it, a tiny config compiled for v5e:2x2."""

import importlib.util
import json

import pytest

from research import config as config_lib
from research.model.transformer import ModelConfig
from research.train import flops
from tests.conftest import TINY, run_cli

HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu not installed '
                                  '(pip install -r requirements-tpu.txt)')
QUICK = ['--config=experiments/quickstart.py', *TINY]


def _one_line_error(r, contains):
  assert r.returncode == 2, r.stdout + r.stderr
  assert r.stderr.startswith('error: ') and r.stderr.count('\n') == 1, r.stderr
  assert contains in r.stderr, r.stderr


@pytest.mark.skipif(HAS_LIBTPU, reason='libtpu is installed')
def test_without_libtpu_says_how_to_install_it():
  r = run_cli('launch.compile', *QUICK, '--topology=v5e:2x2')
  _one_line_error(r, 'pip install -r requirements-tpu.txt')
  assert r.stdout == ''


@pytest.mark.parametrize('topology', ['v5e', 'tpu:4x4', 'v5e:4x', ''])
def test_malformed_topology_is_one_line(topology):
  r = run_cli('launch.compile', *QUICK, f'--topology={topology}')
  _one_line_error(r, '--topology')


@needs_libtpu
@pytest.mark.parametrize('topology', ['v9:2x2', 'v5e:3x3'])
def test_topology_libtpu_refuses_is_one_line(topology):
  _one_line_error(run_cli('launch.compile', *QUICK, f'--topology={topology}'),
                  f'--topology={topology}: ')


@needs_libtpu
def test_batch_that_does_not_divide_is_one_line():
  # v5e:2x4 is 8 chips; TINY's batch of 4 rows cannot be split 8 ways.
  _one_line_error(run_cli('launch.compile', *QUICK, '--topology=v5e:2x4'), 'train.batch_size=4')


@needs_libtpu
def test_tiny_config_compiles_for_v5e():
  r = run_cli('launch.compile', *QUICK, '--topology=v5e:2x2', '--json')
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert (out['devices'], out['device_kind'], out['mesh']) == (
      4, 'TPU v5 lite', {'data': 4, 'fsdp': 1, 'tensor': 1})
  m = out['memory_per_device']
  assert m['arguments'] > 0 and m['outputs'] > 0 and m['generated_code'] > 0
  assert m['total'] >= m['arguments'] and out['fits'] is True
  assert out['hbm_per_chip_gib'] == 16 and out['compile_seconds'] > 0
  # model.attention_impl=auto is picked for the TPU, not for this CPU host (which takes blocked).
  assert out['attention_impl'] == 'einsum'

  c = config_lib.default_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.data.seq_len = 1, 32, 2, 32
  cfg = ModelConfig.from_config(config_lib.resolve(c, vocab_size=257))
  assert out['analytic_flops_per_step'] == flops.train_flops_per_token(cfg, 32) * 4 * 32
  # XLA counts every op (norms, softmax, the optimizer), the analytic count only the matmuls.
  assert out['xla_flops_per_device'] > 0
  assert 0.5 < out['xla_flops_per_step'] / out['analytic_flops_per_step'] < 4


@needs_libtpu
def test_step_that_does_not_fit_exits_1():
  # The float32 logits of 4096 tokens over a vocabulary of 2M are 32 GiB: no v5e chip holds them.
  r = run_cli('launch.compile', *QUICK, '--config.data.tokenizer=bpe',
              '--config.data.vocab_size=2000000', '--config.train.batch_size=128',
              '--topology=v5e:1x1', '--json')
  assert r.returncode == 1, r.stderr
  out = json.loads(r.stdout)
  assert out['fits'] is False and out['memory_per_device'] is None
  assert 'HBM' in out['compile_error']
