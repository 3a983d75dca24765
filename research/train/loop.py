"""The training run: config -> data -> sharded state -> steps -> metrics, checkpoints, summary.

`train` neither prints nor parses flags: progress goes to an optional `reporter`, and a caller's
`stop` event (set on SIGTERM / Ctrl-C by the CLI) ends the run at the next step boundary with a
checkpoint saved, from which re-running the same command continues exactly.
"""

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import config as config_lib
from research import cpu, distributed, parallel
from research.data import cache, loader as loader_lib, sources, tokenizers
from research.errors import ConfigError
from research.model import attention, decode
from research.model.transformer import Decoder, ModelConfig
from research.objectives.causal_lm import causal_lm_batch
from research.train import checkpoint as ckpt_lib
from research.train import flops as flops_lib
from research.train import metrics as metrics_lib
from research.train import optim
from research.train import step as step_lib

RUN_FILES = ('config.json', 'metrics.jsonl', 'summary.json', 'data_split.json', 'samples.txt',
             'tokenizer.tiktoken', 'tokenizer.tiktoken.json', 'checkpoints')


class Reporter:
  """What the loop tells its caller; the CLI draws a progress bar from it. All optional."""

  def message(self, text: str) -> None: ...
  def start(self, *, first_step: int, total_steps: int) -> None: ...
  def train(self, step: int, metrics: dict) -> None: ...
  def eval(self, step: int, metrics: dict) -> None: ...
  def close(self) -> None: ...


@dataclasses.dataclass
class Data:
  tokenizer: object
  train: object  # .batch(step, process_index=, process_count=) -> this process's rows or Batch
  objective: object  # rows -> Batch (identity when the loader makes Batches itself)
  eval_batches: list
  split: dict
  unigram_bits: float  # entropy of the held-out bytes' unigram distribution, bits per byte

  def train_batch(self, step: int) -> dict:
    """This process's part of the global Batch for `step`."""
    return self.objective(self.train.batch(step, process_index=jax.process_index(),
                                           process_count=jax.process_count()))


def _local_slice(batch: dict) -> dict:
  """This process's contiguous rows of a global batch, as the train loader gives them."""
  per = len(next(iter(batch.values()))) // jax.process_count()
  i = jax.process_index()
  return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}


def prepare_data(config) -> Data:
  d = config.data
  if d.source == 'kv_retrieval':
    return _kv_retrieval_data(config)
  corpus = sources.load_corpus(d.source, text_field=d.text_field, eval_fraction=d.eval_fraction)

  def build():
    try:
      tok = tokenizers.build_tokenizer(d.tokenizer, vocab_size=d.vocab_size, corpus=corpus,
                                       cache_dir=d.cache_dir)
      return tok, cache.cached_streams(corpus, tok, d.cache_dir)
    except OSError as e:
      raise ConfigError(f'data.cache_dir={d.cache_dir}: cannot write the cache there '
                        f'({e.strerror or e})') from None

  # Process 0 builds the tokenizer and token cache first; the others then find them (a shared
  # cache_dir) or build the same ones deterministically (a cache per host).
  if distributed.is_lead():
    tok, streams = build()
  distributed.sync('token cache built')
  if not distributed.is_lead():
    tok, streams = build()
  train = loader_lib.Loader(streams['train'], seq_len=d.seq_len, batch_size=config.train.batch_size,
                            seed=config.seed, document_mask=d.document_mask)
  rows = loader_lib.eval_rows(streams['eval'], seq_len=d.seq_len,
                              max_rows=config.eval.max_batches * config.train.batch_size,
                              document_mask=d.document_mask)
  eval_batches = []
  b = config.train.batch_size
  for i in range(0, len(rows['tokens']), b):
    chunk = {k: v[i:i + b] for k, v in rows.items()}
    batch = causal_lm_batch(chunk)
    pad = b - len(chunk['tokens'])
    if pad:  # a short last batch: padded rows predict nothing and attend nothing
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    eval_batches.append(_local_slice(batch))
  # The baseline is measured on exactly the text the eval rows predict.
  evaluated = [tok.decode(row[1:]) for row in rows['tokens']]
  return Data(tok, train, causal_lm_batch, eval_batches, corpus.split,
              byte_unigram_bits(evaluated))


def _kv_retrieval_data(config) -> Data:
  """The synthetic key-value retrieval task (lost in the middle): no corpus, no tokenizer."""
  from research.objectives import kv_retrieval as kv
  d, b = config.data, config.train.batch_size
  shape = dict(seq_len=d.seq_len, num_pairs=d.kv_pairs, key_len=d.kv_key_len,
               value_len=d.kv_value_len)
  train = kv.KvLoader(seed=config.seed, batch_size=b, **shape)
  eval_batches = [kv.kv_batch(config.seed, i, batch_size=b, split='eval', **shape)
                  for i in range(config.eval.max_batches)]
  # The baseline: bits per predicted symbol of a model that knows only the symbol frequencies.
  targets = np.concatenate([e['targets'][e['loss_mask'] > 0] for e in eval_batches])
  p = np.bincount(targets) / len(targets)
  p = p[p > 0]
  split = {'source': 'kv_retrieval', 'eval': 'a disjoint random stream', **shape}
  return Data(kv.SyntheticTokenizer(), train, lambda batch: batch,
              [_local_slice(e) for e in eval_batches], split, float(-(p * np.log2(p)).sum()))


def byte_unigram_bits(texts) -> float:
  """Entropy of the texts' byte frequencies: bits/byte of a model that knows only those."""
  counts = np.zeros(256, np.int64)
  for t in texts:
    counts += np.bincount(np.frombuffer(t.encode('utf-8'), np.uint8), minlength=256)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def check_workdir(workdir: str, resolved, *, overwrite: bool, shown_as: str = '') -> bool:
  """True when workdir holds this same run (resume). Refuses a different run unless overwrite."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    old = json.load(f)
  diff = config_lib.config_diff(old, config_lib.normalized(resolved))
  if not diff:
    return True
  if not overwrite:
    # Values that resolve() derives from others follow the change the user made: list them last.
    diff.sort(key=lambda d: d.split(':')[0] in config_lib.DERIVED)
    shown = ', '.join(diff[:3]) + (f' and {len(diff) - 3} more' if len(diff) > 3 else '')
    raise ConfigError(f'--workdir={shown_as or workdir} holds a run with a different config '
                      f'({shown}); '
                      'pass --overwrite to replace it, or choose another workdir')
  return False


def clear_run(workdir: str) -> None:
  for name in os.listdir(workdir):
    if name in RUN_FILES or name.startswith('events.out.tfevents'):
      p = os.path.join(workdir, name)
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


class InMesh:
  """A jitted function traced under its mesh and logical-axis rules, so that the activations'
  sharding constraints (nn.with_logical_constraint) apply; flax drops them without a mesh."""

  def __init__(self, fn, mesh, rules):
    self.fn, self.mesh, self.rules = fn, mesh, rules

  def _context(self):
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def __call__(self, *args):
    with self._context():
      return self.fn(*args)

  def lower(self, *args):
    with self._context():
      return self.fn.lower(*args)

  def eval_shape(self, *args):
    with self._context():
      return jax.eval_shape(self.fn, *args)


@dataclasses.dataclass
class Trainer:
  """The model and its jitted, sharded functions for one resolved config on one mesh."""
  model: Decoder
  cfg: ModelConfig
  rules: tuple
  state_sh: object  # NamedShardings of the train state
  batch_sh: object
  repl: object
  init: InMesh  # rng -> sharded train state
  train_fn: InMesh  # (state, batch) -> (state, metrics)
  eval_fn: InMesh  # (params, batch, token_bytes) -> sums
  mesh: object = None


def make_trainer(resolved, mesh) -> Trainer:
  cfg = ModelConfig.from_config(resolved)
  platform = mesh.devices.flat[0].platform
  # 'auto' picked for the mesh's devices, not this process's default backend: launch.compile
  # compiles for TPU topologies from a CPU host.
  cfg = dataclasses.replace(cfg, attention_impl=attention.resolve_impl(
      cfg.attention_impl, dtype=cfg.dtype, has_relative_kv=cfg.positional == 'shaw',
      platform=platform))
  if cfg.attention_impl == 'jax_cudnn' and platform != 'gpu':
    raise ConfigError(f'model.attention_impl=jax_cudnn needs an NVIDIA GPU; this run is on '
                      f'{platform} (auto picks cuDNN where it applies)')
  model = Decoder(cfg)
  tx = optim.optimizer(resolved.train)
  rules = parallel.logical_rules(resolved.mesh.rules)
  seq_len = resolved.data.seq_len
  with nn.logical_axis_rules(rules):
    specs = step_lib.state_specs(model, tx, seq_len)
  state_sh = nn.logical_to_mesh_sharding(specs, mesh, rules)
  batch_sh = parallel.batch_sharding(mesh, resolved.mesh.rules)
  repl = parallel.replicated(mesh)
  def unboxed_init(rng):
    return nn.meta.unbox(step_lib.init_state(model, tx, rng, seq_len))

  check_shardable(jax.eval_shape(unboxed_init, jax.random.PRNGKey(0)), state_sh)
  init = InMesh(jax.jit(unboxed_init, out_shardings=state_sh), mesh, rules)
  options = cpu.compiler_options(platform, resolved.model.d_model)
  train_fn = InMesh(jax.jit(
      functools.partial(step_lib.train_step, model=model, tx=tx, train_cfg=resolved.train,
                        seed=resolved.seed),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=0,
      compiler_options=options), mesh, rules)
  eval_fn = InMesh(jax.jit(functools.partial(step_lib.eval_step, model=model),
                           in_shardings=(state_sh.params, batch_sh, repl), out_shardings=repl,
                           compiler_options=options), mesh, rules)
  return Trainer(model, cfg, rules, state_sh, batch_sh, repl, init, train_fn, eval_fn, mesh)


def check_batch(config, mesh) -> None:
  """The global batch must split evenly over the devices and the processes that load it."""
  b = config.train.batch_size
  shards = parallel.batch_shards(mesh, config.mesh.rules)
  if b % shards:
    raise ConfigError(f'train.batch_size={b} does not divide over the {shards} devices that the '
                      'batch is split across')
  if shards % jax.process_count():
    raise ConfigError(f'mesh.rules split the batch over {shards} devices, which does not divide '
                      f'over {jax.process_count()} processes loading their own rows')
  distributed.check_batch_layout(parallel.batch_sharding(mesh, config.mesh.rules),
                                 (b, config.data.seq_len))


def check_shardable(abstract_state, shardings) -> None:
  """Every sharded parameter dimension divides over its mesh axes (named, not a crash later)."""
  flat_x = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  for (path, x), sh in zip(flat_x, jax.tree.leaves(shardings)):
    for dim, axes in zip(x.shape, sh.spec):
      axes = (axes,) if isinstance(axes, str) else axes or ()
      size = int(np.prod([sh.mesh.shape[a] for a in axes]))
      if dim % size:
        raise ConfigError(f'mesh.rules shard {jax.tree_util.keystr(path)} (size {dim}) over '
                          f'{"x".join(axes)} = {size} devices, which does not divide it')


def train(config, workdir: str, *, overwrite: bool = False, reporter: Reporter | None = None,
          stop: threading.Event | None = None) -> dict:
  """Runs (or resumes) the run in workdir; returns summary.json's content."""
  reporter = reporter or Reporter()
  stop = stop or threading.Event()
  config_lib.validate(config)
  given_workdir, workdir = workdir, config_lib.workdir_path(workdir)
  mesh = parallel.make_mesh(config.mesh.shape)
  check_batch(config, mesh)

  t0 = time.time()
  data = prepare_data(config)
  resolved = config_lib.resolve(config, vocab_size=data.tokenizer.vocab_size)
  resume = check_workdir(workdir, resolved, overwrite=overwrite, shown_as=given_workdir)
  distributed.sync('workdir checked')  # every process decided before process 0 writes
  summary_path = os.path.join(workdir, 'summary.json')
  if resume and os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    if summary.get('step') == resolved.train.steps:
      reporter.message(f'{workdir} already holds this finished run; nothing to do')
      return summary
  tr = make_trainer(resolved, mesh)
  model, cfg, seq_len = tr.model, tr.cfg, resolved.data.seq_len
  lead = distributed.is_lead()
  if lead:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise ConfigError(f'--workdir={given_workdir}: cannot create it ({e.strerror})') from None
    if not resume:
      clear_run(workdir)
    _write_json(os.path.join(workdir, 'config.json'), config_lib.normalized(resolved))
    _write_json(os.path.join(workdir, 'data_split.json'), data.split)
    ranks = getattr(data.tokenizer, 'path', None)
    if ranks:  # the run carries its tokenizer, so it can be read without the cache
      shutil.copyfile(ranks, os.path.join(workdir, 'tokenizer.tiktoken'))
      if os.path.exists(ranks + '.json'):
        shutil.copyfile(ranks + '.json', os.path.join(workdir, 'tokenizer.tiktoken.json'))
  distributed.sync('workdir ready')
  reporter.message(f'data ready in {time.time() - t0:.1f}s: tokenizer {data.tokenizer.name} '
                   f'({data.tokenizer.vocab_size} tokens), rows of {config.data.seq_len}, '
                   f'{len(data.eval_batches)} eval batches')
  with nn.logical_axis_rules(tr.rules):
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 keep=resolved.checkpoint.keep)
    start = ckpt.latest_step() if resume else None
    if start is not None:
      abstract = ckpt_lib.abstract_like(tr.init.eval_shape(jax.random.PRNGKey(0)),
                                        tr.state_sh)
      state, loader_pos = ckpt.restore(start, abstract)
      if loader_pos['step'] != start or loader_pos['seed'] != resolved.seed:
        raise ConfigError(f'checkpoint {start} in {workdir} does not match this run')
      reporter.message(f'resumed from the checkpoint at step {start}')
    else:
      start = 0
      state = tr.init(jax.random.PRNGKey(resolved.seed))
    num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    token_bytes = jax.device_put(data.tokenizer.token_byte_lengths().astype(np.float32), tr.repl)
    # Jitted: optax's schedule op by op cost ~25 ms per logged row (1 s of a 200-step tiny run).
    schedule = jax.jit(optim.schedule(resolved.train))
    batch_sh, train_fn, eval_fn = tr.batch_sh, tr.train_fn, tr.eval_fn

    def global_batch(local):
      return jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(batch_sh, x), local)

    def batch_at(step):
      return global_batch(data.train_batch(step))

    total = resolved.train.steps
    next_batch = batch_at(start) if start < total else None
    t = time.time()
    compiled = train_fn.lower(state, next_batch or batch_at(0)).compile()
    compile_s = time.time() - t
    dtype = resolved.train.compute_dtype
    peak, peak_source = flops_lib.mfu_peak(
        dtype, flops_lib.total_peak(flops_lib.matmul_peak(dtype)))
    flops_per_token = flops_lib.train_flops_per_token(cfg, seq_len)
    tokens_per_step = resolved.train.batch_size * seq_len
    reporter.message(f'{num_params:,} parameters; train step compiled in {compile_s:.1f}s; '
                     f'{flops_per_token / 1e6:.1f} MFLOPs/token; {peak_source} matmul peak '
                     f'{peak / 1e9:.0f} GFLOP/s')

    def evaluate(params):
      sums = None
      for b in data.eval_batches:
        out = eval_fn(params, global_batch(b), token_bytes)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
      return step_lib.eval_metrics(jax.device_get(sums))

    writer = metrics_lib.MetricsWriter(workdir, resume_step=start, enabled=lead)
    log_every, eval_every = resolved.train.log_every, resolved.eval.every_steps
    ckpt_every = resolved.checkpoint.every_steps
    reporter.start(first_step=start, total_steps=total)
    last_eval = None
    window_t, window_steps = time.time(), 0
    step = start
    train_time = 0.0

    def stopping():  # every process stops at the same step, whichever one saw the signal
      return distributed.any_process(stop.is_set())

    while step < total and not stopping():
      batch = next_batch
      state, m = compiled(state, batch)
      step += 1
      window_steps += 1
      if step < total:
        next_batch = batch_at(step)  # built while the device runs this step
      if step % log_every == 0 or step == total:
        s, row = step, {k: float(v) for k, v in jax.device_get(m).items()}
        elapsed = time.time() - window_t
        train_time += elapsed
        tps = window_steps * tokens_per_step / max(elapsed, 1e-9)
        row.update(learning_rate=float(schedule(s - 1)), tokens_per_sec=tps,
                   mfu=tps * flops_per_token / peak)
        writer.write(s, 'train', row)
        reporter.train(s, row)
        window_steps = 0
      if step % eval_every == 0 or step == total:
        last_eval = evaluate(state.params)
        last_eval['bits_per_byte_unigram'] = data.unigram_bits
        writer.write(step, 'eval', last_eval)
        reporter.eval(step, last_eval)
      if step % ckpt_every == 0 or step == total:
        ckpt.save(step, state, {'step': step, 'seed': resolved.seed})
      if step % log_every == 0 or step == total:
        window_t = time.time()
    if step < total:  # stopped early; saves nothing when this step is already saved
      ckpt.save(step, state, {'step': step, 'seed': resolved.seed})
    ckpt.close()
    writer.close()
    reporter.close()
    if step < total:
      return {'interrupted_at_step': step}

    if last_eval is None:  # a finished run re-launched: evaluate its final state again
      last_eval = evaluate(state.params)
      last_eval['bits_per_byte_unigram'] = data.unigram_bits
    summary = {
        'step': step, 'eval': last_eval, 'num_params': num_params,
        'tokens_seen': step * tokens_per_step, 'flops_per_token': flops_per_token,
        'compile_seconds': compile_s, 'wall_seconds': time.time() - t0,
        'train_seconds_this_launch': train_time,
        'tokenizer': data.tokenizer.name, 'vocab_size': data.tokenizer.vocab_size,
        'byte_unigram_entropy_bits': data.unigram_bits,
        'devices': jax.device_count(), 'platform': jax.devices()[0].platform,
    }
    if resolved.sample.num_samples:
      summary['samples'] = sample_text(model, state.params, data.tokenizer, resolved)
    if lead:
      _write_json(os.path.join(workdir, 'summary.json'), summary)
      if summary.get('samples'):
        with open(os.path.join(workdir, 'samples.txt'), 'w') as f:
          f.write('\n\n'.join(summary['samples']) + '\n')
    return summary


def sample_text(model, params, tokenizer, resolved) -> list:
  s = resolved.sample
  prompt = tokenizer.encode(s.prompt) if s.prompt else []
  rows = decode.generate(model, params, [tokenizer.eot_id] + prompt, num_samples=s.num_samples,
                         max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                         seed=resolved.seed, seq_len=resolved.data.seq_len,
                         eot_id=tokenizer.eot_id, vocab_size=tokenizer.vocab_size)
  return [s.prompt + tokenizer.decode(r) for r in rows]


def _write_json(path: str, obj) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)
