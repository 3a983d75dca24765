"""Model FLOPs per token and the matmul peak that MFU divides by.

Train FLOPs per token = 6 * N_matmul + 6 * L * T * d_attn, where N_matmul counts every weight that
takes part in a matmul (attention and MLP projections and the output projection over the
vocabulary, but not embedding lookups, positional tables, norms or biases), and the second term is
the attention score and value matmuls (2 * 2 * T * d_attn per layer forward, x3 for forward +
backward) HALVED for causal masking, since only half the query-key pairs are computed usefully.
This is Kaplan et al.'s C = 6N + 6 n_layer n_ctx d_attn; PaLM's MFU does not halve (12 L T d).

The peak MFU divides by: on the CPU the matmul rate measured here and now (no datasheet figure
fits a shared, throttled host); on GPUs and TPUs the vendor's dense 16-bit figure for that chip
when compute is 16-bit, the convention of the published MFUs we compare with (llm.c, MaxText,
PaLM), else (float32, or a chip not in the table) the measured rate.
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
