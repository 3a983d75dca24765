"""Length extrapolation of the seven positional schemes (Press et al. 2022, ALiBi, Table/Fig. 1).

CPU preset (2 cores, the whole sweep in about 30 minutes: 7 schemes x 2 seeds):
  python -m launch.sweep --config=experiments/positional/extrapolation.py:cpu --workdir=runs/extrapolation
  python -m launch.report --workdir=runs/extrapolation
Paper-scale presets for accelerators: `:paper` (16 layers, d=1024, trained at 1024 tokens) and
`:paper512` (the same trained at 512).

Each scheme is trained at a short length and evaluated at 1x, 1.5x, 2x, 4x and 8x of it, in
non-overlapping and sliding windows. Documents are not masked (`data.document_mask=False`):
like the paper's WikiText-103 setup, the model reads one contiguous stream, so positions grow
past the training length at evaluation instead of restarting at every chapter.
"""

from research.config import default_config

SCHEMES = ('learned', 'sinusoidal', 'rope', 't5_bias', 'alibi', 'shaw', 'none')
SEEDS = (0, 1)

EVALUATE = dict(kind='lengths', lengths='1x,1.5x,2x,4x,8x', stride=0.5, max_tokens=8192)

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
  c.data.tokenizer = 'bpe'
  c.data.vocab_size = 4096
  c.data.document_mask = False
  c.model.positional = 'alibi'  # each arm sets its own
  c.model.norm = 'layernorm'
  c.model.activation = 'gelu'
  c.model.tie_embeddings = True
  c.train.schedule = 'cosine'
  c.sample.num_samples = 0
  if preset == 'cpu':
    c.data.seq_len = 64  # evaluated up to 512
    c.model.num_layers = 4
    c.model.d_model = 128
    c.model.num_heads = 4
    c.train.batch_size = 16
    c.train.steps = 300
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 30
    c.eval.every_steps = 150
    c.eval.max_batches = 8
    c.checkpoint.every_steps = 150
  elif preset in ('paper', 'paper512'):
    # Press et al.: 16 layers, d=1024, 8 heads, FFN 4096, trained at 512 or 1024 tokens.
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
  return c


def sweep(add, preset):
  del preset  # every preset sweeps the same arms
  for scheme in SCHEMES:
    for seed in SEEDS:
      add(name=f'{scheme}-s{seed}', group=scheme, **{'model.positional': scheme, 'seed': seed})
