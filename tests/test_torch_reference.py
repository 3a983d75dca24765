"""launch/torch_reference.py is the same model and optimizer as ours (skipped without PyTorch)."""

import json

import jax
import numpy as np
import pytest

from research import config as config_lib, parallel
from research.errors import ConfigError
from research.train import step as step_lib, trainer
from tests.conftest import TINY, run_cli

torch = pytest.importorskip('torch')
from launch import torch_reference  # noqa: E402  (needs torch)

B, T, V = 4, 16, 257
# Our layers as a Python loop (layer_0, ...) and, where the config has it, scanned ('layers').
LAYOUTS = ([False, True] if 'scan_layers' in config_lib.default_config().model else [None])


def _config(scan_layers=None, **overrides):
  c = config_lib.default_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads = 2, 32, 2
  c.data.seq_len, c.train.batch_size = T, B
  c.data.document_mask = False
  if scan_layers is not None:
    c.model.scan_layers = scan_layers
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return config_lib.resolve(c, vocab_size=V)


def _batch(seed=0, documents=False):
  rng = np.random.default_rng(seed)
  segment_ids = np.ones((B, T), np.int32)
  if documents:  # a second (and third) document starts mid-row
    segment_ids[:, 7:] = 2
    segment_ids[1, 12:] = 3
  positions = np.zeros((B, T), np.int32)
  for t in range(1, T):
    same = segment_ids[:, t] == segment_ids[:, t - 1]
    positions[:, t] = np.where(same, positions[:, t - 1] + 1, 0)
  return {'inputs': rng.integers(0, V, (B, T)).astype(np.int32),
          'targets': rng.integers(0, V, (B, T)).astype(np.int32),
          'segment_ids': segment_ids, 'positions': positions,
          'loss_mask': np.ones((B, T), np.float32)}


def _pair(resolved):
  """Our trainer and state, and the reference holding the same initial parameters."""
  tr = trainer.make_trainer(resolved, parallel.make_mesh(resolved.mesh.shape))
  state = tr.init(jax.random.PRNGKey(0))
  ref = torch_reference.TorchReference(resolved)
  ref.load_jax_params(jax.device_get(state.params))
  return tr, state, ref


@pytest.mark.parametrize('scan_layers', LAYOUTS)
@pytest.mark.parametrize('overrides', [
    {},
    {'data.document_mask': True},
    {'model.positional': 'none', 'model.use_bias': False, 'model.tie_embeddings': False,
     'model.activation': 'relu'},
], ids=['gpt2', 'document_mask', 'nope_nobias_untied_relu'])
def test_same_logits_and_training(scan_layers, overrides):
  # init_std 0.3 brings activations to O(1), where a near miss shows: tanh-GELU in place of the
  # exact one moves these logits by ~2e-3; the same model agrees to ~5e-6.
  resolved = _config(scan_layers, **{'train.warmup_steps': 0, 'model.init_std': 0.3,
                                     **overrides})
  tr, state, ref = _pair(resolved)
  batch = _batch(documents=resolved.data.document_mask)
  ours = np.asarray(step_lib.forward(tr.model, state.params, batch))
  tb = ref.batch(batch)
  with torch.no_grad():
    theirs = ref.logits(tb).numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  # Three optimizer steps on the same batch: the same losses and gradient norms.
  for _ in range(3):
    state, m = tr.train_fn(state, batch)
    r = ref.train_step(tb)
    np.testing.assert_allclose(float(r['loss']), float(m['loss']), rtol=1e-5)
    np.testing.assert_allclose(float(r['grad_norm']), float(m['grad_norm']), rtol=1e-4)


@pytest.mark.parametrize('decay_embeddings', [False, True])
def test_same_weight_decay_mask_and_schedule(decay_embeddings):
  # No token counts (loss_mask 0): zero gradients, so each step only decays (1 - lr_t * wd)
  # the parameters optim.decay_mask picks, by the schedule's warmup learning rates.
  resolved = _config(LAYOUTS[-1], **{'train.weight_decay': 0.5, 'train.learning_rate': 0.1,
                                     'train.warmup_steps': 4,
                                     'train.decay_embeddings': decay_embeddings})
  tr, state, ref = _pair(resolved)
  batch = dict(_batch(), loss_mask=np.zeros((B, T), np.float32))
  tb = ref.batch(batch)
  for _ in range(3):
    state, _ = tr.train_fn(state, batch)
    ref.train_step(tb)
  expected = torch_reference.TorchReference(resolved)
  expected.load_jax_params(jax.device_get(state.params))
  moved = dict(expected.model.named_parameters())
  for name, p in ref.model.named_parameters():
    np.testing.assert_allclose(p.detach().numpy(), moved[name].detach().numpy(), atol=1e-7,
                               err_msg=name)
  shrink = float(np.prod([1 - 0.5 * ref.learning_rate(s) for s in range(3)]))
  wte = ref.model.wte.weight.detach().numpy()
  original = jax.device_get(tr.init(jax.random.PRNGKey(0)).params)['embed']['embedding']
  np.testing.assert_allclose(wte, original * (shrink if decay_embeddings else 1.0), rtol=1e-5)


@pytest.mark.parametrize('key,value', [
    ('model.positional', 'rope'), ('model.positional', 'alibi'), ('model.norm', 'rmsnorm'),
    ('model.activation', 'swiglu'), ('model.dropout', 0.1), ('model.norm_position', 'post'),
    ('model.num_kv_heads', 1), ('train.compute_dtype', 'bfloat16'), ('train.z_loss', 1e-4),
])
def test_refuses_what_it_does_not_implement(key, value):
  c = config_lib.default_config()
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError, match=key):
    torch_reference.check_supported(c)


def test_bench_reference_torch(tmp_path, cache_dir):
  corpus = tmp_path / 'docs.txt'
  corpus.write_text('the quick brown fox jumps over the lazy dog. ' * 400)
  r = run_cli('launch.bench', '--config=experiments/bench.py:small', '--steps=2', '--repeats=2',
              '--reference=torch', f'--config.data.source={corpus}',
              f'--config.data.cache_dir={cache_dir}', *TINY)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out['reference'] == 'torch' and out['torch_attention'] == 'is_causal'
  assert len(out['step_seconds_per_repeat']) == len(out['torch_step_seconds_per_repeat']) == 2
  assert out['torch_step_seconds'] == min(out['torch_step_seconds_per_repeat'])
  assert abs(out['torch_tokens_per_sec'] * out['torch_step_seconds'] - 4 * 32) < 1e-6
  assert abs(out['ratio_vs_torch'] - out['tokens_per_sec'] / out['torch_tokens_per_sec']) < 1e-9
  # Same initial parameters, same batches, same optimizer: the same loss after 5 steps.
  assert abs(out['final_loss'] - out['torch_final_loss']) < 1e-3
  r = run_cli('launch.bench', '--config=experiments/bench.py:small', '--reference=torch',
              '--config.model.positional=rope', *TINY)
  assert r.returncode == 2 and r.stderr.startswith('error: --reference=torch does not implement')
