"""Length extrapolation of the seven positional schemes (Press et al. 2022, ALiBi, Table/Fig. 1).

CPU preset (2 cores; 7 schemes x 3 seeds, each trained and then evaluated at 1x-8x): about 2.7
minutes an arm on the quiet 2-core Intel Xeon, about an hour for the sweep (docs/positional.md):
  python -m launch.sweep --config=experiments/positional/extrapolation.py:cpu --workdir=runs/extrapolation
  python -m launch.report --workdir=runs/extrapolation
Paper-scale presets for accelerators: `:paper` (16 layers, d=1024, trained at 1024 tokens) and
`:paper512` (the same trained at 512).

Each scheme is trained at a short length and evaluated at 1x, 1.5x, 2x, 4x and 8x of it, in
non-overlapping and sliding windows. Documents are not masked (`data.document_mask=False`):
like the paper's WikiText-103 setup, the model reads one contiguous stream, so positions grow
past the training length at evaluation instead of restarting at every chapter.

The learned table holds `model.max_len` = 8x the training length rows (every evaluation length);
the rows past the training length are never trained, which is what evaluating a learned table
past its training length means (reading past the table is an error).

Why bytes, not a BPE: the CPU preset must train, in minutes, models whose loss falls with
context, or positions they never saw cannot cost them anything. A 4096-token BPE at 300 steps
left a model near its unigram perplexity that used little context; a byte model must use the
letters before it to spell a word, so its per-position loss falls over the first tens of bytes
and an unseen position breaks what it learned.
"""

from research.config import default_config

SCHEMES = ('learned', 'sinusoidal', 'rope', 't5_bias', 'alibi', 'shaw', 'none')
SEEDS = (0, 1, 2)
MULTIPLES = (1, 1.5, 2, 4, 8)  # evaluation lengths, in training lengths

# 16k held-out tokens per length: 32 windows per seed at 8x for the per-position curve.
EVALUATE = dict(kind='lengths', lengths=','.join(f'{m:g}x' for m in MULTIPLES), stride=0.5,
                max_tokens=16384)

# Press, Smith & Lewis 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
# Length Extrapolation" (ALiBi), ICLR 2022: WikiText-103 validation perplexity of 16-layer,
# d_model=1024 models trained at L=1024, non-overlapping windows of L_valid tokens
# (../shared/PAPERS.md marks them [S], from a secondary source). None: out of memory.
REPORT = dict(
    kind='extrapolation',
    order=SCHEMES,  # rows, colours and markers in this order
    published=dict(
        source='Press et al. 2022, ALiBi, WikiText-103, trained at L=1024',
        short='Press et al. 2022, WikiText-103',
        train_length=1024,
        lengths=(1024, 1524, 2024, 3024, 6024, 16024),
        names={'sinusoidal': 'sinusoidal', 'rope': 'rotary', 't5_bias': 'T5 bias',
               'alibi': 'ALiBi'},
        perplexity={
            'sinusoidal': (19.34, 29.82, 51.09, 96.46, 214.02, 453.32),
            'rope': (19.33, 22.59, 31.17, 35.67, 54.78, 106.99),
            't5_bias': (18.80, 18.42, 18.34, 18.62, 21.76, None),
            'alibi': (18.66, 18.22, 18.05, 17.92, 18.01, 17.98),
        },
        note=('Numbers taken from a secondary source, not yet checked against the paper. A '
              '16-layer, d=1024 model on WikiText-103 is far from these runs: compare only the '
              'shape (Table 4 against the ratios here), not the absolute values.'),
    ),
)


def get_config(preset='cpu'):
  c = default_config()
  c.data.source = 'default'
  c.data.document_mask = False
  c.model.positional = 'alibi'  # each arm sets its own
  c.model.norm = 'layernorm'
  c.model.activation = 'gelu'
  c.model.tie_embeddings = True
  c.train.schedule = 'cosine'
  c.sample.num_samples = 0
  if preset == 'cpu':
    # Bytes (the module docstring says why): 64 bytes is about a dozen words, and 8x of it, 512,
    # is still cheap to evaluate.
    c.data.tokenizer = 'byte'
    c.data.seq_len = 64
    c.model.num_layers = 4
    c.model.d_model = 128
    c.model.num_heads = 4
    c.train.batch_size = 16
    # Calibrated on rope: 300 steps left 2.58 bits/byte, 600 steps 2.25 with a per-position loss
    # still falling past the first 16 bytes; 600 steps of 7 schemes x 3 seeds fit the hour.
    c.train.steps = 600
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 50
    c.eval.every_steps = 300
    c.eval.max_batches = 8
    c.checkpoint.every_steps = 300
  elif preset in ('paper', 'paper512'):
    # Press et al.: 16 layers, d=1024, 8 heads, FFN 4096, trained at 512 or 1024 tokens.
    c.data.tokenizer = 'bpe'
    c.data.vocab_size = 4096
    c.data.seq_len = 1024 if preset == 'paper' else 512
    c.model.num_layers = 16
    c.model.d_model = 1024
    c.model.num_heads = 8
    c.model.d_ff = 4096
    c.model.dropout = 0.1
    c.model.scan_layers = True  # 16 layers compile as one (a minute for a v5e-16, not ten)
    c.train.batch_size = 64
    c.train.steps = 50_000
    c.train.learning_rate = 2e-4
    c.train.warmup_steps = 2_000
    c.train.compute_dtype = 'bfloat16'
    c.eval.every_steps = 2_000
    c.checkpoint.every_steps = 2_000
  else:
    raise ValueError(f'unknown preset {preset!r}: cpu, paper or paper512')
  # The learned table covers every evaluation length (its rows past seq_len stay untrained).
  c.model.max_len = int(max(MULTIPLES) * c.data.seq_len)
  return c


def sweep(add, preset):
  del preset  # every preset sweeps the same arms
  for scheme in SCHEMES:
    for seed in SEEDS:
      add(name=f'{scheme}-s{seed}', group=scheme, **{'model.positional': scheme, 'seed': seed})
