"""Model FLOPs per token and the measured matmul peak that MFU divides by.

Train FLOPs per token = 6 * N_matmul + 6 * L * T * d_attn, where N_matmul counts every weight that
takes part in a matmul (attention and MLP projections and the output projection over the
vocabulary, but not embedding lookups, positional tables, norms or biases), and the second term is
the attention score and value matmuls (2 * 2 * T * d_attn per layer forward, x3 for forward +
backward) HALVED for causal masking, since only half the query-key pairs are computed usefully.
This is Kaplan et al.'s C = 6N + 6 n_layer n_ctx d_attn; PaLM's MFU does not halve (12 L T d).
"""

import time

import jax
import jax.numpy as jnp

from research import cpu


def matmul_params(cfg) -> int:
  d, h = cfg.d_model, cfg.head_dim
  attn = d * h * (cfg.num_heads * 2 + cfg.num_kv_heads * 2)
  mlp = d * cfg.d_ff * (3 if cfg.activation in ('swiglu', 'geglu') else 2)
  return cfg.num_layers * (attn + mlp) + d * cfg.vocab_size


def train_flops_per_token(cfg, seq_len: int, *, causal_halving: bool = True) -> float:
  attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
  return 6 * matmul_params(cfg) + (attention / 2 if causal_halving else attention)


def matmul_peak(dtype="float32", n: int = 1024, repeats: int = 10, min_seconds: float = 1.0
                ) -> float:
  """FLOP/s of one device's best square matmul of this dtype, timed here and now: the best of at
  least `repeats` timings spread over at least `min_seconds`, so that a moment of contention on a
  shared machine does not pass for the peak; and the better of XLA's default compiler options
  and those a wide model's train step compiles with (research/cpu.py), timed in turn within the
  same `min_seconds`, so neither sets a low bar."""
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
