"""T5 Table 2 in miniature (Raffel et al. 2020): architecture x objective.

  python -m launch.sweep --config=experiments/objectives/t5_architectures.py:cpu --workdir=runs/t5_architectures
  python -m launch.report --workdir=runs/t5_architectures

Four architectures, each trained with span corruption (T5's denoising baseline) and with a
language-modelling objective (as T5: the prefix LM for the encoder-decoder and the prefix LM
architecture, causal LM for the decoder-only model), 3 seeds each, then scored by the common
downstream evaluation. Compute is matched as T5 matched it: the encoder-decoder has L encoder and
L decoder layers (about twice the parameters) and the decoder-only models L layers, so each token
passes through L layers either way (the same FLOPs per token up to the output projection, which
the report's cost table counts); "shared" is the encoder-decoder whose encoder runs the
decoder's blocks (about the decoder-only models' parameters). The measured time of the CPU
sweep is in docs/objectives.md.
"""

from experiments.objectives import common

EVALUATE = common.EVALUATE

ARMS = (
    ('ed-denoise', 'encoder-decoder, span corruption',
     {'model.arch': 'encoder_decoder', 'objective.name': 'span_corruption'}),
    ('ed-lm', 'encoder-decoder, prefix LM',
     {'model.arch': 'encoder_decoder', 'objective.name': 'prefix_lm'}),
    ('shared-denoise', 'enc-dec shared, span corruption',
     {'model.arch': 'encoder_decoder', 'model.share_layers': True,
      'objective.name': 'span_corruption'}),
    ('shared-lm', 'enc-dec shared, prefix LM',
     {'model.arch': 'encoder_decoder', 'model.share_layers': True, 'objective.name': 'prefix_lm'}),
    ('plm-denoise', 'prefix LM, span corruption',
     {'model.arch': 'prefix_lm', 'objective.name': 'span_corruption'}),
    ('plm-lm', 'prefix LM, prefix LM',
     {'model.arch': 'prefix_lm', 'objective.name': 'prefix_lm'}),
    ('dec-denoise', 'decoder-only, span corruption',
     {'model.arch': 'decoder', 'objective.name': 'span_corruption'}),
    ('dec-lm', 'decoder-only, causal LM', {'model.arch': 'decoder', 'objective.name': 'causal_lm'}),
)

# Raffel et al. 2020, Table 2: GLUE and SuperGLUE averages after fine-tuning
# (../shared/PAPERS.md, [V]).
REPORT = dict(
    kind='objectives',
    title='T5 Table 2 in miniature: architecture x objective',
    rows=[(g, label) for g, label, _ in ARMS],
    published=dict(
        source='Raffel et al. 2020, Table 2, GLUE / SuperGLUE averages after fine-tuning',
        columns=['GLUE', 'SuperGLUE'],
        rows={'ed-denoise': [83.28, 71.36], 'ed-lm': [79.56, 64.29],
              'shared-denoise': [82.81, 70.73], 'shared-lm': [79.60, 63.50],
              'plm-denoise': [81.82, 68.11], 'plm-lm': [79.68, 64.86],
              'dec-denoise': [74.70, 55.02], 'dec-lm': [73.78, 56.51]},
        compare={'GLUE': 'finetuned'},
    ),
)


def get_config(preset='cpu'):
  return common.base_config(preset)


def sweep(add, preset):
  del preset
  common.add_arms(add, [(g, o) for g, _, o in ARMS])
