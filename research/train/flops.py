"""Model FLOPs per token and the matmul peak that MFU divides by.

Train FLOPs of a decoder per token = 6 * N_matmul + 6 * L * T * d_attn, where N_matmul counts every
weight that takes part in a matmul (attention and MLP projections and the output projection over
the vocabulary, but not embedding lookups, positional tables, norms or biases), and the second
term is the attention score and value matmuls (2 * 2 * T * d_attn per layer forward, x3 for
forward + backward) HALVED for causal masking, since only half the query-key pairs are computed
usefully. This is Kaplan et al.'s C = 6N + 6 n_layer n_ctx d_attn; PaLM's MFU does not halve.

Other architectures (research/model/archs.py) count each attention of their ATTENTIONS the same
way over the sequences it joins: causal self-attention halved (decoder, and the decoder of an
encoder-decoder); bidirectional self-attention whole (encoder, an encoder-decoder's encoder);
a prefix LM's self-attention whole too (its prefix is bidirectional and its length varies, so
this is an upper bound); cross-attention whole (every decoder token over every encoder token),
its key and value projections applied to the encoder's tokens. Per token means per token the
model reads: an example's FLOPs over the sum of its sequences' lengths.

Three counts of a decoder's training FLOPs per token, for the scaling laws (`flops_per_token`):
- 'kaplan': C = 6N, N the non-embedding parameters (Kaplan et al. 2020, eq. 2.1 without its
  context term): no attention-score term, so nothing to halve;
- 'chinchilla': Hoffmann et al. 2022, Appendix F: embeddings (2 V d), query/key/value projections,
  the attention logits and their softmax-weighted values over the whole context (NOT halved for
  causal masking), the softmax (3 heads T^2), output projections, the MLP and the final logits,
  per token; backward = 2x forward;
- 'model': this module's count (`train_flops_per_token`) with causal attention halved: the one
  MFU divides by, everywhere in this codebase.

The peak MFU divides by: on the CPU the matmul rate measured here and now (no datasheet figure
fits a shared, throttled host); on GPUs and TPUs the vendor's dense 16-bit figure for that chip
when compute is 16-bit, the convention of the published MFUs we compare with (llm.c, MaxText,
PaLM), else (float32, or a chip not in the table) the measured rate.
"""

import time

import jax
import jax.numpy as jnp

from research import cpu


def _query_side_params(cfg) -> int:
  """Weights of an attention applied to its queries' tokens: the query and output projections."""
  return 2 * cfg.d_model * cfg.head_dim * cfg.num_heads


def _key_side_params(cfg) -> int:
  """Weights applied to its keys' tokens: the key and value projections."""
  return 2 * cfg.d_model * cfg.head_dim * cfg.num_kv_heads


def _mlp_params(cfg) -> int:
  return cfg.d_model * cfg.d_ff * (3 if cfg.activation in ('swiglu', 'geglu') else 2)


def matmul_params(cfg) -> int:
  """N_matmul of a decoder: every layer's projections and MLP, and the output projection."""
  layer = _query_side_params(cfg) + _key_side_params(cfg) + _mlp_params(cfg)
  return cfg.num_layers * layer + cfg.d_model * cfg.vocab_size


def train_flops_per_example(cfg, lengths: dict, *, causal_halving: bool = True) -> float:
  """Forward + backward FLOPs of one example of the architecture cfg.arch at these sequence
  lengths ({'length': T[, 'encoder_length': S]})."""
  from research.model import archs
  d_attn = cfg.num_heads * cfg.head_dim
  # The output projection over the vocabulary, at every position of the main sequence.
  total = 6 * cfg.d_model * cfg.vocab_size * lengths['length']
  for a in archs.arch_class(cfg.arch).ATTENTIONS:
    layers = cfg.num_encoder_layers if a.encoder else cfg.num_layers
    n_q, n_k = lengths[a.queries], lengths[a.keys]
    params_x_tokens = _query_side_params(cfg) * n_q + _key_side_params(cfg) * n_k
    if a.mlp:
      params_x_tokens += _mlp_params(cfg) * n_q
    scores = 12 * n_q * n_k * d_attn
    if a.causal and causal_halving:
      scores /= 2
    total += layers * (6 * params_x_tokens + scores)
  return float(total)


def train_flops_per_token(cfg, lengths, *, causal_halving: bool = True) -> float:
  """train_flops_per_example over the tokens an example puts through the model. lengths: the
  model's sequence lengths, or one int, the length of the only sequence."""
  if isinstance(lengths, int):
    lengths = {'length': lengths}
  return (train_flops_per_example(cfg, lengths, causal_halving=causal_halving)
          / sum(lengths.values()))


def chinchilla_flops_per_token(cfg, seq_len: int) -> float:
  """Hoffmann et al. 2022, Appendix F: forward FLOPs of one sequence over its tokens, times 3."""
  d, t, v = cfg.d_model, seq_len, cfg.vocab_size
  d_attn = cfg.num_heads * cfg.head_dim
  d_kv = cfg.num_kv_heads * cfg.head_dim
  gated = cfg.activation in ('swiglu', 'geglu')
  embeddings = 2 * t * v * d
  attention = (2 * t * d * (d_attn + 2 * d_kv)  # query, key, value projections
               + 2 * t * t * d_attn  # key @ query logits
               + 3 * cfg.num_heads * t * t  # softmax
               + 2 * t * t * d_attn  # softmax @ values
               + 2 * t * d_attn * d)  # output projection
  dense = 2 * t * d * cfg.d_ff * (3 if gated else 2)
  logits = 2 * t * d * v
  forward = embeddings + cfg.num_layers * (attention + dense) + logits
  return 3 * forward / t


def kaplan_flops_per_token(cfg) -> float:
  """6N, N the non-embedding parameters (research/scaling/ladder.py counts them)."""
  from research.scaling import ladder
  return 6.0 * ladder.count_params_of(cfg)['non_embedding']


def flops_per_token(cfg, seq_len: int, count: str = 'model') -> float:
  """Training FLOPs per token of a decoder by `count`: 'kaplan', 'chinchilla' or 'model'."""
  counts = {'kaplan': lambda: kaplan_flops_per_token(cfg),
            'chinchilla': lambda: chinchilla_flops_per_token(cfg, seq_len),
            'model': lambda: train_flops_per_token(cfg, seq_len)}
  if count not in counts:
    raise ValueError(f'unknown FLOP count {count!r}: one of {", ".join(counts)}')
  return counts[count]()


# Dense (no sparsity) bfloat16/float16 FLOP/s per chip, from the vendors' datasheets, matched
# against jax's device_kind in this order (the first substring found wins).
SPEC_PEAK_16BIT = (
    ('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H200 NVL', 835e12),
    ('H100', 989e12), ('H200', 989e12), ('A100', 312e12),  # H200 also matches GH200
    ('TPU v4', 275e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12), ('TPU v5', 459e12),
    ('TPU v6 lite', 918e12), ('TPU v6e', 918e12),
)


def spec_peak(device_kind: str, dtype) -> float | None:
  """The datasheet's dense FLOP/s of one such chip in 16-bit, or None (float32, unknown chip)."""
  if jnp.dtype(dtype).itemsize != 2:
    return None
  for name, flops in SPEC_PEAK_16BIT:
    if name.lower() in device_kind.lower():
      return flops
  return None


def matmul_peak(dtype="float32", n: int = 0, repeats: int = 10, min_seconds: float = 1.0
                ) -> float:
  """FLOP/s of one device's best square matmul of this dtype, timed here and now: the best of at
  least `repeats` timings spread over at least `min_seconds`, so that a moment of contention on a
  shared machine does not pass for the peak; and the better of XLA's default compiler options
  and those a wide model's train step compiles with (research/cpu.py), timed in turn within the
  same `min_seconds`, so neither sets a low bar. n=0: 1024 on the CPU, 8192 on accelerators
  (smaller products there measure launch overhead, not the matmul units)."""
  n = n or (1024 if jax.default_backend() == 'cpu' else 8192)
  a = jnp.ones((n, n), dtype)
  step_options = cpu.compiler_options(jax.default_backend(), d_model=n)
  fns = [jax.jit(lambda x, y: x @ y, compiler_options=opts)
         for opts in [None] + ([step_options] if step_options else [])]
  for f in fns:
    f(a, a).block_until_ready()
  best, count, start = float('inf'), 0, time.perf_counter()
  while count < repeats or time.perf_counter() - start < min_seconds:
    for f in fns:
      t = time.perf_counter()
      f(a, a).block_until_ready()
      best = min(best, time.perf_counter() - t)
    count += 1
  return 2 * n ** 3 / best


def total_peak(per_device: float) -> float:
  """Simulated CPU devices share the same cores, so one device's matmul already uses them all."""
  if jax.devices()[0].platform == 'cpu':
    return per_device * jax.process_count()
  return per_device * jax.device_count()


def mfu_peak(dtype, measured: float) -> tuple[float, str]:
  """(peak FLOP/s of all devices that MFU divides by, where it comes from), given `measured`, the
  total_peak of matmul_peak: the datasheet's figure where spec_peak has one, else `measured`."""
  kind = jax.devices()[0].device_kind
  spec = None if jax.default_backend() == 'cpu' else spec_peak(kind, dtype)
  if spec is None:
    return measured, 'measured'
  return spec * jax.device_count(), f'datasheet ({kind}, dense 16-bit)'
