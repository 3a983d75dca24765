"""A PyTorch eager reference of our GPT-2 decoder and its AdamW step, for `launch.bench` only.

  python -m launch.bench --config=experiments/bench.py:small --reference=torch

nanoGPT-style: one fused q/k/v projection, F.scaled_dot_product_attention, pre-LayerNorm blocks,
exact-erf GELU, tied embeddings. For the configs `check_supported` accepts it is the same model as
research.model.transformer.Decoder (load_jax_params copies our parameters into it and
tests/test_torch_reference.py checks the logits agree), trained by the same optimizer: AdamW with
decay on matrices only (research/train/optim.py), global-norm clipping, the same schedule. So
both do the same FLOPs per step and their tokens/s compare directly.

Attention mask: with data.document_mask=False every row is one causal sequence and SDPA runs
with is_causal=True (its fastest CPU path, which skips the masked key blocks). With document
masking on, the reference passes the segment mask explicitly, which is exact but takes SDPA's
slower masked path; the benchmark presets turn document masking off.

PyTorch is an optional, benchmark-only requirement (requirements-bench.txt): nothing outside
launch.bench imports this module.
"""

import math
import os

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from research.errors import ConfigError

# (config key, allowed values) the reference implements; anything else is refused so that a
# comparison is never between two different models.
_SUPPORTED = (
    ('model.norm', ('layernorm',)),
    ('model.norm_position', ('pre',)),
    ('model.activation', ('gelu', 'relu')),
    ('model.positional', ('learned', 'none')),
    ('model.dropout', (0.0,)),
    ('train.label_smoothing', (0.0,)),
    ('train.z_loss', (0.0,)),
    ('train.compute_dtype', ('float32',)),
)


def schedulable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def check_supported(config) -> None:
  """ConfigError naming the first choice the reference does not implement (resolved or not)."""
  for key, allowed in _SUPPORTED:
    section, name = key.split('.')
    value = config[section][name]
    if value not in allowed:
      raise ConfigError(f'--reference=torch does not implement {key}={value!r} (it implements '
                        f'{", ".join(map(repr, allowed))}); compare that arm without it')
  m = config.model
  if m.num_kv_heads not in (0, m.num_heads):
    raise ConfigError(f'--reference=torch does not implement grouped-query attention '
                      f'(model.num_kv_heads={m.num_kv_heads})')


class Block(nn.Module):
  """Pre-LayerNorm attention + MLP, as research.model.transformer.Block for the GPT-2 choices."""

  def __init__(self, m):
    super().__init__()
    d, inner = m.d_model, m.num_heads * m.head_dim
    self.num_heads, self.head_dim = m.num_heads, m.head_dim
    self.act = F.relu if m.activation == 'relu' else F.gelu  # F.gelu is the exact (erf) GELU
    self.ln_1 = nn.LayerNorm(d, eps=m.norm_eps, bias=m.use_bias)
    self.c_attn = nn.Linear(d, 3 * inner, bias=m.use_bias)  # q, k, v in that order
    self.c_proj = nn.Linear(inner, d, bias=m.use_bias)
    self.ln_2 = nn.LayerNorm(d, eps=m.norm_eps, bias=m.use_bias)
    self.c_fc = nn.Linear(d, m.d_ff, bias=m.use_bias)
    self.mlp_proj = nn.Linear(m.d_ff, d, bias=m.use_bias)

  def forward(self, x_BTD, mask_B1TT):
    b, t, _ = x_BTD.shape
    q, k, v = self.c_attn(self.ln_1(x_BTD)).split(self.num_heads * self.head_dim, dim=-1)
    q, k, v = (a.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for a in (q, k, v))
    y_BNTH = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_B1TT,
                                            is_causal=mask_B1TT is None)
    x_BTD = x_BTD + self.c_proj(y_BNTH.transpose(1, 2).reshape(b, t, -1))
    return x_BTD + self.mlp_proj(self.act(self.c_fc(self.ln_2(x_BTD))))


class Decoder(nn.Module):
  """Token embedding (+ learned positions) -> blocks -> final LayerNorm -> logits (float32)."""

  def __init__(self, m):
    super().__init__()
    self.max_len = m.max_len
    self.wte = nn.Embedding(m.vocab_size, m.d_model)
    self.wpe = (nn.Parameter(torch.empty(m.max_len, m.d_model))
                if m.positional == 'learned' else None)
    self.blocks = nn.ModuleList(Block(m) for _ in range(m.num_layers))
    self.ln_f = nn.LayerNorm(m.d_model, eps=m.norm_eps, bias=m.use_bias)
    self.lm_head = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)
    self._init(m.init_std, m.init_std / math.sqrt(2 * m.num_layers))

  def _init(self, std, out_std):
    """Our initializers: N(0, std) matrices and tables, GPT-2's out_std for residual writers."""
    for name, p in self.named_parameters():
      if name.endswith('c_proj.weight') or name.endswith('mlp_proj.weight'):
        nn.init.normal_(p, std=out_std)
      elif name.startswith('ln') or '.ln_' in name:
        nn.init.ones_(p) if name.endswith('weight') else nn.init.zeros_(p)
      elif name.endswith('bias'):
        nn.init.zeros_(p)
      else:
        nn.init.normal_(p, std=std)

  def forward(self, inputs_BT, positions_BT, mask_B1TT=None):
    x_BTD = self.wte(inputs_BT)
    if self.wpe is not None:
      # As ours: positions past the table reuse its last row.
      x_BTD = x_BTD + F.embedding(positions_BT.clamp(max=self.max_len - 1), self.wpe)
    for block in self.blocks:
      x_BTD = block(x_BTD, mask_B1TT)
    x_BTD = self.ln_f(x_BTD)
    if self.lm_head is None:
      return F.linear(x_BTD, self.wte.weight)
    return self.lm_head(x_BTD)


def _stacked_layer(params, i: int, num_layers: int):
  """Layer i's parameter dict: params['layer_{i}'], or row i of layers stacked by nn.scan."""
  if f'layer_{i}' in params:
    return params[f'layer_{i}']
  stacked = params.get('layers')
  if stacked is not None:
    leaves = _leaves(stacked)
    if all(np.shape(x)[:1] == (num_layers,) for x in leaves):
      return _map(lambda x: np.asarray(x)[i], stacked)
  raise ValueError(f'no parameters for layer {i} among {sorted(params)} (expected layer_{i}, or '
                   f'"layers" with a leading axis of {num_layers})')


def _leaves(tree):
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    return [leaf for v in tree.values() for leaf in _leaves(v)]
  return [tree]


def _map(fn, tree):
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    return {k: _map(fn, v) for k, v in tree.items()}
  return fn(tree)


class TorchReference:
  """The model, its optimizer and one train step, from a resolved config."""

  def __init__(self, resolved, *, seed: int = 0):
    check_supported(resolved)
    torch.set_num_threads(schedulable_cpus())
    torch.manual_seed(seed)
    self.cfg = resolved
    self.model = Decoder(resolved.model)
    t = resolved.train
    decay, no_decay = [], []
    for name, p in self.model.named_parameters():
      # optim.decay_mask: every 'kernel' (Linear weights) and, when asked, the embedding tables.
      table = name in ('wte.weight', 'wpe')
      is_kernel = p.ndim == 2 and not table and not name.startswith('ln')
      (decay if is_kernel or (table and t.decay_embeddings) else no_decay).append(p)
    self.optimizer = torch.optim.AdamW(
        [{'params': decay, 'weight_decay': t.weight_decay},
         {'params': no_decay, 'weight_decay': 0.0}],
        # fused: one kernel over all parameters. On CPU foreach=True took 0.3-0.5 s a step for
        # the 3.3M-parameter 'small' preset, the for-loop default 10-90 ms, fused 20-60 ms.
        lr=t.learning_rate, betas=(t.beta1, t.beta2), eps=t.eps, fused=True)
    self.grad_clip = t.grad_clip
    self.document_mask = resolved.data.document_mask
    self._schedule = None
    self._lrs = {}
    self.step = 0

  def learning_rate(self, step: int) -> float:
    """research.train.optim.schedule at `step`, computed once per step outside any timing."""
    if step not in self._lrs:
      import jax
      import jax.numpy as jnp
      from research.train import optim
      if self._schedule is None:
        self._schedule = jax.jit(jax.vmap(optim.schedule(self.cfg.train)))
      upto = max(step + 1, self.cfg.train.steps + 1)
      values = np.asarray(self._schedule(jnp.arange(upto)))
      self._lrs.update(enumerate(values.tolist()))
    return self._lrs[step]

  def batch(self, batch: dict) -> dict:
    """A numpy Batch as torch tensors (and the attention mask, when documents are masked)."""
    out = {'inputs': torch.from_numpy(np.asarray(batch['inputs'], np.int64)),
           'positions': torch.from_numpy(np.asarray(batch['positions'], np.int64)),
           'targets': torch.from_numpy(np.asarray(batch['targets'], np.int64)),
           'loss_mask': torch.from_numpy(np.asarray(batch['loss_mask'], np.float32)),
           'mask': None}
    if self.document_mask:
      seg_BT = torch.from_numpy(np.asarray(batch['segment_ids']))
      t = seg_BT.shape[1]
      same_BTT = (seg_BT[:, :, None] == seg_BT[:, None, :]) & (seg_BT[:, None, :] > 0)
      out['mask'] = (same_BTT & torch.ones(t, t, dtype=torch.bool).tril())[:, None]
    # Learning rates for the steps ahead, so that no JAX call lands inside a timed step.
    self.learning_rate(self.step)
    return out

  def logits(self, batch: dict):
    return self.model(batch['inputs'], batch['positions'], batch['mask'])

  def loss(self, batch: dict):
    """Mean negative log-likelihood over loss_mask, as research.train.step.train_step."""
    logits_BTV = self.logits(batch)
    nll_BT = F.cross_entropy(logits_BTV.flatten(0, 1), batch['targets'].flatten(),
                             reduction='none').view_as(batch['loss_mask'])
    mask_BT = batch['loss_mask']
    return (nll_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1.0)

  def train_step(self, batch: dict) -> dict:
    """One AdamW update; returns {'loss', 'grad_norm'} as 0-d tensors (read them after timing)."""
    loss = self.loss(batch)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in self.model.parameters() if p.grad is not None]
    if self.grad_clip:
      grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
    else:
      grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    lr = self.learning_rate(self.step)
    for group in self.optimizer.param_groups:
      group['lr'] = lr
    self.optimizer.step()
    self.step += 1
    return {'loss': loss.detach(), 'grad_norm': grad_norm.detach()}

  @torch.no_grad()
  def load_jax_params(self, params) -> None:
    """Copies our Decoder's parameters (a nested dict of arrays, layers looped or scanned)."""
    m = self.cfg.model
    model = self.model
    p = _map(np.asarray, params)
    inner = m.num_heads * m.head_dim

    def put(dst, src):
      src = torch.from_numpy(np.array(src, np.float32))  # a writable copy
      if dst.shape != src.shape:
        raise ValueError(f'shape {tuple(src.shape)} does not fit {tuple(dst.shape)}')
      dst.copy_(src)

    def norm(dst, src):
      put(dst.weight, src['scale'])
      if m.use_bias:
        put(dst.bias, src['bias'])

    put(model.wte.weight, p['embed']['embedding'])
    if model.wpe is not None:
      put(model.wpe, p['positional']['embedding'])
    for i, block in enumerate(model.blocks):
      layer = _stacked_layer(p, i, m.num_layers)
      att, mlp = layer['attention'], layer['mlp']
      # JAX kernels are [in, out] (q/k/v [D, N, H], out [N, H, D]); torch weights are [out, in].
      put(block.c_attn.weight, np.concatenate(
          [att[n]['kernel'].reshape(m.d_model, inner) for n in ('query', 'key', 'value')], 1).T)
      put(block.c_proj.weight, att['out']['kernel'].reshape(inner, m.d_model).T)
      put(block.c_fc.weight, mlp['wi']['kernel'].T)
      put(block.mlp_proj.weight, mlp['wo']['kernel'].T)
      if m.use_bias:
        put(block.c_attn.bias, np.concatenate(
            [att[n]['bias'].reshape(inner) for n in ('query', 'key', 'value')]))
        put(block.c_proj.bias, att['out']['bias'])
        put(block.c_fc.bias, mlp['wi']['bias'])
        put(block.mlp_proj.bias, mlp['wo']['bias'])
      norm(block.ln_1, layer['norm_attention'])
      norm(block.ln_2, layer['norm_mlp'])
    norm(model.ln_f, p['norm_final'])
    if model.lm_head is not None:
      put(model.lm_head.weight, p['unembed']['kernel'].T)
