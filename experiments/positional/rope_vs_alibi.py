"""RoPE against ALiBi past the training length: the README's worked example of a sweep.

  python -m launch.sweep --config=experiments/positional/rope_vs_alibi.py --workdir=runs/rope_vs_alibi
  python -m launch.report --workdir=runs/rope_vs_alibi
"""

from research.config import default_config

# After training, launch.sweep evaluates each arm at these multiples of data.seq_len.
EVALUATE = dict(lengths='1x,2x,4x', stride=0.5, max_tokens=8192)


def get_config(arg=None):
  del arg  # `--config=file.py:arg` would pass it here
  c = default_config()  # every key at its default; change only what the experiment needs
  c.data.tokenizer = 'bpe'  # 4096 tokens, trained on the training books in about a second
  c.data.seq_len = 64
  c.data.document_mask = False  # one stream: positions run past 64 when evaluated longer
  c.model.d_model = 128
  c.train.steps = 200
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 20
  c.sample.num_samples = 0
  return c


def sweep(add, arg):
  del arg
  for scheme in ('rope', 'alibi'):  # one run per add(), in <workdir>/<name>/
    add(name=scheme, **{'model.positional': scheme})
