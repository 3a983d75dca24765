"""BigScience's architecture x objective grid right after pre-training (Wang et al. 2022, "What
Language Model Architecture and Pretraining Objective Work Best for Zero-Shot Generalization?").

  python -m launch.sweep --config=experiments/objectives/bigscience.py:cpu --workdir=runs/bigscience
  python -m launch.report --workdir=runs/bigscience

Causal decoder (CD), non-causal decoder (ND, bidirectional over its inputs) and encoder-decoder
(ED), each with full language modelling (FLM: causal LM over the whole row, the loss on every
token), prefix language modelling (PLM) and span-corruption MLM, 3 seeds each, scored zero-shot
(continuation and multiple choice) and by the rest of the common downstream evaluation. As in the
paper, decoder-only models read an MLM example as one sequence, the loss on the targets. ND with
FLM is the causal decoder (its prefix is one token) and ED with FLM gives the encoder one token:
the paper trains neither, they are in the grid for completeness. The measured time of the CPU
sweep is in docs/objectives.md.
"""

from experiments.objectives import common

EVALUATE = common.EVALUATE
ARCHS = (('cd', 'CD', 'decoder'), ('nd', 'ND', 'prefix_lm'), ('ed', 'ED', 'encoder_decoder'))
OBJECTIVES = (('flm', 'FLM', 'causal_lm'), ('plm', 'PLM', 'prefix_lm'),
              ('mlm', 'MLM', 'span_corruption'))
ARMS = tuple((f'{a}-{o}', f'{al}:{ol}', {'model.arch': arch, 'objective.name': obj})
             for a, al, arch in ARCHS for o, ol, obj in OBJECTIVES)

# Wang et al. 2022, zero-shot average accuracy right after pre-training (EAI-Eval / T0-Eval),
# ../shared/PAPERS.md marks them [S]; the MLM arms there span 34.6-37.8 on EAI-Eval.
REPORT = dict(
    kind='objectives',
    title='BigScience (Wang et al. 2022): architecture x objective, right after pre-training',
    rows=[(g, label) for g, label, _ in ARMS],
    published=dict(
        source='Wang et al. 2022, zero-shot average accuracy after pre-training (EAI-Eval / '
               'T0-Eval), from a secondary source',
        columns=['EAI-Eval', 'T0-Eval'],
        rows={'cd-flm': [44.2, 42.4], 'nd-plm': [43.5, 41.8], 'ed-plm': [39.9, 41.7]},
        compare={'EAI-Eval': 'multiple_choice'},
        note=('The paper: right after pre-training CD:FLM > ND:PLM > ED:PLM zero-shot, and the '
              'MLM arms (34.6-37.8 on EAI-Eval) below them all; after multitask fine-tuning '
              'ED:MLM is best.'),
    ),
)


def get_config(preset='cpu'):
  return common.base_config(preset)


def sweep(add, preset):
  del preset
  groups = []
  for g, _, overrides in ARMS:
    # FLM: the loss on every token (PLM and MLM on the targets, as the paper).
    extra = {'objective.loss_on': 'all'} if overrides['objective.name'] == 'causal_lm' else {}
    groups.append((g, {**overrides, **extra}))
  common.add_arms(add, groups)
