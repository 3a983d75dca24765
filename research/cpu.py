"""Settings for training on the CPU that live outside the model: the process's malloc, and the
XLA:CPU compiler options of the jitted steps, each chosen by timing launch.bench's presets
(docs/performance.md has the figures). The malloc setting changes no value; under either dot
library the measured losses agreed to the last digit printed."""

import ctypes
import os
import sys
from importlib import metadata, util

# glibc's mallopt parameters (malloc.h), and the largest block it serves from its heap: bigger
# ones are mmapped and unmapped at every malloc and free.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_MMAP_CEILING = 32 << 20

# XLA:CPU hands dots, reductions and elementwise fusions to its YNNPACK library by default. For
# the wider models its dots ran slower than XLA's Eigen ones (its batched attention products left
# the second core idle), so there only reductions go to YNNPACK. For narrower ones (the positional
# sweeps' d_model 128) YNNPACK's dots were the faster, so they keep XLA's defaults.
# The figures: docs/performance.md.
_YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
CPU_COMPILER_OPTIONS = {_YNN_FLAG: 'LIBRARY_FUSION_TYPE_REDUCE'}
EIGEN_DOTS_FROM_D_MODEL = 256


def will_run_on_cpu() -> bool:
  """Whether JAX will run on the CPU, decided without starting a backend: JAX_PLATFORMS names
  only cpu, or no accelerator plugin (a jax_plugins entry point, libtpu) is installed."""
  platforms = [p for p in os.environ.get('JAX_PLATFORMS', '').split(',') if p]
  if platforms:
    return platforms == ['cpu']
  return not metadata.entry_points(group='jax_plugins') and util.find_spec('libtpu') is None


def needs_large_temporaries(config) -> bool:
  """Whether a train step of `config` likely needs a temporary buffer above glibc's mmap
  ceiling, estimated before anything is compiled at 128 bytes per token, layer and model
  dimension (within the range XLA:CPU's buffers measured: docs/performance.md)."""
  m = config.model
  return 128 * config.train.batch_size * config.data.seq_len * m.d_model * m.num_layers > (
      _MMAP_CEILING)


def keep_freed_memory() -> bool:
  """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

  XLA:CPU allocates an executable's temporary buffer afresh at every call, above the largest size
  glibc serves from its heap (32 MB), so it is mmapped and unmapped each step and the kernel
  faults and zeroes every page again. One arena that neither mmaps nor trims serves the same
  memory every step. But XLA's compiler threads and a small step's dispatch then contend for the
  one arena's lock (slower compiles, and tiny steps at half speed), so only steps that need large
  temporaries want it (docs/performance.md has the figures). Call it before JAX starts its
  threads (importing jax starts none), which keep the arena they first used. Returns whether it
  applied (glibc only).
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  return all(mallopt(k, v) == 1 for k, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                             (_M_TRIM_THRESHOLD, -1)))


def compiler_options(platform: str, d_model: int):
  """jax.jit compiler_options for the steps of a model of width `d_model` on `platform` (None:
  XLA's defaults). A flag the user already gave in XLA_FLAGS wins."""
  if (platform != 'cpu' or d_model < EIGEN_DOTS_FROM_D_MODEL
      or _YNN_FLAG in os.environ.get('XLA_FLAGS', '')):
    return None
  return dict(CPU_COMPILER_OPTIONS)
