"""Evaluate a run's last checkpoint on held-out text at several lengths:

  python -m launch.evaluate --workdir=runs/quickstart --lengths=1x,1.5x,2x,4x,8x [--stride=0.5]

Non-overlapping windows at every length, and sliding windows with `--stride` (a fraction of the
length, or a token count; 0 turns them off). Writes <workdir>/eval_lengths.json: per length the
loss, perplexity, bits per byte and the per-position loss curve.
"""

from absl import flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory holding config.json and checkpoints')
_LENGTHS = flags.DEFINE_string('lengths', '1x,2x,4x,8x', 'token counts or multiples of the training length')
_STRIDE = flags.DEFINE_float('stride', 0.5, 'sliding stride: <1 a fraction of the length, >=1 tokens, 0 off')
_MAX_TOKENS = flags.DEFINE_integer('max_tokens', 16384, 'held-out tokens scored per length')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value:
    cli.fail('--workdir is required')
  from research import evaluate
  out = evaluate.evaluate_run(_WORKDIR.value, lengths=_LENGTHS.value, stride=_STRIDE.value,
                              max_tokens=_MAX_TOKENS.value)
  print(f'{"length":>8} {"ppl":>10} {"bits/byte":>10} {"sliding ppl":>12} {"sliding b/B":>12}')
  for length, e in out['lengths'].items():
    n, s = e['non_overlapping'], e.get('sliding')
    print(f'{length:>8} {n["perplexity"]:>10.2f} {n["bits_per_byte"]:>10.3f} '
          + (f'{s["perplexity"]:>12.2f} {s["bits_per_byte"]:>12.3f}' if s else ''))
  print(f'written to {_WORKDIR.value}/eval_lengths.json')


if __name__ == '__main__':
  cli.run(main)
