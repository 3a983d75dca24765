"""T5 Table 4 (Raffel et al. 2020): pre-training objectives on the encoder-decoder.

  python -m launch.sweep --config=experiments/objectives/t5_objectives.py:cpu --workdir=runs/t5_objectives
  python -m launch.report --workdir=runs/t5_objectives

Prefix LM, BERT-style (T5's variant: 15% i.i.d., 90% [MASK], 10% random, the whole original as
target), deshuffling, and span corruption (the baseline) as a further row; 3 seeds each, the
encoder-decoder of experiments/objectives/common.py, the common downstream evaluation. The
measured time of the CPU sweep is in docs/objectives.md.
"""

from experiments.objectives import common

EVALUATE = common.EVALUATE

ARMS = (
    ('prefix_lm', 'prefix LM', {'objective.name': 'prefix_lm'}),
    ('bert', 'BERT-style', {'objective.name': 'bert_mlm'}),
    ('deshuffle', 'deshuffling', {'objective.name': 'deshuffle'}),
    ('span', 'span corruption (baseline)', {'objective.name': 'span_corruption'}),
)

# Raffel et al. 2020, Table 4 (../shared/PAPERS.md, [V]).
REPORT = dict(
    kind='objectives',
    title='T5 Table 4: pre-training objectives (encoder-decoder)',
    rows=[(g, label) for g, label, _ in ARMS],
    published=dict(
        source='Raffel et al. 2020, Table 4',
        columns=['GLUE', 'CNNDM', 'SQuAD', 'SGLUE', 'EnDe', 'EnFr', 'EnRo'],
        rows={'prefix_lm': [80.69, 18.94, 77.99, 65.27, 26.86, 39.73, 27.49],
              'bert': [82.96, 19.17, 80.65, 69.85, 26.78, 40.03, 27.41],
              'deshuffle': [73.17, 18.59, 67.61, 58.47, 26.11, 39.30, 25.62],
              'span': [83.28, 19.24, 80.88, 71.36, 26.98, 39.82, 27.65]},
        compare={'GLUE': 'finetuned', 'SGLUE': 'finetuned'},
    ),
)


def get_config(preset='cpu'):
  c = common.base_config(preset)
  c.model.arch = 'encoder_decoder'
  return c


def sweep(add, preset):
  del preset
  common.add_arms(add, [(g, o) for g, _, o in ARMS])
