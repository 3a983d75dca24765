"""Benchmark one config's train step and print JSON:

  python -m launch.bench --config=experiments/quickstart.py [--steps=10 --repeats=3]
  python -m launch.bench --config=experiments/bench.py:small --reference=torch

Reports train tokens/s and step time (best of `repeats` timings of `steps` steps each, after
compilation), compile time, model FLOPs per token (research/train/flops.py says what is counted),
the float32/bfloat16 matmul peak measured on this device before and after the timings (the higher
of the two), MFU against it (mfu_of_measured_peak) and against the peak research/train/flops.py
picks (mfu: the datasheet's dense 16-bit figure on a known GPU or TPU in 16-bit compute, else
the measured one), and the loader's batches/s.

--reference=torch also trains launch/torch_reference.py's PyTorch eager copy of the same model
and optimizer from the same initial parameters on the same batches, timing the two alternately
(ours, torch, ours, torch, ...) so that both see the same machine load, and adds torch's best
tokens/s, the ratio ours / torch, every repeat's step time and both final losses.
PyTorch is optional: `pip install -r requirements-bench.txt`.

The loader's batches/s include the objective's host-side work (span corruption, UL2, ...: set
--config.objective.name), and loader_over_step is how many batches it makes in one step's time.

--vs_decoder (with --config.model.arch=encoder_decoder) also times, in the same run, a decoder of
the same width, objective and data whose depth gives the parameter count nearest the
encoder-decoder's, and adds both parameter counts and the ratio of their tokens/s (tokens: every
sequence's length, the encoder's and the decoder's, or the decoder's inputs and targets).

--decode times generation instead (docs/decoding.md), on the config's model with random
parameters (timing does not depend on the weights; end-of-text never stops a row):

  python -m launch.bench --config=experiments/quickstart.py --decode [--new_tokens=256,1024]

For each --new_tokens count it reports generated tokens/s of cached decoding (best of
--repeats runs after compiling) and of the full-recompute reference sampler at a sequence of the
prompt plus that many tokens (one run after compiling: it is the slow one), their ratio, whether
the two drew the same greedy tokens, and the compile times; and the cache's bytes per token and XLA's temporary bytes of the cached program. Rows
(--decode_rows) each hold the same --prompt_length-token prompt, greedy. Under learned positions
the table is widened to the longest decode (`model.max_len`); every other key is the config's.
"""

import json
import time

from absl import flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file (get_config)')
_STEPS = flags.DEFINE_integer('steps', 10, 'steps per timing')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'timings; the best is reported')
_DECODE = flags.DEFINE_boolean('decode', False, 'time generation (cached and full-recompute '
                                'decoding) instead of the train step')
_NEW_TOKENS = flags.DEFINE_list('new_tokens', ['256', '1024'], '--decode: new tokens per timing')
_DECODE_ROWS = flags.DEFINE_integer('decode_rows', 1, '--decode: rows decoded together')
_PROMPT_LENGTH = flags.DEFINE_integer('prompt_length', 16, '--decode: prompt tokens per row')
_VS_DECODER = flags.DEFINE_boolean(
    'vs_decoder', False, 'with an encoder_decoder config: also time a decoder of about the same '
    'parameter count (the same width, objective and data) in the same run')
_REFERENCE = flags.DEFINE_enum('reference', 'none', ['none', 'torch'],
                               'also time a reference implementation of the same train step, '
                               'alternating with ours')


def _torch_reference():
  try:
    from launch import torch_reference
  except ImportError as e:
    cli.fail(f'--reference=torch needs PyTorch ({e}); pip install -r requirements-bench.txt')
  return torch_reference


def bench_decode(config):
  """--decode: generated tokens/s with the cache and with full recompute, as a dict."""
  try:
    new_tokens = [int(n) for n in _NEW_TOKENS.value]
  except ValueError:
    cli.fail(f'--new_tokens={",".join(_NEW_TOKENS.value)}: expected token counts, e.g. 256,1024')
  if min(new_tokens) < 1 or _DECODE_ROWS.value < 1 or _PROMPT_LENGTH.value < 1:
    cli.fail('--new_tokens, --decode_rows and --prompt_length must be at least 1')
  import flax.linen as nn
  import jax
  import numpy as np
  from research import config as config_lib
  from research.data import pipeline
  from research.data.features import ExampleLengths
  from research.model import archs, decode, kv_cache
  from research.model.transformer import ModelConfig
  from research.train import step as step_lib

  jax.config.update('jax_enable_compilation_cache', False)
  prompt_len, rows = _PROMPT_LENGTH.value, _DECODE_ROWS.value
  longest = prompt_len + max(new_tokens)
  resolved = config_lib.resolve(config, vocab_size=pipeline.vocab_size(config))
  if config.model.positional == 'learned' and resolved.model.max_len < longest:
    config.model.max_len = longest
    resolved = config_lib.resolve(config, vocab_size=pipeline.vocab_size(config))
  cfg = ModelConfig.from_config(resolved)
  model = archs.build(cfg)
  converter = pipeline.converter(resolved, bos_id=0)
  lengths = {'length': longest, 'encoder_length': longest}
  params = jax.jit(lambda rng: nn.meta.unbox(step_lib.init_params(model, rng, lengths)))(
      jax.random.PRNGKey(resolved.seed))
  prompt = np.random.RandomState(0).randint(1, cfg.vocab_size, prompt_len).tolist()
  kwargs = dict(eot_id=-1, vocab_size=cfg.vocab_size)

  def cached(n):
    return decode.generate(model, params, [prompt], converter=converter, num_samples=rows,
                           max_new_tokens=n, **kwargs)

  def recompute_program(n):
    """The reference sampler's compiled program and its arguments, its sequences just holding
    the prompt and the new tokens (compiled apart: one run of it is long)."""
    model_lengths = converter.model_lengths(ExampleLengths(prompt_len, n, prompt_len + n + 1))
    batch, offsets, max_new = decode.generation_batch(converter, model_lengths, prompt, rows, n)
    assert max_new == n
    args = (params, jax.tree.map(jax.numpy.asarray, batch),
            jax.numpy.asarray(offsets, jax.numpy.int32), jax.random.PRNGKey(0),
            jax.numpy.float32(0))
    compiled = decode._sample.lower(model, *args, max_new=n, vocab_size=cfg.vocab_size).compile()
    return lambda: np.asarray(compiled(*args)).tolist()

  def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out

  results = []
  for n in new_tokens:
    first, out = timed(lambda: cached(n))
    assert all(len(r) == n for per in out for r in per)
    times = [timed(lambda: cached(n))[0] for _ in range(_REPEATS.value)]
    ref_compile, program = timed(lambda: recompute_program(n))
    ref_time, ref_out = timed(program)
    same = [r for per in out for r in per] == ref_out
    best = min(times)
    results.append({
        'new_tokens': n, 'cached_tokens_per_sec': rows * n / best,
        'recompute_tokens_per_sec': rows * n / ref_time, 'speedup': ref_time / best,
        'cached_seconds': best, 'recompute_seconds': ref_time,
        'cached_compile_and_first_run_seconds': first,
        'recompute_compile_seconds': ref_compile,
        'cached_seconds_per_repeat': times, 'greedy_tokens_equal': same,
    })
  layout = converter.prompt_layout([prompt] * rows, decode.prompt_bucket(prompt_len))
  n = max(new_tokens)
  memory = decode._sample_cached.lower(
      model, params, jax.tree.map(jax.numpy.asarray, layout.batch),
      *(jax.numpy.asarray(a, jax.numpy.int32) for a in (layout.last, layout.next_positions)),
      jax.random.PRNGKey(0), jax.numpy.float32(0), jax.numpy.int32(0), jax.numpy.float32(1),
      jax.numpy.int32(-1), jax.numpy.int32(cfg.vocab_size), max_new=n,
      memory_length=layout.memory_length, filtered=False).compile().memory_analysis()
  slots = decode.prompt_bucket(prompt_len) + n - 1
  return {
      'decode': results, 'device': jax.devices()[0].device_kind,
      'compute_dtype': cfg.dtype, 'arch': cfg.arch, 'positional': cfg.positional,
      'num_params': int(sum(x.size for x in jax.tree.leaves(params))),
      'rows': rows, 'prompt_length': prompt_len,
      'cache_bytes_per_token': kv_cache.bytes_per_token(cfg),
      'cache_bytes': rows * slots * kv_cache.bytes_per_token(cfg),
      'cache_slots': slots,
      'decode_temp_bytes': getattr(memory, 'temp_size_in_bytes', None),
      'parameter_bytes': int(sum(x.nbytes for x in jax.tree.leaves(params))),
  }


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = cli.load_config(_CONFIG)
  if _STEPS.value < 1 or _REPEATS.value < 1:
    cli.fail('--steps and --repeats must be at least 1')
  if _DECODE.value:
    print(json.dumps(bench_decode(config), indent=2))
    return
  reference = _torch_reference() if _REFERENCE.value == 'torch' else None
  if reference:
    reference.check_supported(config)
  if not _VS_DECODER.value:
    print(json.dumps(bench_train(config, reference), indent=2))
    return
  if config.model.arch != 'encoder_decoder' or reference:
    cli.fail('--vs_decoder compares an encoder_decoder config with a decoder; set '
             '--config.model.arch=encoder_decoder (and no --reference)')
  decoder = decoder_of_equal_size(config)
  out = {'encoder_decoder': bench_train(config, None), 'decoder': bench_train(decoder, None)}
  out['decoder_num_layers'] = decoder.model.num_layers
  out['params_ratio'] = out['encoder_decoder']['num_params'] / out['decoder']['num_params']
  out['tokens_per_sec_ratio'] = (out['encoder_decoder']['tokens_per_sec']
                                 / out['decoder']['tokens_per_sec'])
  print(json.dumps(out, indent=2))


def _num_params(config, vocab_size: int) -> int:
  """Parameters of the config's model, from its abstract init (nothing is allocated)."""
  import jax
  from research import config as config_lib
  from research.data import pipeline
  from research.model import archs
  from research.model.transformer import ModelConfig
  from research.train import step as step_lib
  resolved = config_lib.resolve(config, vocab_size=vocab_size)
  model = archs.build(ModelConfig.from_config(resolved))
  lengths = pipeline.model_lengths(resolved)
  shapes = jax.eval_shape(lambda: step_lib.init_params(model, jax.random.PRNGKey(0), lengths))
  return int(sum(x.size for x in jax.tree.leaves(shapes)))


def decoder_of_equal_size(config):
  """The config as a decoder (same objective, width and data) whose depth gives the parameter
  count nearest the encoder-decoder's: T5's comparison of the two at equal parameters."""
  import ml_collections
  from research.data import pipeline
  vocab_size = pipeline.prepare(config).tokenizer.vocab_size
  target = _num_params(config, vocab_size)
  best = None
  for layers in range(1, 3 * config.model.num_layers + 1):  # about 2 1/3 x is the answer
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.arch, c.model.num_layers, c.model.num_encoder_layers = 'decoder', layers, 0
    c.model.share_layers = False
    n = _num_params(c, vocab_size)
    if best is None or abs(n - target) < best[0]:
      best = (abs(n - target), c)
  return best[1]


def bench_train(config, reference):
  """The train step's figures (the module docstring), as a dict."""
  import jax
  from research import config as config_lib, parallel
  from research.data import pipeline
  from research.train import flops, trainer

  # compile_seconds is a compile's; JAX_COMPILATION_CACHE_DIR, if set, would load a cached program.
  jax.config.update('jax_enable_compilation_cache', False)
  # Measured first, while nothing else of ours is using the cores.
  peak = flops.total_peak(flops.matmul_peak(config.train.compute_dtype))
  mesh = parallel.make_mesh(config.mesh.shape)
  trainer.check_batch(config, mesh)
  data = pipeline.prepare(config)
  resolved = config_lib.resolve(config, vocab_size=data.tokenizer.vocab_size)
  tr = trainer.make_trainer(resolved, mesh)
  state = tr.init(jax.random.PRNGKey(resolved.seed))
  num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  ref = None
  if reference:
    # The same initial parameters, so the two runs train the same model on the same batches.
    ref = reference.TorchReference(resolved, seed=resolved.seed)
    ref.load_jax_params(jax.device_get(state.params))

  def batch(step):
    return jax.device_put(data.train_batch(step), tr.batch_sh)

  t = time.perf_counter()
  step_fn = tr.train_fn.lower(state, batch(0)).compile()
  compile_s = time.perf_counter() - t
  state, m = step_fn(state, batch(0))
  jax.block_until_ready(m)
  if ref:
    ref_m = ref.train_step(ref.batch(data.train_batch(0)))  # first-call allocations, untimed
  times, ref_times = [], []
  for r in range(_REPEATS.value):
    steps = [1 + r * _STEPS.value + i for i in range(_STEPS.value)]
    batches = [batch(s) for s in steps]
    t = time.perf_counter()
    for b in batches:
      state, m = step_fn(state, b)
    jax.block_until_ready(m)
    times.append((time.perf_counter() - t) / _STEPS.value)
    if ref:
      ref_batches = [ref.batch(data.train_batch(s)) for s in steps]
      t = time.perf_counter()
      for b in ref_batches:
        ref_m = ref.train_step(b)
      float(ref_m['loss'])
      ref_times.append((time.perf_counter() - t) / _STEPS.value)
  best = min(times)

  # Measured again after the timings: the higher of the two is the peak (a noisy neighbour can
  # only slow a measurement down).
  peak = max(peak, flops.total_peak(flops.matmul_peak(config.train.compute_dtype)))
  t = time.perf_counter()
  n = 0
  while time.perf_counter() - t < 1.0:
    data.train_batch(n)
    n += 1
  loader_bps = n / (time.perf_counter() - t)

  mfu_peak, peak_source = flops.mfu_peak(resolved.train.compute_dtype, peak)
  fpt = flops.train_flops_per_token(tr.cfg, tr.lengths)
  tokens = resolved.train.batch_size * pipeline.tokens_per_example(tr.lengths)
  out = {
      'tokens_per_sec': tokens / best, 'step_seconds': best, 'compile_seconds': compile_s,
      'flops_per_token': fpt, 'flops_note': '6*N_matmul + 6*L*T*d_attn (causal attention halved)',
      'matmul_peak_flops': peak, 'mfu_peak_flops': mfu_peak, 'mfu_peak_source': peak_source,
      'mfu': tokens / best * fpt / mfu_peak, 'mfu_of_measured_peak': tokens / best * fpt / peak,
      'loader_batches_per_sec': loader_bps, 'loader_over_step': loader_bps * best,
      'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
      'compute_dtype': resolved.train.compute_dtype, 'attention_impl': tr.cfg.attention_impl,
      'batch_size': resolved.train.batch_size, 'seq_len': resolved.data.seq_len,
      'num_params': num_params, 'step_seconds_per_repeat': times,
  }
  if ref:
    import torch
    ref_best = min(ref_times)
    out.update({
        'reference': 'torch', 'torch_version': torch.__version__,
        'torch_threads': torch.get_num_threads(),
        'torch_attention': 'segment mask' if ref.document_mask else 'is_causal',
        'torch_tokens_per_sec': tokens / ref_best, 'torch_step_seconds': ref_best,
        'torch_mfu': tokens / ref_best * fpt / mfu_peak,
        'torch_step_seconds_per_repeat': ref_times,
        'ratio_vs_torch': ref_best / best,
        # Both trained the same steps from the same parameters: these should nearly agree.
        'final_loss': float(m['loss']), 'torch_final_loss': float(ref_m['loss']),
    })
  return out


if __name__ == '__main__':
  cli.run(main)
