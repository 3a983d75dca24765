"""Benchmark shapes for the train step, timed beside a PyTorch eager reference of the same model.

  python -m launch.bench --config=experiments/bench.py:small --reference=torch

(about 1 minute on the 2-core CPU for 'small' with the default 3 x 10 steps each, 2 for 'medium';
--reference=torch needs `pip install -r requirements-bench.txt`). Presets:
  small      GPT-2 block, bytes (257 tokens), 4 layers, d_model 256, 4 heads, 256 x 8 tokens a step
  small4096  the same with a 4096-token BPE: the output projection grows 16x
  medium     8 layers, d_model 512, 8 heads, bytes
  deep16     'small' with 16 layers: compile time against depth
Each is the GPT-2 block in float32 with tied embeddings, learned positions and AdamW, the
choices launch/torch_reference.py implements, so the two steps do the same FLOPs.

  gpt2_124m  for a GPU (issue 8's target: >= 45% MFU on an H100): GPT-2 small's shapes, 12 layers,
             d_model 768, 12 heads, 1024 tokens, 32 rows a step, bfloat16 compute, scanned
             layers, attention_impl auto (cuDNN flash attention on a GPU). The vocabulary is
             padded to 50,304 rows as nanoGPT and llm.c pad GPT-2's 50,257: the same matmuls
             and 124.5M parameters, on byte tokens (GPT-2's BPE files are not shipped offline).
             Remat is one override away: --config.model.remat=dots.
"""

from research.config import default_config
from research.model.presets import apply_preset

PRESETS = ('small', 'small4096', 'medium', 'deep16', 'gpt2_124m')


def get_config(preset='small'):
  preset = preset or 'small'
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}: {", ".join(PRESETS)}')
  c = apply_preset(default_config(), 'gpt2')
  c.data.source = 'default'
  c.data.tokenizer = 'byte'
  # One causal sequence per row: the reference's SDPA then takes its is_causal path, and ours
  # computes the same rows (with document masking on, the reference needs an explicit mask).
  c.data.document_mask = False
  c.data.seq_len = 256
  c.model.num_layers = 4
  c.model.d_model = 256
  c.model.num_heads = 4
  c.train.batch_size = 8
  c.train.compute_dtype = 'float32'
  c.sample.num_samples = 0
  if preset == 'small4096':
    c.data.tokenizer = 'bpe'
    c.data.vocab_size = 4096
  elif preset == 'medium':
    c.model.num_layers = 8
    c.model.d_model = 512
    c.model.num_heads = 8
  elif preset == 'deep16':
    c.model.num_layers = 16
    c.model.scan_layers = True  # compare with 'small --config.model.scan_layers=True'
  elif preset == 'gpt2_124m':
    c.data.seq_len = 1024
    c.model.num_layers = 12
    c.model.d_model = 768
    c.model.num_heads = 12
    c.model.vocab_size = 50304
    c.model.scan_layers = True
    c.train.batch_size = 32
    c.train.compute_dtype = 'bfloat16'
  return c
