"""launch.bench on a JSONL corpus the test writes: its JSON adds up."""

import json

import pytest

from research import config as config_lib
from research.model.transformer import ModelConfig
from research.train import flops
from tests.conftest import TINY, run_cli


@pytest.mark.slow
def test_bench_reports_consistent_figures(tmp_path, cache_dir):
  corpus = tmp_path / 'docs.jsonl'
  lines = [json.dumps({'body': f'Document {i}: ' + 'the quick brown fox jumps. ' * (20 + i)})
           for i in range(40)]
  corpus.write_text('\n'.join(lines) + '\n')
  compiled = tmp_path / 'compilation-cache'
  r = run_cli('launch.bench', '--config=experiments/quickstart.py', '--steps=2', '--repeats=2',
              f'--config.data.source={corpus}', '--config.data.text_field=body',
              f'--config.data.cache_dir={cache_dir}', *TINY,
              env={'JAX_COMPILATION_CACHE_DIR': str(compiled)})
  assert r.returncode == 0, r.stderr
  # Its compile time is a compile's: it neither reads nor writes JAX's persistent cache.
  assert not compiled.exists() or not any(compiled.iterdir())
  out = json.loads(r.stdout)
  assert out['tokens_per_sec'] > 0 and out['compile_seconds'] > 0
  assert abs(out['tokens_per_sec'] * out['step_seconds'] - 4 * 32) < 1e-6
  c = config_lib.default_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.data.seq_len = 1, 32, 2, 32
  cfg = ModelConfig.from_config(config_lib.resolve(c, vocab_size=257))
  assert out['flops_per_token'] == flops.train_flops_per_token(cfg, 32)
  assert abs(out['mfu'] - out['tokens_per_sec'] * out['flops_per_token']
             / out['matmul_peak_flops']) < 1e-9
  # On the CPU MFU divides by the measured peak (no datasheet figure).
  assert out['mfu_peak_source'] == 'measured'
  assert out['mfu_peak_flops'] == out['matmul_peak_flops']
  assert out['mfu_of_measured_peak'] == out['mfu']
  assert out['attention_impl'] == 'blocked'  # model.attention_impl=auto on the CPU
  assert out['matmul_peak_flops'] > 1e9 and out['loader_batches_per_sec'] > 0


@pytest.mark.slow
def test_vs_decoder_picks_the_decoder_nearest_the_encoder_decoder_in_parameters(tmp_path):
  """--vs_decoder's decoder: the same width and objective, the depth whose parameter count is
  nearest the encoder-decoder's (an encoder layer and a decoder layer with cross-attention weigh
  about 2 1/3 decoder layers at d_ff = 4 d)."""
  from launch import bench
  c = config_lib.default_config()
  c.data.source = 'kv_retrieval'  # synthetic: no corpus to tokenize
  c.data.cache_dir = str(tmp_path)
  c.model.arch, c.objective.name = 'encoder_decoder', 'span_corruption'
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.data.seq_len = 3, 64, 2, 64
  c.data.kv_pairs = 8
  decoder = bench.decoder_of_equal_size(c)
  assert decoder.model.arch == 'decoder' and decoder.objective.name == 'span_corruption'
  assert decoder.model.d_model == 64
  from research.data import pipeline
  vocab = pipeline.prepare(c).tokenizer.vocab_size
  counts = {n: bench._num_params(_with_layers(decoder, n), vocab) for n in (6, 7, 8)}
  target = bench._num_params(c, vocab)
  assert decoder.model.num_layers == min(counts, key=lambda n: abs(counts[n] - target)) == 7


def _with_layers(config, n):
  import ml_collections
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.num_layers = n
  return c
