"""A size ladder: depth, width and heads from a target parameter count by one rule at every scale.

The rule: d_model = head_dim * round(aspect_ratio * num_layers / head_dim) (a fixed aspect ratio
d_model / num_layers, d_model a whole number of heads of a fixed size), num_heads =
d_model / head_dim, d_ff by research/config.py's rule (4 * d_model for its default GELU MLP); the
number of layers is the one whose model's count is nearest the target in log space.

The defaults, aspect_ratio 64 and head_dim 64: Kaplan et al. (2020, Sec. 3.1, Fig. 5) find that
at a fixed non-embedding count the loss moves only a few percent over a wide range of shapes
(their 6-layer, d_model 4288 model within 3% of the 48-layer, 1600 one: aspect ratios 715 and
33), so one ratio for the whole ladder costs little and takes shape out of the comparison; 64 is
the ratio of the small models in practice (GPT-2 small, GPT-3 Small and Pythia-160M: 768 / 12;
GPT-3 Large: 1536 / 24), and 64 their head size (GPT-2 at every size, GPT-3 Small and Medium,
Pythia up to 410M). With both 64, d_model = 64 * num_layers exactly and the non-embedding count is
about 12 * 64^2 * L^3: the steps are coarse at the bottom (1 -> 2 layers is 8x, 2 -> 3 is 3.4x)
and finer above; smaller values of both give finer steps at small scale.

Counts are the model's own (research/model/archs.py for decoder, prefix_lm and encoder, which
have the same parameters): per layer the query, key, value and output projections and the MLP,
each with its bias when model.use_bias, and two norms (LayerNorm: scale and bias; RMSNorm: scale);
the final norm of a pre-norm stack; the token embedding, tied to the output by default
(model.tie_embeddings), else an unembedding matrix too; the positional scheme's parameters (a
learned table of max_len rows, T5's bias table, Shaw's two vector tables). Embedding parameters
are every vocabulary-sized matrix and the positional parameters; Kaplan's N, `non_embedding`,
is the rest.
"""

import dataclasses
import math
from typing import Sequence

from research.errors import ConfigError

GATED = ('swiglu', 'geglu')
DECODER_LIKE = ('decoder', 'prefix_lm', 'encoder')


def d_ff_for(d_model: int, activation: str = 'gelu') -> int:
  """research/config.py's default d_ff: 4 * d_model, or 8/3 of it rounded up to 64 when gated."""
  return 4 * d_model if activation not in GATED else 64 * math.ceil(8 * d_model / 3 / 64)


def count_params(*, vocab_size: int, num_layers: int, d_model: int, num_heads: int, d_ff: int,
                 max_len: int, num_kv_heads: int = 0, head_dim: int = 0,
                 norm: str = 'layernorm', norm_position: str = 'pre', activation: str = 'gelu',
                 positional: str = 'learned', tie_embeddings: bool = True, use_bias: bool = True,
                 t5_num_buckets: int = 32, shaw_max_distance: int = 16,
                 arch: str = 'decoder') -> dict:
  """Parameters of the model these model.* values build: dict(total, non_embedding, embedding).

  num_kv_heads, head_dim 0: as research.config.resolve (num_heads; d_model // num_heads).
  """
  if arch not in DECODER_LIKE:
    raise ConfigError(f'count_params counts {DECODER_LIKE} models, not model.arch={arch!r}')
  kv = num_kv_heads or num_heads
  h = head_dim or d_model // num_heads
  bias = 1 if use_bias else 0
  attention = (d_model * h * (num_heads + 2 * kv) + bias * h * (num_heads + 2 * kv)  # q, k, v
               + num_heads * h * d_model + bias * d_model)  # output projection
  inputs = 2 if activation in GATED else 1
  mlp = inputs * (d_model * d_ff + bias * d_ff) + d_ff * d_model + bias * d_model
  one_norm = d_model * (2 if norm == 'layernorm' and use_bias else 1)
  blocks = num_layers * (attention + mlp + 2 * one_norm)
  final_norm = one_norm if norm_position == 'pre' else 0
  vocab = vocab_size * d_model * (1 if tie_embeddings else 2)
  positions = {'learned': max_len * d_model, 't5_bias': t5_num_buckets * num_heads,
               'shaw': 2 * (2 * shaw_max_distance + 1) * h}.get(positional, 0)
  embedding = vocab + positions
  non_embedding = blocks + final_norm
  return dict(total=embedding + non_embedding, non_embedding=non_embedding, embedding=embedding)


def count_params_of(model_cfg) -> dict:
  """count_params of a resolved config's `model` section or a transformer.ModelConfig."""
  names = ('vocab_size', 'num_layers', 'd_model', 'num_heads', 'd_ff', 'max_len', 'num_kv_heads',
           'head_dim', 'norm', 'norm_position', 'activation', 'positional', 'tie_embeddings',
           'use_bias', 't5_num_buckets', 'shaw_max_distance', 'arch')
  return count_params(**{k: getattr(model_cfg, k) for k in names if hasattr(model_cfg, k)})


@dataclasses.dataclass(frozen=True)
class Rung:
  """One model of the ladder and its exact parameter counts."""
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  head_dim: int
  total_params: int
  non_embedding_params: int
  embedding_params: int

  def overrides(self) -> dict:
    """The config keys that build it ({'model.num_layers': ..., ...})."""
    return {'model.num_layers': self.num_layers, 'model.d_model': self.d_model,
            'model.num_heads': self.num_heads, 'model.d_ff': self.d_ff,
            'model.head_dim': self.head_dim}


COUNTS = ('non_embedding', 'total')


def rung(num_layers: int, *, vocab_size: int, seq_len: int, aspect_ratio: float = 64.0,
         head_dim: int = 64, **model) -> Rung:
  """The ladder's model of num_layers layers; model: further count_params options (positional,
  tie_embeddings, use_bias, norm, norm_position, activation, ...)."""
  d_model = head_dim * round(aspect_ratio * num_layers / head_dim)
  if d_model < head_dim:
    raise ConfigError(f'aspect ratio {aspect_ratio} gives {num_layers} layer(s) a d_model below '
                      f'one head of {head_dim}')
  d_ff = d_ff_for(d_model, model.get('activation', 'gelu'))
  counts = count_params(vocab_size=vocab_size, num_layers=num_layers, d_model=d_model,
                        num_heads=d_model // head_dim, d_ff=d_ff, max_len=seq_len,
                        head_dim=head_dim, **model)
  return Rung(num_layers, d_model, d_model // head_dim, d_ff, head_dim, counts['total'],
              counts['non_embedding'], counts['embedding'])


def ladder(target_params: float, *, vocab_size: int, seq_len: int, aspect_ratio: float = 64.0,
           head_dim: int = 64, count: str = 'non_embedding', max_ratio: float = 2.0,
           **model) -> Rung:
  """The rung whose `count` ('non_embedding', Kaplan's N, or 'total') is nearest target_params
  (in log space), if within a factor max_ratio of it; else a ConfigError naming the rungs on
  either side (e.g. a target below the smallest model the rule allows, one layer).

  vocab_size and seq_len (the learned position table's rows) enter the total and embedding counts.
  """
  if count not in COUNTS:
    raise ConfigError(f'count must be one of {COUNTS}, got {count!r}')
  given = target_params
  try:
    target_params = float(target_params)
  except (TypeError, ValueError):
    target_params = math.nan
  if not (math.isfinite(target_params) and target_params > 0):
    raise ConfigError(f'target parameter count must be a positive number, got {given!r}')
  if not (head_dim >= 1 and aspect_ratio > 0 and vocab_size >= 1 and seq_len >= 1
          and max_ratio >= 1):
    raise ConfigError(f'ladder needs head_dim, vocab_size, seq_len >= 1, aspect_ratio > 0 and '
                      f'max_ratio >= 1 (got {head_dim}, {vocab_size}, {seq_len}, '
                      f'{aspect_ratio}, {max_ratio})')
  kwargs = dict(vocab_size=vocab_size, seq_len=seq_len, aspect_ratio=aspect_ratio,
                head_dim=head_dim, **model)

  def size(r):
    return r.non_embedding_params if count == 'non_embedding' else r.total_params

  # The smallest depth with at least one head; counts grow with depth, so walk up to the target.
  layers = 1
  while head_dim * round(aspect_ratio * layers / head_dim) < head_dim:
    layers += 1
  below, above = None, rung(layers, **kwargs)
  while size(above) < target_params:
    below, layers = above, layers + 1
    above = rung(layers, **kwargs)
  candidates = [r for r in (below, above) if r is not None]
  best = min(candidates, key=lambda r: abs(math.log(size(r) / target_params)))
  if max(size(best) / target_params, target_params / size(best)) > max_ratio:
    sides = ' or '.join(f'{size(r):,} ({r.num_layers} layers, d_model {r.d_model})'
                        for r in candidates)
    raise ConfigError(
        f'no model of {target_params:,.0f} {count} parameters within {max_ratio}x by aspect ratio '
        f'{aspect_ratio:g} and head dim {head_dim}: nearest {sides}'
        + ('; that is the smallest the rule allows' if below is None else
           '; smaller head_dim and aspect_ratio give finer steps'))
  return best


def ladder_sizes(targets: Sequence[float], **kwargs) -> list:
  """ladder() of each target, in order; two targets that give the same model are an error."""
  rungs = [ladder(t, **kwargs) for t in targets]
  seen = {}
  for t, r in zip(targets, rungs):
    if r in seen:
      raise ConfigError(f'targets {seen[r]:,.0f} and {t:,.0f} both give {r.num_layers} layers, '
                        f'd_model {r.d_model}')
    seen[r] = t
  return rungs
