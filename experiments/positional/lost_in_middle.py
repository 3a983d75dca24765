"""Lost in the middle (Liu et al. 2023): key-value retrieval accuracy by the gold pair's depth.

  python -m launch.sweep --config=experiments/positional/lost_in_middle.py:cpu --workdir=runs/lost_in_middle
  python -m launch.report --workdir=runs/lost_in_middle

Each positional scheme is trained from scratch on the synthetic task (research/data/
kv_retrieval.py): `data.kv_pairs` random key -> value pairs, then a query key; the loss counts only
the query's value. Afterwards every arm is scored with the gold pair at 5 depths, first to last
(exact match of the value, teacher-forced argmax = greedy decoding), into <arm>/kv_depths.json.
"""

from research.config import default_config

SCHEMES = ('learned', 'sinusoidal', 'rope', 't5_bias', 'alibi', 'shaw', 'none')

# Every arm is scored with the gold pair at 5 depths (research/evaluate/kv_depths.py).
EVALUATE = dict(kind='kv_depths', rows=256)
REPORT = dict(kind='kv_depths', order=SCHEMES)


def get_config(preset='cpu'):
  c = default_config()
  c.data.source = 'kv_retrieval'
  c.data.document_mask = True
  c.model.norm = 'layernorm'
  c.sample.num_samples = 0
  if preset != 'cpu':
    raise ValueError(f'unknown preset {preset!r}: cpu')
  # Calibrated on 2 cores (rope): 6 pairs of 1-symbol keys and values, 128 rows a step, so each
  # step has 128 scored answers; loss fell from ln 64 to 2.58 in 1000 steps (2.5 minutes).
  c.data.kv_pairs = 6
  c.data.kv_key_len = 1
  c.data.kv_value_len = 1
  c.data.seq_len = 32  # the task takes 1 + 6 * 4 + 4 = 29 tokens
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.train.batch_size = 128
  c.train.steps = 1000
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 50
  c.eval.every_steps = 500
  c.eval.max_batches = 4
  c.checkpoint.every_steps = 500
  return c


def sweep(add, preset):
  del preset
  for scheme in SCHEMES:
    add(name=scheme, group=scheme, **{'model.positional': scheme})
