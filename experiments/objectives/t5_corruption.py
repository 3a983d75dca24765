"""T5 Tables 6 and 7 (Raffel et al. 2020): corruption rate and corrupted span length.

  python -m launch.sweep --config=experiments/objectives/t5_corruption.py:cpu --workdir=runs/t5_corruption
  python -m launch.report --workdir=runs/t5_corruption

Table 6: i.i.d. corruption with each run of corrupted tokens replaced by one sentinel (T5's
"replace corrupted spans") at 10, 15, 25 and 50%. Table 7: at 15%, i.i.d. against span
corruption with mean span lengths 2, 3, 5 and 10. The i.i.d. 15% arm is in both. 3 seeds each on
the encoder-decoder of experiments/objectives/common.py. The measured time of the CPU sweep is in
docs/objectives.md.
"""

from experiments.objectives import common

EVALUATE = common.EVALUATE

ARMS = tuple(
    [(f'iid-{r}', f'i.i.d., {r}%', {'objective.name': 'iid_replace',
                                      'objective.noise_density': r / 100})
     for r in (10, 15, 25, 50)]
    + [(f'span-{m}', f'span length {m}, 15%', {'objective.name': 'span_corruption',
                                                'objective.mean_span_length': float(m)})
       for m in (2, 3, 5, 10)])

# Raffel et al. 2020, Tables 6 and 7: GLUE and SuperGLUE averages (../shared/PAPERS.md, [V]).
REPORT = dict(
    kind='objectives',
    title='T5 Tables 6 and 7: corruption rate and span length (encoder-decoder)',
    rows=[(g, label) for g, label, _ in ARMS],
    published=dict(
        source='Raffel et al. 2020, Table 6 (rates, i.i.d.) and Table 7 (span lengths at 15%)',
        columns=['GLUE', 'SuperGLUE'],
        rows={'iid-10': [82.82, 69.55], 'iid-15': [83.28, 71.36], 'iid-25': [83.00, 70.48],
              'iid-50': [81.27, 70.33], 'span-2': [83.54, 72.20], 'span-3': [83.49, 72.53],
              'span-5': [83.40, 72.23], 'span-10': [82.85, 70.44]},
        compare={'GLUE': 'finetuned'},
        note=('T5: only a 50% rate clearly hurts; span lengths 2-5 are slightly better than i.i.d., '
              '10 slightly worse.'),
    ),
)


def get_config(preset='cpu'):
  c = common.base_config(preset)
  c.model.arch = 'encoder_decoder'
  return c


def sweep(add, preset):
  del preset
  common.add_arms(add, [(g, o) for g, _, o in ARMS])
