"""launch.bench on a JSONL corpus the test writes: its JSON adds up."""

import json

from research import config as config_lib
from research.model.transformer import ModelConfig
from research.train import flops
from tests.conftest import TINY, run_cli


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
