"""Compile the sharded train step for a Cloud TPU slice, on this machine, without a TPU:

  python -m launch.compile --config=experiments/positional/extrapolation.py:paper \
      --topology=v5e:4x4 [--config.mesh.shape='(1,-1,1)'] [--json]

Needs libtpu (`pip install -r requirements-tpu.txt`), which compiles for the topology's devices;
nothing runs and no corpus is read (the vocabulary size follows from `data.tokenizer`). Prints
the per-device memory of the compiled step (arguments, outputs, temporaries, generated code)
against the chip's HBM, the FLOPs per step from XLA's cost analysis beside the analytic count of
research/train/flops.py, and the compile time; `--json` prints the same as one JSON object.
Exit status 0 when the step fits, 1 when it does not (XLA refuses to compile it), 2 for bad
input (config, topology, a batch or mesh that does not divide, no libtpu).
"""

import importlib.util
import json
import os
import re
import sys
import time

from absl import flags
from ml_collections import config_flags

from launch import cli
from research.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file (get_config)')
_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU generation and chips per axis, e.g. '
                                'v5e:4x4 (v5e-16), v5p:4x4x4 (v5p-64), v4:2x2x2, v6e:2x2')
_JSON = flags.DEFINE_bool('json', False, 'print one JSON object instead of the text report')

# HBM per chip, GiB, by the device kind libtpu reports.
HBM_GIB = {'TPU v3': 32, 'TPU v4': 32, 'TPU v5 lite': 16, 'TPU v5': 95, 'TPU v6 lite': 32}
_TOPOLOGY_RE = re.compile(r'^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$')
# Slice names for TPU_ACCELERATOR_TYPE; v3, v4 and v5p count TensorCores (2 per chip).
_ACCELERATOR = {'v3': ('v3', 2), 'v4': ('v4', 2), 'v5p': ('v5p', 2), 'v5e': ('v5litepod', 1),
                'v6e': ('v6e', 1)}
_GIB = 2 ** 30


def _libtpu_env(topology: str) -> None:
  """Env defaults, set before jax loads libtpu, for compiling on a machine that is no TPU VM.

  The accelerator type and hostnames keep libtpu from warning that it cannot find them;
  JAX_PLATFORMS=cpu keeps jax from opening a TPU (topology lookup works without one); and since
  no TPU is opened, several compiles may share the host despite libtpu's /tmp/libtpu_lockfile.
  """
  gen, dims = _TOPOLOGY_RE.match(topology).groups()
  prefix, cores = _ACCELERATOR.get(gen, ('v5litepod', 1))
  chips = 1
  for n in dims.split('x'):
    chips *= int(n)
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', f'{prefix}-{chips * cores}')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


def topology_devices(topology: str) -> list:
  """The devices of a TPU topology, from libtpu; ConfigError for a name libtpu refuses."""
  from jax.experimental import topologies
  dims = [int(n) for n in _TOPOLOGY_RE.match(topology).group(2).split('x')]
  dims += [1] * (3 - len(dims))
  # libtpu assumes hosts of 2x2x1 chips; a slice smaller than that is one host of its own size.
  host = [min(n, h) for n, h in zip(dims, (2, 2, 1))]
  options = {} if host == [2, 2, 1] else {'chips_per_host_bounds': host}
  if topology.startswith(('v4:', 'v5p:')):
    # As jax runs them: one device per chip, its two TensorCores fused (libtpu: one per core).
    options['chip_config_name'] = 'megacore'
  try:
    return list(topologies.get_topology_desc(platform='tpu', topology_name=topology,
                                             **options).devices)
  except Exception as e:  # pylint: disable=broad-except  # libtpu's INVALID_ARGUMENT
    reason = cli._one_line(e).removeprefix('INVALID_ARGUMENT: ')  # pylint: disable=protected-access
    raise ConfigError(f'--topology={topology}: {reason}') from None


def check_hosts(config, mesh, hosts: int) -> None:
  """loop.check_batch's process checks, for the topology's hosts rather than this machine's."""
  from research import distributed, parallel
  shards = parallel.batch_shards(mesh, config.mesh.rules)
  if shards % hosts:
    raise ConfigError(f'mesh.rules split the batch over {shards} devices, which does not '
                      f'divide over the topology\'s {hosts} hosts loading their own rows')
  distributed.check_batch_layout(parallel.batch_sharding(mesh, config.mesh.rules),
                                 (config.train.batch_size, 1), process_count=hosts)


def compile_step(config, topology: str) -> dict:
  """Lowers and compiles the train step for `topology`; its memory and FLOPs figures.

  A step that needs more than the chip's HBM does not compile: then 'fits' is False, the memory
  figures are None and 'compile_error' holds XLA's message.
  """
  import flax.linen as nn
  import jax
  import numpy as np
  from research import config as config_lib, parallel
  from research.data import pipeline
  from research.train import flops, trainer

  # The figures are of a compile; JAX_COMPILATION_CACHE_DIR, if set, would load a cached program.
  jax.config.update('jax_enable_compilation_cache', False)
  devices = topology_devices(topology)
  mesh = parallel.make_mesh(config.mesh.shape, devices)
  trainer.check_batch(config, mesh)  # over the devices; this process is the only one here
  hosts = len({d.process_index for d in devices})
  check_hosts(config, mesh, hosts)
  resolved = config_lib.resolve(config, vocab_size=pipeline.vocab_size(config))
  tr = trainer.make_trainer(resolved, mesh)

  def spec(x, sharding):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  key = jax.ShapeDtypeStruct((2,), np.uint32)  # a raw PRNGKey's shape; nothing is computed
  state = jax.tree.map(spec, tr.init.eval_shape(key), tr.state_sh)
  b, t = resolved.train.batch_size, resolved.data.seq_len
  batch = tr.batch_spec(b)  # the architecture's Batch keys (research/data/batch.py)
  tokens = b * pipeline.tokens_per_example(tr.lengths)

  n = len(devices)
  chips = len({tuple(d.coords) for d in devices})
  kind = devices[0].device_kind
  hbm_chip = HBM_GIB.get(kind)
  # v3 has one device per TensorCore, the two sharing the chip's HBM.
  hbm_device = hbm_chip * chips / n * _GIB if hbm_chip else None
  leaves = jax.tree.leaves(state)
  r = {
      'topology': topology, 'device_kind': kind, 'devices': n, 'chips': chips, 'hosts': hosts,
      'mesh': dict(mesh.shape), 'batch_size': b, 'seq_len': t,
      'num_params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'num_layers': resolved.model.num_layers,
      # XLA's cost analysis counts a while loop's body once: scanned layers are undercounted.
      'scan_layers': bool(resolved.model.get('scan_layers', False)),
      'compute_dtype': resolved.train.compute_dtype,
      'attention_impl': tr.cfg.attention_impl,  # model.attention_impl, 'auto' picked for the chip
      'train_state_bytes': sum(x.size * x.dtype.itemsize for x in leaves),
      'train_state_bytes_per_device': sum(
          int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves),
      'hbm_per_chip_gib': hbm_chip, 'hbm_per_device_bytes': hbm_device,
      'lengths': dict(tr.lengths), 'arch': resolved.model.arch,
      'analytic_flops_per_step': flops.train_flops_per_token(tr.cfg, tr.lengths) * tokens,
      'analytic_note': '6*N_matmul + 6*L*T*d_attn, causal attention halved (train/flops.py)',
  }

  t0 = time.perf_counter()
  with nn.logical_axis_rules(tr.rules):  # as loop.train lowers it
    lowered = tr.train_fn.lower(state, batch)
  t1 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    first = next((l.strip() for l in str(e).splitlines() if l.strip()), '')
    r.update(memory_per_device=None, fits=False,
             compile_error=first.removeprefix('RESOURCE_EXHAUSTED: '),
             xla_flops_per_device=None, xla_flops_per_step=None,
             xla_bytes_accessed_per_device=None, lower_seconds=t1 - t0,
             compile_seconds=time.perf_counter() - t1)
    return r
  t2 = time.perf_counter()

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  xla_flops = float(cost.get('flops', 0.0))
  r.update(
      memory_per_device={
          'arguments': mem.argument_size_in_bytes, 'outputs': mem.output_size_in_bytes,
          'aliased': mem.alias_size_in_bytes, 'temporaries': mem.temp_size_in_bytes,
          'generated_code': mem.generated_code_size_in_bytes, 'total': total,
      },
      fits=None if hbm_device is None else bool(total <= hbm_device), compile_error=None,
      xla_flops_per_device=xla_flops, xla_flops_per_step=xla_flops * n,
      xla_bytes_accessed_per_device=float(cost.get('bytes accessed', 0.0)),
      lower_seconds=t1 - t0, compile_seconds=t2 - t1)
  return r


def _size(x: float) -> str:
  return f'{x / _GIB:.2f} GiB' if x >= _GIB / 4 else f'{x / 2 ** 20:.1f} MiB'


def _flop(x: float) -> str:
  for unit, scale in (('PFLOP', 1e15), ('TFLOP', 1e12), ('GFLOP', 1e9)):
    if x >= scale:
      return f'{x / scale:.2f} {unit}'
  return f'{x / 1e6:.2f} MFLOP'


def _count(n: int, noun: str) -> str:
  return f'{n} {noun}{"s" * (n != 1)}'


def report(r: dict) -> str:
  """The text report of compile_step's figures."""
  m = r['memory_per_device']
  mesh = ', '.join(f'{k}={v}' for k, v in r['mesh'].items())
  split = r['train_state_bytes'] / r['train_state_bytes_per_device']
  lines = [
      f'{r["topology"]}: {r["devices"]} x {r["device_kind"]} ({_count(r["chips"], "chip")}, '
      f'{_count(r["hosts"], "host")}); mesh {mesh}',
      f'{r["num_params"]:,} parameters; global batch {r["batch_size"]} x {r["seq_len"]} tokens; '
      f'{r["compute_dtype"]} compute',
      f'train state {_size(r["train_state_bytes"])}: {_size(r["train_state_bytes_per_device"])} '
      f'per device ({"replicated" if split < 1.01 else f"split {split:.1f} ways on average"})',
  ]
  if m is None:
    lines += [f'does NOT fit in {r["hbm_per_chip_gib"]} GiB of HBM per chip; XLA: '
              f'{r["compile_error"]}',
              f'(gave up after {r["compile_seconds"]:.1f}s of compiling)']
    return '\n'.join(lines)
  lines += [
      'memory per device (XLA memory_analysis):',
      f'  arguments       {_size(m["arguments"]):>11}',
      f'  outputs         {_size(m["outputs"]):>11}  ({_size(m["aliased"])} of them aliased to '
      'the donated arguments)',
      f'  temporaries     {_size(m["temporaries"]):>11}',
      f'  generated code  {_size(m["generated_code"]):>11}',
      f'  total           {_size(m["total"]):>11}',
  ]
  if r['hbm_per_device_bytes'] is None:
    lines.append(f'  HBM of a {r["device_kind"]} chip: unknown')
  else:
    share = ('' if r['chips'] == r['devices'] else
             f', {_size(r["hbm_per_device_bytes"])} per device')
    lines.append(f'  HBM             {r["hbm_per_chip_gib"]:>7} GiB per chip{share}: '
                 f'{"fits" if r["fits"] else "does NOT fit"} '
                 f'({m["total"] / r["hbm_per_device_bytes"]:.0%})')
  ratio = r['xla_flops_per_step'] / r['analytic_flops_per_step']
  lines.append(f'FLOPs per step: XLA cost_analysis {_flop(r["xla_flops_per_step"])} '
               f'({_flop(r["xla_flops_per_device"])} per device), analytic '
               f'{_flop(r["analytic_flops_per_step"])}; XLA/analytic {ratio:.2f}')
  if r['scan_layers'] and r['num_layers'] > 1:
    lines.append(f'  (scanned layers: XLA counts the loop body once, not {r["num_layers"]} times; '
                 '--config.model.scan_layers=False counts them all)')
  lines.append(f'lowered in {r["lower_seconds"]:.1f}s, compiled in {r["compile_seconds"]:.1f}s')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  topology = _TOPOLOGY.value
  if not topology:
    cli.fail('--topology is required, e.g. --topology=v5e:4x4')
  if not _TOPOLOGY_RE.match(topology):
    cli.fail(f'--topology={topology}: expected a TPU generation and chips per axis, e.g. v5e:4x4 '
             'or v5p:4x4x4')
  _libtpu_env(topology)  # before anything imports jax, the experiment file included
  config = cli.load_config(_CONFIG)
  if importlib.util.find_spec('libtpu') is None:
    cli.fail('compiling for a TPU topology needs libtpu: pip install -r requirements-tpu.txt')
  r = compile_step(config, topology)
  print(json.dumps(r, indent=2) if _JSON.value else report(r))
  if r['fits'] is False:
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
