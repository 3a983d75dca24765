"""Lost in the middle (Liu et al. 2023): key-value retrieval accuracy by the gold pair's depth.

  python -m launch.sweep --config=experiments/positional/lost_in_middle.py:cpu --workdir=runs/lost_in_middle
  python -m launch.report --workdir=runs/lost_in_middle

Each positional scheme is trained from scratch on the synthetic task (research/objectives/
kv_retrieval.py): `data.kv_pairs` random key -> value pairs, then a query key; the loss counts only
the query's value. Afterwards every arm is scored with the gold pair at 5 depths, first to last
(exact match of the value, teacher-forced argmax = greedy decoding), into <arm>/kv_depths.json.
"""

from research.config import default_config

SCHEMES = ('learned', 'sinusoidal', 'rope', 't5_bias', 'alibi', 'shaw', 'none')


def get_config(preset='cpu'):
  c = default_config()
  c.data.source = 'kv_retrieval'
  c.data.document_mask = True
  c.model.norm = 'layernorm'
  c.sample.num_samples = 0
  if preset != 'cpu':
    raise ValueError(f'unknown preset {preset!r}: cpu')
  c.data.kv_pairs = 10
  c.data.kv_key_len = 2
  c.data.kv_value_len = 1
  c.data.seq_len = 64  # the task takes 1 + 10 * 5 + 5 = 56 tokens
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.train.batch_size = 32
  c.train.steps = 600
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 50
  c.eval.every_steps = 200
  c.eval.max_batches = 4
  c.checkpoint.every_steps = 200
  return c


def sweep(add, preset):
  del preset
  for scheme in SCHEMES:
    add(name=scheme, group=scheme, **{'model.positional': scheme})


def evaluate_arm(workdir, summary):
  del summary
  from research.objectives import kv_retrieval
  kv_retrieval.evaluate_run(workdir, rows=256)
