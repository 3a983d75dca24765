"""What the objective tables share: one small model and corpus set-up, every arm scored by the
common downstream evaluation (research/evaluate/downstream.py), seeds.

The CPU preset: the default corpus (KJV) with a 4096-token BPE and 100 sentinels for every arm
(one vocabulary across a table, so the infilling rows and their sentinels are the same for all),
rows of 128 tokens, d_model 128 with 4 heads, T5's relative position bias, 2 decoder (and, in an
encoder-decoder, 2 encoder) layers, 32 rows a step, 300 steps. The paper-scale preset has T5-base's
shapes (12 + 12 layers, d_model 768, 12 heads, d_ff 3072, 512 input / 114 target tokens for span
corruption, as T5 packs them: 568 raw tokens) for accelerators, shown to fit by launch.compile.
"""

from research.config import default_config

SEEDS = (0, 1, 2)
EVALUATE = dict(kind='downstream', length=64, items=200, finetune_steps=60)


def base_config(preset='cpu'):
  preset = preset or 'cpu'
  c = default_config()
  c.data.source = 'default'
  c.data.tokenizer, c.data.vocab_size = 'bpe', 4096
  c.data.extra_ids = 100
  c.model.positional = 't5_bias'
  c.sample.num_samples = 0
  if preset == 'cpu':
    c.data.seq_len = 128
    c.model.d_model, c.model.num_heads, c.model.num_layers = 128, 4, 2
    c.model.num_encoder_layers = 2
    c.train.batch_size, c.train.steps = 32, 300
    c.train.learning_rate, c.train.warmup_steps = 2e-3, 30
    c.eval.every_steps, c.eval.max_batches = 300, 4
    c.checkpoint.every_steps = 150
  elif preset == 'paper':
    # T5-base (Raffel et al. 2020): 220M parameters as an encoder-decoder.
    c.data.seq_len = 568  # 512 inputs and 114 targets under span corruption (random_spans_helper)
    c.data.vocab_size = 32_000  # T5's SentencePiece size (T5 adds 100 extra ids; here 104 specials)
    c.model.d_model, c.model.num_heads, c.model.num_layers = 768, 12, 12
    c.model.num_encoder_layers, c.model.d_ff = 12, 3072
    c.model.activation = 'relu'
    c.model.use_bias = False
    c.model.norm = 'rmsnorm'
    c.model.scan_layers = True
    c.model.dropout = 0.1
    c.train.batch_size, c.train.steps = 128, 524_288
    c.train.learning_rate, c.train.warmup_steps = 1e-2, 10_000
    c.train.schedule = 'rsqrt'
    c.train.compute_dtype = 'bfloat16'
    c.eval.every_steps = c.checkpoint.every_steps = 5_000
  else:
    raise ValueError(f'unknown preset {preset!r}: cpu or paper')
  return c


def add_arms(add, groups):
  """groups: [(group, overrides)]; one arm per seed."""
  for group, overrides in groups:
    for seed in SEEDS:
      add(name=f'{group}-s{seed}', group=group, **overrides, seed=seed)
