"""Optimizer schedules and masks, the loss terms, and the FLOP count, against hand computations;
the metrics writer without torch."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.model.transformer import ModelConfig
from research.train import flops, optim, step
from tests.conftest import ROOT


def train_cfg(**kw):
  c = config_lib.default_config()
  c.train.steps, c.train.warmup_steps, c.train.learning_rate, c.train.min_lr_ratio = 110, 10, 1.0, 0.1
  for k, v in kw.items():
    c.train[k] = v
  return c.train


def test_schedules():
  cos = optim.schedule(train_cfg())
  assert float(cos(0)) == pytest.approx(0.1) and float(cos(9)) == pytest.approx(0.91)
  assert float(cos(10)) == pytest.approx(1.0)
  assert float(cos(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # half way down the cosine
  assert float(cos(110)) == pytest.approx(0.1, rel=1e-5)
  lin = optim.schedule(train_cfg(schedule='linear'))
  assert float(lin(60)) == pytest.approx(0.55, rel=1e-5) and float(lin(110)) == pytest.approx(0.1)
  rsqrt = optim.schedule(train_cfg(schedule='rsqrt'))
  assert float(rsqrt(10 + 30)) == pytest.approx(math.sqrt(10 / 40), rel=1e-5)
  assert float(rsqrt(100000)) == pytest.approx(0.1)
  const = optim.schedule(train_cfg(schedule='constant', warmup_steps=0))
  assert float(const(0)) == float(const(109)) == 1.0
  # WSD: constant to step 88, then the last 20% (22 steps) decays to the floor.
  for shape, half in (('sqrt', 1 - 0.9 * math.sqrt(0.5)), ('linear', 0.55)):
    wsd = optim.schedule(train_cfg(schedule='wsd', cooldown_shape=shape))
    assert float(wsd(9)) == pytest.approx(0.91) and float(wsd(88)) == pytest.approx(1.0)
    assert float(wsd(99)) == pytest.approx(half, rel=1e-5)
    assert float(wsd(110)) == pytest.approx(0.1, rel=1e-5)
  # A constant-rate run and a wsd run agree up to the wsd run's cooldown: a cooldown branched
  # from the constant run's checkpoint at step 88 is the wsd run.
  warm_const = optim.schedule(train_cfg(schedule='constant', steps=1000))
  wsd = optim.schedule(train_cfg(schedule='wsd'))
  assert all(float(warm_const(s)) == float(wsd(s)) for s in range(89))


def test_weight_decay_only_on_matrices():
  params = {'embed': {'embedding': 1.0}, 'layer': {'mlp': {'kernel': 1.0, 'bias': 1.0},
                                                   'norm': {'scale': 1.0}}}
  mask = optim.decay_mask(params, decay_embeddings=False)
  assert mask == {'embed': {'embedding': False},
                  'layer': {'mlp': {'kernel': True, 'bias': False}, 'norm': {'scale': False}}}
  assert optim.decay_mask(params, decay_embeddings=True)['embed']['embedding'] is True
  # Through optax: with zero gradients, only the decayed leaf moves.
  tx = optim.optimizer(train_cfg(warmup_steps=0, schedule='constant', weight_decay=0.5,
                                 learning_rate=0.1))
  p = jax.tree.map(jnp.float32, params)
  upd, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
  assert float(upd['layer']['mlp']['kernel']) == pytest.approx(-0.05)
  assert float(upd['layer']['mlp']['bias']) == 0.0 and float(upd['embed']['embedding']) == 0.0


def test_loss_terms_against_numpy():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 7).astype(np.float32)
  targets = rng.randint(0, 7, (2, 3))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  obj, got_nll = step.token_losses(jnp.asarray(logits), jnp.asarray(targets))
  np.testing.assert_allclose(got_nll, nll, rtol=1e-5)
  np.testing.assert_allclose(obj, nll, rtol=1e-5)
  # Label smoothing: cross-entropy against (1-e) one-hot + e uniform.
  e = 0.1
  q = np.full_like(logits, e / 7)
  np.put_along_axis(q, targets[..., None], 1 - e + e / 7, -1)
  obj, _ = step.token_losses(jnp.asarray(logits), jnp.asarray(targets), label_smoothing=e)
  np.testing.assert_allclose(obj, -(q * logp).sum(-1), rtol=1e-5)
  # z-loss adds z * log(Z)^2.
  lse = np.log(np.exp(logits).sum(-1))
  obj, _ = step.token_losses(jnp.asarray(logits), jnp.asarray(targets), z_loss=1e-2)
  np.testing.assert_allclose(obj, nll + 1e-2 * lse ** 2, rtol=1e-5)


def test_eval_metrics_bits_per_byte():
  m = step.eval_metrics({'nll_sum': 100 * math.log(2), 'tokens': 50.0, 'bytes': 200.0})
  assert m['bits_per_byte'] == pytest.approx(0.5)
  assert m['loss'] == pytest.approx(2 * math.log(2)) and m['perplexity'] == pytest.approx(4.0)


def test_flops_count_matches_parameters():
  c = config_lib.default_config()
  r = config_lib.resolve(c, vocab_size=257)
  cfg = ModelConfig.from_config(r)
  d, L, T = 256, 4, 256
  n_matmul = L * (4 * d * d + 2 * d * 4 * d) + d * 257
  assert flops.matmul_params(cfg) == n_matmul
  assert flops.train_flops_per_token(cfg, T) == 6 * n_matmul + 6 * L * T * d
  assert flops.train_flops_per_token(cfg, T, causal_halving=False) == 6 * n_matmul + 12 * L * T * d


def test_mfu_peak_is_the_datasheet_figure_only_for_16_bit_on_known_accelerators():
  assert flops.spec_peak('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert flops.spec_peak('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert flops.spec_peak('NVIDIA H200', 'float16') == 989e12
  assert flops.spec_peak('NVIDIA A100-SXM4-80GB', 'bfloat16') == 312e12
  assert flops.spec_peak('TPU v5 lite', 'bfloat16') == 197e12
  assert flops.spec_peak('TPU v5', 'bfloat16') == 459e12
  assert flops.spec_peak('NVIDIA H100 80GB HBM3', 'float32') is None
  assert flops.spec_peak('NVIDIA GeForce RTX 4090', 'bfloat16') is None
  # On the CPU (these tests) MFU always divides by the measured rate, whatever the dtype.
  assert flops.mfu_peak('bfloat16', 1.5e11) == (1.5e11, 'measured')
  assert flops.mfu_peak('float32', 1.5e11) == (1.5e11, 'measured')


_WRITER = '''
import json, sys
from research.train import metrics
w = metrics.MetricsWriter(sys.argv[1])
w.write(1, 'train', {'loss': 2.5})
w.close()
print(json.dumps('torch' in sys.modules))
import torch  # still importable afterwards
'''


def test_metrics_writer_leaves_torch_unimported(tmp_path):
  """tensorboardX would import torch (3 s a launch) when it is installed; the writer keeps it out
  and still writes both the JSONL row and the TensorBoard events."""
  pytest.importorskip('torch')
  r = subprocess.run([sys.executable, '-c', _WRITER, str(tmp_path)], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout.strip().splitlines()[-1]) is False
  assert (tmp_path / 'metrics.jsonl').read_text().strip() == json.dumps(
      {'step': 1, 'split': 'train', 'loss': 2.5})
  events = [p for p in tmp_path.iterdir() if p.name.startswith('events.out.tfevents')]
  assert len(events) == 1 and events[0].stat().st_size > 0
