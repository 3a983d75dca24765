"""Evaluate a run's last checkpoint:

  python -m launch.evaluate --workdir=runs/quickstart --lengths=1x,1.5x,2x,4x,8x [--stride=0.5]
  python -m launch.evaluate --workdir=runs/lost_in_middle/rope --kind=kv_depths [--rows=256]

--kind=lengths (the default for text runs): held-out text at several lengths, non-overlapping
windows at every length and sliding windows with `--stride` (a fraction of the length, or a token
count; 0 turns them off), into <workdir>/eval_lengths.json (per length the loss, perplexity, bits
per byte and the per-position loss curve). --kind=kv_depths (the default for kv_retrieval runs):
retrieval accuracy by the gold pair's depth over --rows held-out rows, into kv_depths.json.
--kind=downstream: the measures every architecture and objective is compared on (infilling,
continuation, zero-shot multiple choice, fine-tuned classification; research/evaluate/
downstream.py), into downstream.json.
"""

from absl import flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory holding config.json and checkpoints')
_LENGTHS = flags.DEFINE_string('lengths', '1x,2x,4x,8x', 'token counts or multiples of the training length')
_STRIDE = flags.DEFINE_float('stride', 0.5, 'sliding stride: <1 a fraction of the length, >=1 tokens, 0 off')
_MAX_TOKENS = flags.DEFINE_integer('max_tokens', 16384, 'held-out tokens scored per length')
_KIND = flags.DEFINE_string('kind', '', 'evaluation (research/evaluate): lengths, kv_depths or '
                            'downstream; '
                            "'' the run's default")
_ROWS = flags.DEFINE_integer('rows', 256, 'kv_depths: held-out rows per depth')
_LENGTH = flags.DEFINE_integer('length', 0, 'downstream: tokens per held-out passage '
                               '(0: half of data.seq_len)')
_ITEMS = flags.DEFINE_integer('items', 200, 'downstream: rows per measure')
_FINETUNE_STEPS = flags.DEFINE_integer('finetune_steps', 100, 'downstream: fine-tuning steps '
                                       'of the classification measure')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value:
    cli.fail('--workdir is required')
  from research import evaluate
  module = evaluate.kind_module(_KIND.value or evaluate.default_kind(_WORKDIR.value))
  out = module.evaluate_run(_WORKDIR.value,
                            **{name: flags.FLAGS[name].value for name in module.OPTIONS})
  print(module.format_result(out))
  print(f'written to {_WORKDIR.value}/{module.RESULT}')


if __name__ == '__main__':
  cli.run(main)
