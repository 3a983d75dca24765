"""UL2 (Tay et al. 2022): the mixture of denoisers against single objectives.

  python -m launch.sweep --config=experiments/objectives/ul2.py:cpu --workdir=runs/ul2
  python -m launch.report --workdir=runs/ul2

Causal LM, prefix LM, span corruption and UL2's mixture (R, X and S denoisers with paradigm
tokens, uniform rates), on the decoder-only and the encoder-decoder architectures, 3 seeds each,
scored by the common downstream evaluation. The measured time of the CPU sweep is in
docs/objectives.md.
"""

from experiments.objectives import common

EVALUATE = common.EVALUATE
OBJECTIVES = (('clm', 'causal LM', 'causal_lm'), ('plm', 'prefix LM', 'prefix_lm'),
              ('span', 'span corruption', 'span_corruption'), ('ul2', 'UL2', 'ul2'))
ARCHS = (('dec', 'decoder', 'decoder'), ('ed', 'enc-dec', 'encoder_decoder'))
ARMS = tuple((f'{a}-{o}', f'{al}, {ol}', {'model.arch': arch, 'objective.name': obj})
             for a, al, arch in ARCHS for o, ol, obj in OBJECTIVES)

REPORT = dict(
    kind='objectives',
    title='UL2 (Tay et al. 2022): the mixture of denoisers against single objectives',
    rows=[(g, label) for g, label, _ in ARMS],
    published=dict(
        source='Tay et al. 2022 (UL2), qualitative (../shared/PAPERS.md)',
        columns=[], rows={},
        note=('The paper: UL2 matches or beats span corruption and causal LM on both fine-tuned '
              'NLU and 1-shot NLG, on the decoder-only and the encoder-decoder alike.'),
    ),
)


def get_config(preset='cpu'):
  return common.base_config(preset)


def sweep(add, preset):
  del preset
  common.add_arms(add, [(g, o) for g, _, o in ARMS])
