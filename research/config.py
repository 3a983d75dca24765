"""Every config key, its default, and the validation of its value: the one place that knows.

Experiment files start from `default_config()` and change what they ablate; the CLI then applies
`--config.a.b=value` overrides. `validate` rejects unknown keys and bad values with a ConfigError
that names the key; `resolve` fills the values that follow from others (head_dim, d_ff, vocab).
"""

import json
import math
import os

import ml_collections

from research.errors import ConfigError

# key -> allowed values (model.arch and objective.name are the registries of research/model/archs.py
# and research/objectives; a test checks they agree).
CHOICES = {
    'model.arch': ('decoder', 'prefix_lm', 'encoder_decoder', 'encoder'),
    'objective.name': ('causal_lm', 'prefix_lm', 'span_corruption', 'bert_mlm', 'deshuffle',
                       'iid_drop', 'iid_replace', 'ul2'),
    'objective.loss_on': ('targets', 'all'),
    'model.norm': ('layernorm', 'rmsnorm'),
    'model.norm_position': ('pre', 'post'),
    'model.activation': ('relu', 'gelu', 'swiglu', 'geglu'),
    'model.positional': ('learned', 'sinusoidal', 'none', 'rope', 'alibi', 't5_bias', 'shaw'),
    'model.rope_layout': ('half', 'interleaved'),
    'model.attention_impl': ('auto', 'einsum', 'blocked', 'jax_xla', 'jax_cudnn'),
    'model.remat': ('none', 'full', 'dots', 'dots_no_batch'),
    'train.schedule': ('cosine', 'linear', 'rsqrt', 'constant', 'wsd'),
    'train.cooldown_shape': ('linear', 'sqrt'),
    'train.compute_dtype': ('float32', 'bfloat16'),  # float16 would need loss scaling
}

LOGICAL_AXES = ('batch', 'length', 'vocab', 'embed', 'heads', 'kv', 'mlp', 'layers')
MESH_AXES = ('data', 'fsdp', 'tensor')


def default_config() -> ml_collections.ConfigDict:
  """A small GPT-2-style decoder on the default corpus; experiment files start here."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'decoder'  # decoder | prefix_lm | encoder_decoder | encoder (research/model/archs.py)
  c.model.num_layers = 4  # the decoder's (or the only stack's) depth
  c.model.num_encoder_layers = 0  # encoder_decoder: the encoder's depth; 0: model.num_layers
  c.model.share_embeddings = True  # encoder_decoder: one token embedding for encoder and decoder
  # encoder_decoder: the encoder runs the decoder's blocks (T5 Table 2's "shared").
  c.model.share_layers = False
  c.model.d_model = 256
  c.model.num_heads = 4
  c.model.num_kv_heads = 0  # 0: as many as num_heads (multi-head); fewer: grouped-query attention
  c.model.head_dim = 0  # 0: d_model // num_heads
  c.model.d_ff = 0  # 0: 4 * d_model, or 8/3 * d_model rounded up to 64 for gated activations
  c.model.norm = 'layernorm'
  c.model.norm_position = 'pre'
  c.model.norm_eps = 1e-5
  c.model.activation = 'gelu'
  c.model.positional = 'learned'
  # Learned-position table size (reading past it is an error); 0: the model's longest sequence.
  c.model.max_len = 0
  c.model.rope_theta = 10000.0
  c.model.rope_layout = 'half'  # 'half': GPT-NeoX, HF Llama; 'interleaved': RoFormer, Meta Llama
  c.model.rope_fraction = 1.0  # rotate the first fraction of each head's dims (even count)
  c.model.t5_num_buckets = 32
  c.model.t5_max_distance = 128  # farther distances share the last bucket
  c.model.shaw_max_distance = 16  # relative distances clipped to [-k, k]
  c.model.tie_embeddings = True
  c.model.use_bias = True
  c.model.dropout = 0.0
  c.model.init_std = 0.02
  # 0: the tokenizer's size. A larger value pads the embedding and output rows (nanoGPT's 50304
  # for GPT-2's 50257: matmul-friendly shapes); padded ids are never inputs, targets or samples.
  c.model.vocab_size = 0
  # How attention is computed; every choice gives the same values (research/model/attention.py).
  # 'auto': cuDNN flash attention on GPU for 16-bit compute without shaw, 'blocked' on CPU, else
  # 'einsum'.
  c.model.attention_impl = 'auto'
  # One nn.scan over the layers: compile time flat in depth (use it for deep models and on
  # accelerators); False, a Python loop: faster on the CPU at a few layers (docs/performance.md).
  c.model.scan_layers = False
  c.model.remat = 'none'  # recompute each layer's activations in the backward: none/full/dots/...

  c.data = ml_collections.ConfigDict()
  c.data.source = 'default'  # 'default' (KJV Bible), a .txt/.jsonl file or folder, or hf:<builder>:<files>
  c.data.text_field = 'text'  # the field holding the text in JSONL and Hugging Face sources
  c.data.eval_fraction = 0.05  # held-out documents for non-default sources (default: fixed books)
  c.data.tokenizer = 'byte'  # 'byte', 'bpe' (trained on the train split), or a .tiktoken path
  c.data.vocab_size = 4096  # for data.tokenizer='bpe', including the end-of-text token
  # data.source='kv_retrieval': the synthetic key-value retrieval probe (lost in the middle):
  # kv_pairs pairs of kv_key_len-symbol keys and kv_value_len-symbol values, then a query key.
  c.data.kv_pairs = 20
  c.data.kv_key_len = 2
  c.data.kv_value_len = 2
  # Queries per row (each answer scored; later ones ask random pairs, with replacement); the depth
  # evaluation asks one.
  c.data.kv_queries = 1
  # > 0: train rows hold 1, 2, ... up to kv_pairs pairs in equal stages over the first N steps.
  c.data.kv_curriculum_steps = 0
  c.data.seq_len = 256  # tokens of text per example (research/objectives: each makes its lengths)
  # Sentinels (T5's extra ids) above the vocabulary, with [MASK] and UL2's [NLU] [NLG] [S2S];
  # -1: as the objective needs (none for causal_lm; else 100 or as many as it can use).
  c.data.extra_ids = -1
  c.data.document_mask = True  # attention stays inside each packed document
  c.data.cache_dir = '.cache'  # token caches and trained tokenizers, shared by every run
  c.data.max_epochs = 0.0  # > 0: refuse a run that would read the train split more often; 0: any

  c.objective = ml_collections.ConfigDict()
  c.objective.name = 'causal_lm'  # research/objectives: causal_lm, span_corruption, ul2, ...
  c.objective.noise_density = 0.15  # span_corruption, bert_mlm, iid_*: share of tokens corrupted
  c.objective.mean_span_length = 3.0  # span_corruption
  # Decoder-only archs: the loss on the targets only (T5, seqio) or on every token ('all').
  c.objective.loss_on = 'targets'
  # bert_mlm: a chosen token becomes [MASK] at this rate (-1: 0.8 on the encoder, as BERT; 0.9
  # on text-to-text archs, as T5), a random token at bert_random_rate, else stays.
  c.objective.bert_mask_rate = -1.0
  c.objective.bert_random_rate = 0.1
  # ul2: relative rates of its denoisers R1 R2 X1 X2 X3 X4 S (research/objectives/ul2.py).
  c.objective.ul2_rates = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
  c.objective.ul2_paradigm_tokens = True  # [NLU]/[NLG]/[S2S] opens each example's inputs

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 16
  c.train.learning_rate = 1e-3
  c.train.schedule = 'cosine'
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.1  # the schedule ends at learning_rate * min_lr_ratio
  # train.schedule=wsd: the last cooldown_fraction of the steps decays, 'linear' or 'sqrt'
  # (1 - sqrt(progress), Hagele et al. 2024's best).
  c.train.cooldown_fraction = 0.2
  c.train.cooldown_shape = 'sqrt'
  # '<workdir>:<step>': start from that run's checkpoint (same model and seed) and continue with
  # this run's schedule, e.g. a cooldown branched from a long constant-rate run. '': from scratch.
  c.train.init_from = ''
  c.train.weight_decay = 0.1
  c.train.decay_embeddings = False  # weight decay on embedding tables (norms and biases never)
  c.train.beta1 = 0.9
  c.train.beta2 = 0.95
  c.train.eps = 1e-8
  c.train.grad_clip = 1.0  # global-norm clipping; 0 turns it off
  c.train.z_loss = 0.0  # weight of log(Z)^2 (PaLM uses 1e-4)
  c.train.label_smoothing = 0.0
  c.train.compute_dtype = 'float32'  # parameters stay float32 whatever this is
  c.train.log_every = 10
  # A step whose loss or gradient norm is NaN or infinite stops the run (its last good checkpoint
  # kept); N > 0 skips such steps instead (no update; the step still counts, so the data and the
  # schedule stay where they were going) and stops at the (N+1)-th in a row.
  c.train.skip_nonfinite = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 250  # also at the last step
  c.eval.max_batches = 16  # held-out rows evaluated: max_batches * train.batch_size

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 250  # also at the last step and on SIGTERM / Ctrl-C
  c.checkpoint.keep = 2

  c.sample = ml_collections.ConfigDict()
  c.sample.num_samples = 3  # generated after training; 0 turns it off
  c.sample.max_new_tokens = 120
  c.sample.temperature = 0.8
  c.sample.prompt = ''  # '' starts each sample from the end-of-text token

  c.mesh = ml_collections.ConfigDict()
  # Over ('data', 'fsdp', 'tensor'); -1 takes the remaining devices. The rules below serve every
  # layout; the shape picks one: (-1, 1, 1) pure data parallel (the default), (1, -1, 1) FSDP
  # (parameters and optimizer state split over all devices, gathered layer by layer),
  # (1, -1, T) FSDP with T-way tensor parallelism (heads, MLP and vocabulary split T ways).
  c.mesh.shape = (-1, 1, 1)
  # logical axis -> mesh axis, a tuple of them, or None (replicated); axes not named replicate.
  # Activations use 'batch', 'length', 'heads', 'mlp', 'vocab' (their d_model axis is never split).
  c.mesh.rules = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('vocab', 'tensor'),
                  ('heads', 'tensor'), ('mlp', 'tensor'))
  return c


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def flat(config) -> dict:
  """{'model.d_model': 256, ...}."""
  return _flatten(config)


def validate(config) -> None:
  """Raises ConfigError naming the first unknown key or bad value."""
  allowed = flat(default_config())
  given = flat(config)
  for key in given:
    if key not in allowed:
      raise ConfigError(f'unknown config key {key!r}')
  for key in allowed:
    if key not in given:
      raise ConfigError(f'config is missing key {key!r} (start experiment files from '
                        'research.config.default_config())')
  for key, choices in CHOICES.items():
    if given[key] not in choices:
      raise ConfigError(f'{key}={given[key]!r} is not one of {", ".join(choices)}')

  def need(cond, key, what):
    if not cond:
      raise ConfigError(f'{key}={given[key]!r}: {what}')

  for key in ('model.num_layers', 'model.d_model', 'model.num_heads', 'data.seq_len',
              'train.steps', 'train.batch_size', 'train.log_every', 'eval.every_steps',
              'eval.max_batches', 'checkpoint.every_steps', 'checkpoint.keep',
              'data.kv_pairs', 'data.kv_key_len', 'data.kv_value_len', 'data.kv_queries',
              'model.t5_num_buckets', 'model.t5_max_distance', 'model.shaw_max_distance'):
    need(isinstance(given[key], int) and given[key] > 0, key, 'must be a positive integer')
  for key in ('model.num_kv_heads', 'model.head_dim', 'model.d_ff', 'model.max_len',
              'model.num_encoder_layers',
              'model.vocab_size', 'train.warmup_steps', 'sample.num_samples',
              'sample.max_new_tokens', 'data.vocab_size', 'train.skip_nonfinite',
              'data.kv_curriculum_steps'):
    need(isinstance(given[key], int) and given[key] >= 0, key, 'must be a non-negative integer')
  for key in ('model.dropout', 'train.label_smoothing', 'train.min_lr_ratio'):
    need(0.0 <= given[key] < 1.0 or (key == 'train.min_lr_ratio' and given[key] == 1.0),
         key, 'must be in [0, 1]' if key == 'train.min_lr_ratio' else 'must be in [0, 1)')
  need(isinstance(given['seed'], int) and given['seed'] >= 0, 'seed', 'must be a non-negative integer')
  for key in ('train.learning_rate', 'model.init_std', 'model.norm_eps', 'train.eps',
              'model.rope_theta'):
    need(given[key] > 0 and math.isfinite(given[key]), key, 'must be positive')
  for key in ('train.weight_decay', 'train.grad_clip', 'train.z_loss', 'sample.temperature'):
    need(given[key] >= 0 and math.isfinite(given[key]), key, 'must be non-negative')
  for key in ('train.beta1', 'train.beta2'):
    need(0.0 <= given[key] < 1.0, key, 'must be in [0, 1)')
  need(0.0 < given['data.eval_fraction'] < 1.0, 'data.eval_fraction', 'must be in (0, 1)')
  need(0.0 <= given['train.cooldown_fraction'] <= 1.0, 'train.cooldown_fraction',
       'must be in [0, 1]')
  need(given['data.max_epochs'] >= 0 and math.isfinite(given['data.max_epochs']),
       'data.max_epochs', 'must be non-negative (0: no limit)')
  need(0.0 < given['model.rope_fraction'] <= 1.0, 'model.rope_fraction', 'must be in (0, 1]')

  m = config.model
  kv = m.num_kv_heads or m.num_heads
  need(m.num_heads % kv == 0, 'model.num_kv_heads',
       f'must divide model.num_heads={m.num_heads}')
  if not m.head_dim:
    need(m.d_model % m.num_heads == 0, 'model.num_heads',
         f'must divide model.d_model={m.d_model} (or set model.head_dim)')
  if m.positional == 'sinusoidal':
    need(m.d_model % 2 == 0, 'model.d_model', 'must be even for sinusoidal positions')
  if m.positional == 'rope':
    head_dim = m.head_dim or m.d_model // m.num_heads
    need(m.rope_fraction * head_dim >= 2, 'model.rope_fraction',
         f'rotates no pair of the {head_dim} dimensions per head')
  # Causal buckets: half exact, the rest log-spaced from there to max_distance.
  need(m.t5_num_buckets >= 2, 'model.t5_num_buckets', 'must be at least 2')
  need(m.t5_max_distance > m.t5_num_buckets // 2, 'model.t5_max_distance',
       f'must exceed the {m.t5_num_buckets // 2} exactly-bucketed distances')
  if m.share_layers:
    need(m.arch == 'encoder_decoder' and m.num_encoder_layers in (0, m.num_layers),
         'model.share_layers', 'shares an encoder_decoder\'s blocks between its two stacks: '
         'needs model.arch=encoder_decoder and model.num_encoder_layers 0 or model.num_layers')
  need(isinstance(config.data.extra_ids, int) and config.data.extra_ids >= -1, 'data.extra_ids',
       'must be -1 (as the objective needs) or a number of sentinels >= 0')
  _validate_objective(config)
  need(config.train.warmup_steps <= config.train.steps, 'train.warmup_steps',
       f'must not exceed train.steps={config.train.steps}')
  if m.positional == 'shaw':
    need(m.attention_impl in ('auto', 'einsum', 'blocked'), 'model.attention_impl',
         'jax.nn.dot_product_attention cannot add shaw relative vectors; use einsum or blocked')
  if config.data.tokenizer == 'bpe':
    need(config.data.vocab_size > 257, 'data.vocab_size',
         'must exceed 257 (256 bytes + end-of-text) for a trained BPE')

  shape = tuple(config.mesh.shape)
  need(len(shape) == len(MESH_AXES) and all(isinstance(s, int) and (s > 0 or s == -1)
                                            for s in shape) and shape.count(-1) <= 1,
       'mesh.shape', f'must be {len(MESH_AXES)} positive sizes over {MESH_AXES}, one may be -1')
  for rule in config.mesh.rules:
    ok = len(rule) == 2 and rule[0] in LOGICAL_AXES
    targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],) if ok else ()
    ok = ok and all(t is None or t in MESH_AXES for t in targets)
    need(ok, 'mesh.rules', f'bad rule {rule!r}: (logical axis in {LOGICAL_AXES}, '
         f'mesh axis in {MESH_AXES} or a tuple of them or None)')


def _validate_objective(config) -> None:
  """The objective's own checks (rates, span lengths, rows long enough to corrupt) and that it
  runs on model.arch."""
  from research import objectives  # numpy only: cheap before JAX starts
  from research.data import pipeline
  arch, name = config.model.arch, config.objective.name
  runs_on = pipeline.task_archs(config)
  if arch not in runs_on:
    raise ConfigError(f'objective.name={name} cannot run on model.arch={arch} (it runs on '
                      f'{", ".join(runs_on)})')
  objective = objectives.build(config)
  extra = config.data.extra_ids
  if extra >= 0 and objective.extra_ids() > extra:
    raise ConfigError(f'data.extra_ids={extra} is too few sentinels for objective.name={name} '
                      f'at data.seq_len={config.data.seq_len} (it may use '
                      f'{objective.extra_ids()}); raise it or leave it at -1')


def resolved_extra_ids(config) -> int:
  """data.extra_ids with -1 resolved: -1 (no special tokens) for an objective that needs none,
  else at least T5's 100 sentinels."""
  from research import objectives
  if config.data.extra_ids >= 0:
    return config.data.extra_ids
  objective = objectives.build(config)
  return max(100, objective.extra_ids()) if objective.NEEDS_SPECIAL_TOKENS else -1


DERIVED = ('model.vocab_size', 'model.num_kv_heads', 'model.head_dim', 'model.d_ff',
           'model.max_len', 'model.num_encoder_layers', 'data.extra_ids',
           'objective.bert_mask_rate')


def resolve(config, *, vocab_size: int) -> ml_collections.ConfigDict:
  """A copy with derived values filled in, as written to <workdir>/config.json. vocab_size: the
  tokenizer's, special tokens included."""
  from research import objectives
  from research.data import pipeline
  c = ml_collections.ConfigDict(config.to_dict())
  c.objective.bert_mask_rate = objectives.build(c).o.bert_mask_rate
  c.data.extra_ids = resolved_extra_ids(c)
  m = c.model
  if m.vocab_size and m.vocab_size < vocab_size:
    raise ConfigError(f'model.vocab_size={m.vocab_size} but the tokenizer has {vocab_size} tokens '
                      '(0 takes its size; a larger value pads)')
  m.vocab_size = m.vocab_size or vocab_size
  m.num_kv_heads = m.num_kv_heads or m.num_heads
  m.head_dim = m.head_dim or m.d_model // m.num_heads
  if not m.d_ff:
    # Gated MLPs have three matrices; 8/3 keeps their parameter count at the 4x MLP's.
    m.d_ff = 4 * m.d_model if m.activation in ('relu', 'gelu') else (
        64 * math.ceil(8 * m.d_model / 3 / 64))
  m.num_encoder_layers = m.num_encoder_layers or m.num_layers
  longest = max(pipeline.model_lengths(c).values())
  if m.max_len and m.max_len < longest:
    raise ConfigError(f'model.max_len={m.max_len}: must be at least the model\'s longest sequence '
                      f'({longest} tokens at data.seq_len={c.data.seq_len} with '
                      f'objective.name={c.objective.name})')
  m.max_len = m.max_len or longest
  return c


def to_json(config) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def normalized(config) -> dict:
  """JSON-round-tripped dict, so configs compare equal whatever their tuple/list spelling."""
  return json.loads(to_json(config))


def load_json(path: str) -> ml_collections.ConfigDict:
  """A run's config.json; keys added since it was written take their defaults."""
  with open(path) as f:
    saved = json.load(f)
  merged = normalized(default_config())
  def merge(into, d):
    for k, v in d.items():
      if isinstance(v, dict) and isinstance(into.get(k), dict):
        merge(into[k], v)
      else:
        into[k] = v
  merge(merged, saved)
  return ml_collections.ConfigDict(merged)


# Keys that do not change the trained model: a resumed run may change them (e.g. resume on
# another mesh; orbax restores into the new shardings).
NOT_RUN_IDENTITY = ('data.cache_dir', 'mesh.shape', 'mesh.rules', 'model.attention_impl',
                    'model.remat', 'train.log_every', 'train.skip_nonfinite',
                    'eval.every_steps', 'checkpoint.every_steps', 'checkpoint.keep',
                    'sample.num_samples', 'sample.max_new_tokens', 'sample.temperature',
                    'sample.prompt')


def config_diff(old: dict, new: dict) -> list:
  """Keys (but NOT_RUN_IDENTITY) whose values differ between two normalized configs, 'key: a -> b'.

  A key missing from the old config (written before the key existed) counts as its default.
  """
  fa, fb = _flatten(old), _flatten(new)
  fd = _flatten(normalized(default_config()))
  for k in set(fb) - set(fa):
    if k in fd:
      fa[k] = fd[k]
  return [f'{k}: {fa.get(k)!r} -> {fb.get(k)!r}' for k in sorted(set(fa) | set(fb))
          if fa.get(k) != fb.get(k) and k not in NOT_RUN_IDENTITY]


def workdir_path(workdir: str) -> str:
  if not workdir:
    raise ConfigError('--workdir is required')
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'--workdir={workdir} exists and is not a directory')
  existing = path  # checked before any work, so a bad workdir costs nothing
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
    raise ConfigError(f'--workdir={workdir}: cannot create or write it ({existing} is not a '
                      'writable directory)')
  return path
