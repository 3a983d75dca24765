"""Scaling laws on the CPU: a model-size x token-budget grid and an IsoFLOP sweep, fitted three
ways (Hoffmann et al. 2022, approaches 1-3) and Kaplan's way, with a held-out prediction.

  python -m launch.sweep --config=experiments/scaling/chinchilla.py:cpu --workdir=runs/scaling
  python -m launch.report --workdir=runs/scaling

The ladder (research/scaling/ladder.py): one rule at every size, d_model = 16 x layers, heads of
8 dimensions, GELU MLP of 4 x d_model, learned positions, tied embeddings, on bytes (257 tokens,
so embeddings are a large share of the smallest models' parameters and a small one of the
largest: the counting question of Pearce & Song 2024). 1 to 8 layers: 3.3k to 1.59M non-embedding
parameters. Rows of 128 bytes, 8 a step (1,024 tokens), the learning rate 2e-3 x sqrt(64 /
d_model) (wider models want smaller steps), 16 warmup steps, AdamW as everywhere.

Every schedule ends at its run's last step, as Chinchilla requires, without training each
length separately: per size one long run at a constant rate (after warmup) to 3,145,728 tokens,
and every shorter budget a cooldown branched from its checkpoints (Hagele et al. 2024's
warmup-stable-decay, the last 20% decaying as 1 - sqrt), which by construction is the wsd run of
that length (tests/test_train_parts.py). The sweep also trains four budgets as separate cosine
runs, so the report can show how far a cooldown's loss is from cosine's here before the fits
rely on it. No token is repeated: the train split holds 3.93M bytes and the longest run reads
3.15M, 0.8 epochs (data.max_epochs=1 refuses any run that would read more).

Grid: each size at 1/8, 1/4, 1/2 and 1 of the long run. IsoFLOP: budgets of 3e10, 1e11, 3e11,
1e12 and 3e12 FLOPs (C = 6 N D, N all parameters), each with every size whose D = C / (6 N) lies
between 32 and 3,072 steps (33k to 3.15M tokens). Held out: the 9-layer model (2.26M
non-embedding parameters) at the long run's length, trained last; the report fits on the rest
and predicts its loss (written before that arm finishes, research/report/scaling.py). The sweep
took 59 minutes on an idle 2-core AMD EPYC (docs/scaling.md, with what it measured).

`:tpu12`, `:tpu24` and `:tpu36` take the ladder to accelerators (research/scaling/ladder.py's
default rule, 64 dimensions per head and per layer: 85M, 680M and 2.3B non-embedding parameters,
a 32k BPE, 2,048-token rows, 64 a step, bfloat16, FSDP, full remat), two orders of magnitude past the CPU
sweep, shown to fit by launch.compile (docs/scaling.md).
"""

import math

from research.config import default_config
from research.errors import ConfigError
from research.scaling import ladder as ladder_lib

VOCAB, SEQ_LEN, BATCH = 257, 128, 8
TOKENS_PER_STEP = SEQ_LEN * BATCH
COOLDOWN = 0.2
LADDER = dict(vocab_size=VOCAB, seq_len=SEQ_LEN, aspect_ratio=16, head_dim=8)
# The sweeps: `cpu` is the one the docs report; `smoke` is the same design in miniature, which
# tests run end to end (tests/test_scaling_sweep.py).
SWEEPS = {
    'cpu': dict(long_steps=3072, checkpoint_every=32, sizes=tuple(range(1, 9)), held_out=9,
                grid=(1 / 8, 1 / 4, 1 / 2, 1), budgets=(3e10, 1e11, 3e11, 1e12, 3e12),
                min_steps=32, cosine_check=((3, 1 / 4), (3, 1 / 2), (6, 1 / 4), (6, 1 / 2)),
                eval_batches=40),
    'smoke': dict(long_steps=64, checkpoint_every=8, sizes=(3, 4, 5), held_out=6,
                  grid=(1 / 2, 1), budgets=(2.2e10, 3.8e10), min_steps=8,
                  cosine_check=((4, 1 / 2),), eval_batches=2),
}
TPU_LADDER = dict(vocab_size=32_000, seq_len=2048, aspect_ratio=64, head_dim=64)
TPU_SIZES = (12, 24, 36)  # layers: 85M, 680M, 2.3B non-embedding parameters
CORPUS_TOKENS = 3_928_924  # bytes of the default corpus's train split (its token cache's meta)


def REPORT(preset):  # pylint: disable=invalid-name  # launch.sweep's REPORT, by preset
  s = SWEEPS[preset or 'cpu']
  return dict(kind='scaling', tokens_per_step=TOKENS_PER_STEP, held_out=f'L{s["held_out"]}',
              budgets=s['budgets'], cooldown=COOLDOWN)


def rung(layers, **ladder):
  return ladder_lib.rung(layers, **(ladder or LADDER))


def learning_rate(d_model: int) -> float:
  return 2e-3 * math.sqrt(64 / d_model)


def get_config(preset='cpu'):
  preset = preset or 'cpu'
  c = default_config()
  c.data.source = 'default'
  c.sample.num_samples = 0
  c.model.positional = 'learned'
  c.model.scan_layers = False
  c.train.schedule = 'wsd'
  c.train.cooldown_fraction, c.train.cooldown_shape = COOLDOWN, 'sqrt'
  c.train.min_lr_ratio = 0.0
  if preset in SWEEPS:
    c.data.tokenizer, c.data.seq_len = 'byte', SEQ_LEN
    c.data.max_epochs = 1.0
    c.train.batch_size, c.train.warmup_steps = BATCH, min(20, SWEEPS[preset]['min_steps'] // 2)
    c.eval.max_batches = SWEEPS[preset]['eval_batches']  # cpu: 320 held-out rows, 41k bytes
    c.train.log_every = SWEEPS[preset]['checkpoint_every']
    r = rung(SWEEPS[preset]['sizes'][-1] // 2)
  elif preset.startswith('tpu') and preset[3:] in {str(l) for l in TPU_SIZES}:
    c.data.tokenizer, c.data.vocab_size, c.data.seq_len = 'bpe', 32_000, TPU_LADDER['seq_len']
    c.train.batch_size, c.train.warmup_steps, c.train.steps = 64, 2_000, 50_000
    c.train.compute_dtype = 'bfloat16'
    c.model.scan_layers = True
    c.model.remat = 'full'
    c.mesh.shape = (1, -1, 1)  # FSDP: parameters and Adam moments split over every chip
    r = rung(int(preset[3:]), **TPU_LADDER)
  else:
    raise ValueError(f'unknown preset {preset!r}: {", ".join(SWEEPS)}, or tpu12, tpu24, tpu36')
  for key, value in size_overrides(r).items():
    c.model[key.split('.')[1]] = value
  c.train.learning_rate = learning_rate(r.d_model)
  return c


def size_overrides(r) -> dict:
  return {**r.overrides(), 'model.num_kv_heads': 0}


def cooldown_branch(steps: int, every: int) -> int:
  """The long run's checkpoint a cooldown to `steps` starts from: the last one at or before its
  stable phase ends, so the rates agree up to the branch."""
  stable_end = steps - round(COOLDOWN * steps)
  return (stable_end // every) * every


def arm_overrides(layers: int, steps: int, **extra) -> dict:
  r = rung(layers)
  return {**size_overrides(r), 'train.learning_rate': learning_rate(r.d_model),
          'train.steps': steps, **extra}


def isoflop_steps(budget: float, layers: int) -> int:
  return round(budget / (6 * rung(layers).total_params) / TOKENS_PER_STEP)


def sweep(add, preset):
  preset = preset or 'cpu'
  if preset not in SWEEPS:
    raise ConfigError(f'experiments/scaling/chinchilla.py sweeps {", ".join(SWEEPS)}; '
                      f':{preset} is for launch.compile')
  s = SWEEPS[preset]
  long_steps, every = s['long_steps'], s['checkpoint_every']
  if long_steps * TOKENS_PER_STEP > CORPUS_TOKENS:
    raise ConfigError(f'the long runs read {long_steps * TOKENS_PER_STEP:,} tokens, more than '
                      f'the {CORPUS_TOKENS:,} of the train split')
  for layers in s['sizes']:
    add(name=f'long-L{layers}', group=f'long-L{layers}',
        **arm_overrides(layers, long_steps, **{'train.schedule': 'constant',
                                               'checkpoint.every_steps': every,
                                               'checkpoint.keep': long_steps // every + 1}))
  wanted = {(layers, round(share * long_steps)) for layers in s['sizes'] for share in s['grid']}
  for budget in s['budgets']:
    sizes = [l for l in s['sizes'] if s['min_steps'] <= isoflop_steps(budget, l) <= long_steps]
    if len(sizes) < 3:
      raise ConfigError(f'the IsoFLOP budget {budget:.0e} has {len(sizes)} sizes between '
                        f'{s["min_steps"]} and {long_steps} steps; a parabola needs 3 (the '
                        'budget is too small or too large for the ladder)')
    wanted |= {(layers, isoflop_steps(budget, layers)) for layers in sizes}
  for layers, steps in sorted(wanted):
    branch = cooldown_branch(steps, every)
    add(name=f'L{layers}-{steps}', group=f'L{layers}',
        **arm_overrides(layers, steps, **{
            'train.init_from': f'{{sweep}}/long-L{layers}:{branch}' if branch else '',
            'eval.every_steps': steps, 'checkpoint.every_steps': steps}))
  for layers, share in s['cosine_check']:
    steps = round(share * long_steps)
    add(name=f'cosine-L{layers}-{steps}', group=f'cosine-L{layers}',
        **arm_overrides(layers, steps, **{'train.schedule': 'cosine',
                                          'eval.every_steps': steps}))
  held = s['held_out']
  add(name=f'L{held}-{long_steps}', group=f'L{held}',
      **arm_overrides(held, long_steps, **{'eval.every_steps': long_steps}))
