"""One evaluation for every architecture and objective (kind 'downstream'): the measures the
objective tables compare, written to <workdir>/downstream.json.

Objectives' training losses differ in kind, so T5 and BigScience compare them downstream. Here,
on the held-out split, with rows fixed by the downstream seed (the same rows for every run that
shares the corpus and tokenizer), each measure written as examples that the run's own feature
converter turns into its Batch:

1. infilling: bits per target byte on span-corrupted rows (T5's span corruption, density 0.15,
   mean span 3): how well the model restores the spans (needs sentinels: data.extra_ids);
2. continuation: bits per byte of the second half of held-out passages given the first (an
   encoder-decoder reads the first half in its encoder);
3. multiple choice, zero-shot: a passage's first half with its true second half against three
   second halves of other passages, chosen by likelihood (BigScience's zero-shot protocol in
   miniature); chance 0.25;
4. fine-tuned classification: the run is fine-tuned for the same few steps on a supervised
   text-to-text task made from the corpus's structure, then scored by rank classification on
   held-out examples. For the default corpus: which of the eight held-out books a passage comes
   from (chance 0.125). For a source without such labels: which of the eight longest held-out
   documents, with passages of each document split between fine-tuning and testing.

Prompts are written as the run's objective writes its inputs: followed by end-of-text for the
text-to-text objectives (T5's format), straight on for causal_lm. An architecture that cannot
read a measure's examples (the encoder cannot generate) gets the measure marked not applicable,
with the reason, rather than a number.
"""

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from research import objectives
from research.data import cache, features, loader as loader_lib, pipeline, sources, tokenizers
from research.errors import ConfigError
from research.train import step as step_lib
from research.train import trainer as trainer_lib
from research.train.checkpoint import restore_run

RESULT = 'downstream.json'
OPTIONS = ('length', 'items', 'finetune_steps')  # launch.evaluate's flags for evaluate_run

SEED = 0  # the downstream rows' seed, whatever the run's: every run is scored on the same rows
CHOICES = 4
CLASSES = 8


@dataclasses.dataclass
class Context:
  """What the measures need of one restored run."""
  resolved: object
  tr: object
  params: object
  tokenizer: object
  converter: object
  stream: object  # the held-out token stream
  corpus: object
  eos_after_inputs: bool
  step: int = 0

  @property
  def batch_size(self) -> int:
    return self.resolved.train.batch_size


@functools.partial(jax.jit, static_argnames=('model',))
def _nll_sums(model, params, batch, token_bytes_V):
  """Per row: the loss-masked negative log-likelihood (nats) and the bytes its targets spell."""
  logits = step_lib.forward(model, params, batch)
  _, nll_BT = step_lib.token_losses(logits, batch['targets'])
  mask_BT = batch['loss_mask']
  return (nll_BT * mask_BT).sum(-1), (jnp.take(token_bytes_V, batch['targets']) * mask_BT).sum(-1)


def _example(inputs_BI, targets_BL, eos: int, eos_after_inputs: bool, eos_after_targets=False):
  """Rows of token lists (all of one length per side) as an example dict."""
  def side(x_BX, with_eos):
    x_BX = np.asarray(x_BX, np.int64)
    if with_eos:
      x_BX = np.concatenate([x_BX, np.full((len(x_BX), 1), eos)], axis=1)
    return x_BX
  inputs_BI = side(inputs_BI, eos_after_inputs)
  targets_BL = side(targets_BL, eos_after_targets)
  return objectives.example(inputs_BI, np.ones(inputs_BI.shape, bool), targets_BL,
                            np.ones(targets_BL.shape, bool))


def _score(ctx: Context, example: dict):
  """(nll nats, bytes) per row of the example, through the run's converter and model."""
  lengths = features.ExampleLengths(example['inputs'].shape[1], example['targets'].shape[1],
                                    example['inputs'].shape[1] + example['targets'].shape[1])
  batch = ctx.converter(example, lengths)
  token_bytes = jnp.asarray(ctx.tokenizer.token_byte_lengths(), jnp.float32)
  b = ctx.batch_size
  nll, nbytes = [], []
  n = len(batch['inputs'])
  for i in range(0, n, b):
    chunk = pipeline.pad_rows({k: v[i:i + b] for k, v in batch.items()}, b)
    out = _nll_sums(ctx.tr.model, ctx.params, jax.tree.map(jnp.asarray, chunk), token_bytes)
    nll.append(np.asarray(out[0])[:min(b, n - i)])
    nbytes.append(np.asarray(out[1])[:min(b, n - i)])
  return np.concatenate(nll), np.concatenate(nbytes)


def _rows(ctx: Context, length: int, count: int) -> np.ndarray:
  """`count` held-out rows of `length` tokens, spread over the split (loader.eval_rows)."""
  rows = loader_lib.eval_rows(ctx.stream, seq_len=length, max_rows=count, document_mask=False)
  return rows['tokens'][:, :length]


def _bits(nll, nbytes) -> dict:
  return {'bits_per_byte': float(nll.sum() / max(nbytes.sum(), 1) / math.log(2)),
          'bytes': int(nbytes.sum()), 'rows': int(len(nll))}


def infilling(ctx: Context, *, length: int, items: int, **_) -> dict:
  if not isinstance(ctx.tokenizer, tokenizers.WithSpecialTokens):
    raise ConfigError('the run has no sentinel tokens (data.extra_ids=-1 with causal_lm); give '
                      'every run of a comparison data.extra_ids=100')
  c = _as_span_corruption(ctx.resolved, length)
  objective = objectives.build(c)
  if objective.extra_ids() > ctx.tokenizer.extra_ids:
    raise ConfigError(f'rows of {length} tokens need {objective.extra_ids()} sentinels; the run '
                      f'has {ctx.tokenizer.extra_ids}')
  tokens = _rows(ctx, length, items)
  draws = objectives.Draws(SEED, 'downstream', 0, num_rows=len(tokens))
  example = objective(tokens, np.ones_like(tokens), draws, pipeline.special_ids(ctx.tokenizer))
  return _bits(*_score(ctx, example))


def _as_span_corruption(resolved, length: int):
  import ml_collections
  c = ml_collections.ConfigDict(resolved.to_dict())
  c.objective.name, c.objective.noise_density, c.objective.mean_span_length = (
      'span_corruption', 0.15, 3.0)
  c.data.seq_len = length
  return c


def continuation(ctx: Context, *, length: int, items: int, **_) -> dict:
  tokens = _rows(ctx, length, items)
  half = length // 2
  example = _example(tokens[:, :half], tokens[:, half:], ctx.tokenizer.eot_id,
                     ctx.eos_after_inputs)
  return _bits(*_score(ctx, example))


def multiple_choice(ctx: Context, *, length: int, items: int, **_) -> dict:
  """Each item: a passage's first half and CHOICES second halves, the true one at a random
  place; the choice with the lowest negative log-likelihood (all have `length // 2` tokens)."""
  tokens = _rows(ctx, length, items)
  n, half = len(tokens), length // 2
  if n < CHOICES:
    raise ConfigError(f'the held-out split has {n} rows of {length} tokens; need {CHOICES}')
  rng = np.random.default_rng([SEED, 1])
  # Distractors: second halves of other passages (an offset 1..n-1 never picks the item itself).
  offsets = np.stack([rng.choice(np.arange(1, n), CHOICES - 1, replace=False) for _ in range(n)])
  others = (np.arange(n)[:, None] + offsets) % n
  gold = rng.integers(0, CHOICES, n)
  candidates = np.empty((n, CHOICES), np.int64)
  for i in range(n):
    row = list(others[i])
    row.insert(gold[i], i)
    candidates[i] = row
  contexts = np.repeat(tokens[:, :half], CHOICES, axis=0)
  endings = tokens[candidates.reshape(-1), half:]
  nll, _ = _score(ctx, _example(contexts, endings, ctx.tokenizer.eot_id, ctx.eos_after_inputs))
  picked = nll.reshape(n, CHOICES).argmin(axis=1)
  return {'accuracy': float((picked == gold).mean()), 'items': int(n), 'chance': 1 / CHOICES}


def _labelled_passages(ctx: Context, length: int):
  """(passages [P, length], class index [P], class names, task) from the held-out documents."""
  stream, corpus = ctx.stream, ctx.corpus
  starts = np.append(np.asarray(stream.doc_starts), len(stream.tokens))
  docs = [np.asarray(stream.tokens[starts[i] + 1:starts[i + 1]]) for i in range(len(starts) - 1)]
  if corpus.eval_labels:
    names = sorted(set(corpus.eval_labels))
    labels = [names.index(label) for label in corpus.eval_labels]
    task = f'which of the {len(names)} held-out books a passage of {length} tokens comes from'
  else:
    longest = sorted(range(len(docs)), key=lambda i: -len(docs[i]))[:CLASSES]
    names = [f'document {k + 1}' for k in range(len(longest))]
    labels = [longest.index(i) if i in longest else -1 for i in range(len(docs))]
    task = (f'which of the {len(names)} longest held-out documents a passage of {length} '
            'tokens comes from')
  passages, classes = [], []
  for doc, label in zip(docs, labels):
    for s in range(0, len(doc) - length + 1, length) if label >= 0 else ():
      passages.append(doc[s:s + length])
      classes.append(label)
  if len(set(classes)) < 2:
    raise ConfigError(f'the held-out split has no two classes with passages of {length} tokens')
  return np.asarray(passages), np.asarray(classes), names, task


def finetuned(ctx: Context, *, length: int, items: int, finetune_steps: int) -> dict:
  """Fine-tune a copy of the run for finetune_steps steps on (passage -> class name), then rank
  the class names by likelihood for each held-out passage."""
  plength = max(8, length // 2)
  passages, classes, names, task = _labelled_passages(ctx, plength)
  # Balanced: as many held-out passages of every class (a fifth of the rarest class's, at most
  # items in all), so chance is 1 / classes; the rest are fine-tuned on, drawn class by class.
  rng = np.random.default_rng([SEED, 2])
  by_class = [rng.permutation(np.flatnonzero(classes == k)) for k in range(len(names))]
  per_class = max(1, min(min(len(c) for c in by_class) // 5, items // len(names)))
  test = np.concatenate([c[:per_class] for c in by_class])
  train_by_class = [c[per_class:] for c in by_class if len(c) > per_class]
  eot = ctx.tokenizer.eot_id
  name_ids = [ctx.tokenizer.encode(' ' + n) for n in names]
  width = max(map(len, name_ids)) + 1
  labels_CL = np.zeros((len(names), width), np.int64)
  label_real_CL = np.zeros((len(names), width), bool)
  for k, ids_ in enumerate(name_ids):
    labels_CL[k, :len(ids_) + 1] = ids_ + [eot]
    label_real_CL[k, :len(ids_) + 1] = True

  def example(rows, cls):
    inputs = passages[rows]
    if ctx.eos_after_inputs:
      inputs = np.concatenate([inputs, np.full((len(rows), 1), eot)], axis=1)
    return objectives.example(inputs, np.ones(inputs.shape, bool), labels_CL[cls],
                              label_real_CL[cls])

  lengths = features.ExampleLengths(plength + 1, width, plength + 1 + width)
  model_lengths = ctx.converter.model_lengths(lengths)
  tr = trainer_lib.make_trainer(_finetune_config(ctx.resolved, finetune_steps), ctx.tr.mesh,
                                lengths=model_lengths)
  state = jax.jit(lambda p: step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                opt_state=tr.tx.init(p)),
                  out_shardings=tr.state_sh)(ctx.params)
  b = ctx.batch_size
  for step in range(finetune_steps):
    draw = np.random.default_rng([SEED, 3, step])
    picked = np.array([train_by_class[k][draw.integers(len(train_by_class[k]))]
                       for k in draw.integers(0, len(train_by_class), b)])
    batch = ctx.converter(example(picked, classes[picked]), lengths)
    state, _ = tr.train_fn(state, jax.device_put(batch, tr.batch_sh))
  # Rank classification: every test passage with every class name as its target.
  rows = np.repeat(test, len(names))
  cls = np.tile(np.arange(len(names)), len(test))
  tuned = dataclasses.replace(ctx, tr=tr, params=state.params)
  nll, _ = _score(tuned, example(rows, cls))
  picked = nll.reshape(len(test), len(names)).argmin(axis=1)
  return {'accuracy': float((picked == classes[test]).mean()), 'classes': len(names),
          'chance': 1 / len(names),
          'train_examples': int(sum(map(len, train_by_class))), 'test_examples': int(len(test)),
          'steps': finetune_steps, 'task': task}


def _finetune_config(resolved, steps: int):
  import ml_collections
  c = ml_collections.ConfigDict(resolved.to_dict())
  c.train.steps = max(steps, 1)
  c.train.warmup_steps = min(10, c.train.steps)
  c.train.schedule = 'constant'
  c.model.dropout = 0.0
  return c


MEASURES = {
    'infilling': infilling,
    'continuation': continuation,
    'multiple_choice': multiple_choice,
    'finetuned': finetuned,
}


def load(workdir: str) -> Context:
  resolved, tr, params, step = restore_run(workdir)
  d = resolved.data
  if pipeline.task_class(resolved) is not pipeline.TextTask:
    raise ConfigError(f'--workdir={workdir}: a run on data.source={d.source}, which has no '
                      'held-out text for the downstream measures')
  corpus = sources.load_corpus(d.source, text_field=d.text_field, eval_fraction=d.eval_fraction)
  ranks = os.path.join(workdir, 'tokenizer.tiktoken')
  base = (tokenizers.load_tiktoken(ranks) if os.path.exists(ranks) else
          tokenizers.build_tokenizer(d.tokenizer, vocab_size=d.vocab_size, corpus=corpus,
                                     cache_dir=d.cache_dir))
  stream = cache.cached_streams(corpus, base, d.cache_dir)['eval']
  tok = tokenizers.with_special_tokens(base, d.extra_ids)
  objective = objectives.OBJECTIVES[resolved.objective.name]
  return Context(resolved, tr, params, tok, pipeline.converter(resolved, bos_id=tok.eot_id),
                 stream, corpus, objective.INPUTS_END_WITH_EOS, step)


def evaluate_run(workdir: str, *, length: int = 0, items: int = 200,
                 finetune_steps: int = 100) -> dict:
  """Every measure of the run in workdir at its latest checkpoint; writes downstream.json.
  length: tokens per held-out passage (0: half the run's data.seq_len)."""
  ctx = load(workdir)
  length = length or max(16, ctx.resolved.data.seq_len // 2)
  if items < CHOICES or finetune_steps < 0:
    raise ConfigError(f'--items={items} (at least {CHOICES}), --finetune_steps={finetune_steps} '
                      '(at least 0)')
  results = {}
  for name, measure in MEASURES.items():
    try:
      results[name] = measure(ctx, length=length, items=items, finetune_steps=finetune_steps)
    except ConfigError as e:
      results[name] = {'applicable': False, 'why': str(e)}
  out = {'step': ctx.step, 'length': length, 'items': items,
         'finetune_steps': finetune_steps, 'seed': SEED, 'measures': results}
  tmp = os.path.join(workdir, RESULT + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(out, f, indent=1)
  os.replace(tmp, os.path.join(workdir, RESULT))
  return out


def format_result(out: dict) -> str:
  lines = []
  for name, r in out['measures'].items():
    if r.get('applicable') is False:
      lines.append(f'{name:>16}: not applicable ({r["why"]})')
    elif 'bits_per_byte' in r:
      lines.append(f'{name:>16}: {r["bits_per_byte"]:.3f} bits/byte over {r["rows"]} rows')
    else:
      lines.append(f'{name:>16}: accuracy {r["accuracy"]:.3f} (chance {r["chance"]:.3f})')
  return '\n'.join(lines)

