"""Write the ablation report of a sweep:

  python -m launch.report --workdir=runs/positional

Reads <workdir>/sweep.json and each arm's summary.json, metrics.jsonl and eval_lengths.json
(launch.evaluate); writes <workdir>/report.md (perplexity by scheme and evaluation length, mean ±
std over seeds, beside the published ALiBi numbers), extrapolation.png and per_position.png;
for a sweep of key-value retrieval arms (kv_depths.json), accuracy by depth and depth_accuracy.png.
Arms not yet finished or evaluated are named under the first table, so it can run mid-sweep.
"""

from absl import flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'sweep directory holding sweep.json and one directory per arm')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value:
    cli.fail('--workdir is required')
  from research import report  # matplotlib: only once the flags are known to be good
  out = report.write_report(_WORKDIR.value)
  print(out['table'])
  if out['missing']:
    print(f'missing: {", ".join(name for name, _ in out["missing"])}')
  print(f'written to {out["report"]} (plots: {", ".join(out["plots"])})')


if __name__ == '__main__':
  cli.run(main)
