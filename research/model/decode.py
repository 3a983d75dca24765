"""Generating text: cached decoding (`generate`, `beam_search`) and the full-recompute reference.

Cached decoding keeps each layer's keys and values in a cache sized up front
(research/model/kv_cache.py). The architecture's feature converter lays the prompts out for the
first call (`prompt_layout`, research/data/features.py): a decoder or prefix LM reads the whole
prompt in one pass (a prefix LM bidirectionally over it), an encoder-decoder encodes it once and
computes its cross-attention keys and values once, then reads its start token; every later call
reads one token per row. The whole loop is one jitted program (a lax.while_loop that stops when
every row has ended), compiled once per (rows, prompt-length bucket, max new tokens, sampling
switches); temperature, top-k, top-p and the seed are arguments, not constants.

Sampling draws each token from float32 logits with the same key splitting as the reference
sampler (one split per step, one key for all rows), so the same logits give the same tokens:
`temperature` 0 is greedy; then, in this order, top-k keeps every logit at or above the k-th
largest (ties at the k-th all kept), top-p (nucleus) keeps the most probable tokens until their
probability reaches p, every token as probable as the last one kept included (ties again). Ids at
or above `vocab_size` (special tokens, the vocabulary's padding rows) are never drawn.

`generate_recompute` is the reference: it re-runs the full forward over the whole row for every
new token, as the training forward computes it, within the model's training length. The tests
hold cached decoding to it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.model import kv_cache

# Prompts are right-padded to the next of these lengths (then to multiples of the largest), so
# that prompts of nearby lengths share one compiled program.
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512)


def prompt_bucket(length: int) -> int:
  for bucket in PROMPT_BUCKETS:
    if length <= bucket:
      return bucket
  top = PROMPT_BUCKETS[-1]
  return -(-length // top) * top


# ---- Choosing the next token -------------------------------------------------------------------

def mask_vocab(logits_BV, vocab_size: int):
  """-inf on the ids at or above vocab_size: special tokens and padding rows are never drawn."""
  return jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_size, logits_BV, -jnp.inf)


def top_k_filter(logits_BV, k):
  """Every logit below the k-th largest of its row set to -inf (k 0: none); ties with the k-th are
  kept, so a row may keep more than k."""
  v = logits_BV.shape[-1]
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)
  kth_B1 = jnp.take_along_axis(sorted_BV, jnp.clip(k - 1, 0, v - 1) * jnp.ones(
      (logits_BV.shape[0], 1), jnp.int32), axis=-1)
  return jnp.where((k <= 0) | (logits_BV >= kth_B1), logits_BV, -jnp.inf)


def top_p_filter(logits_BV, p):
  """Nucleus filtering: token j is kept when the tokens strictly more probable than it hold less
  than p of the probability (p >= 1: every token). The kept set is the smallest set of the most
  probable tokens whose probability reaches p, widened to every tie of its least probable one."""
  probs_BV = jax.nn.softmax(logits_BV.astype(jnp.float32), axis=-1)
  sorted_BV = -jnp.sort(-probs_BV, axis=-1)
  before_BV = jnp.cumsum(sorted_BV, axis=-1) - sorted_BV  # mass of the tokens sorted before
  # The tokens sorted before i hold less than p: a prefix of the sorted order, never empty.
  kept = jnp.maximum(jnp.sum(before_BV < p, axis=-1, keepdims=True), 1)
  least_B1 = jnp.take_along_axis(sorted_BV, kept - 1, axis=-1)
  return jnp.where((p >= 1) | (probs_BV >= least_B1), logits_BV, -jnp.inf)


def choose(logits_BV, key, temperature, top_k, top_p, *, vocab_size: int, filtered: bool):
  """[B] next tokens from float32 logits: greedy when temperature is 0, else drawn with `key`
  from the logits / temperature, top-k and top-p filtered when `filtered` (static)."""
  logits_BV = mask_vocab(logits_BV, vocab_size)
  scaled_BV = logits_BV / jnp.maximum(temperature, 1e-6)
  if filtered:
    scaled_BV = top_p_filter(top_k_filter(scaled_BV, top_k), top_p)
  return jnp.where(temperature > 0, jax.random.categorical(key, scaled_BV),
                   jnp.argmax(logits_BV, axis=-1))


# ---- Cached decoding ---------------------------------------------------------------------------

def _step_batch(tokens_B, positions_B):
  """One new token per row, at its row's position."""
  ones_B1 = jnp.ones((tokens_B.shape[0], 1), jnp.int32)
  return {'inputs': tokens_B[:, None].astype(jnp.int32), 'segment_ids': ones_B1,
          'positions': positions_B[:, None].astype(jnp.int32)}


def _prefill(model, params, batch, last_B, max_new: int, memory_length):
  """The cache after the first call, and the logits [B, V] that predict each row's first token."""
  b, t = batch['inputs'].shape
  cache = kv_cache.init(model.cfg, b, t + max_new - 1, memory_length)
  logits_BTV, cache = model.apply({'params': params}, batch, cache=cache)
  return cache, logits_BTV[jnp.arange(b), last_B]


@functools.partial(jax.jit, static_argnames=('model', 'max_new', 'memory_length', 'filtered',
                                             'with_logits'))
def _sample_cached(model, params, batch, last_B, next_positions_B, rng, temperature, top_k, top_p,
                   eot_id, vocab_size, *, max_new, memory_length, filtered, with_logits=False):
  """[B, max_new] tokens (a row's tokens after its first end-of-text are unspecified), and with
  with_logits the [B, max_new, V] float32 logits each was chosen from."""
  cache, logits_BV = _prefill(model, params, batch, last_B, max_new, memory_length)

  def pick(logits_BV, rng):
    rng, key = jax.random.split(rng)
    return choose(logits_BV, key, temperature, top_k, top_p, vocab_size=vocab_size,
                  filtered=filtered).astype(jnp.int32), rng

  tokens_B, rng = pick(logits_BV, rng)
  b, v = logits_BV.shape
  out_BM = jnp.zeros((b, max_new), jnp.int32).at[:, 0].set(tokens_B)
  # Only when asked (the tests), else a [B, 0, V] placeholder.
  logits_BMV = jnp.zeros((b, max_new if with_logits else 0, v), jnp.float32)
  logits_BMV = logits_BMV.at[:, 0].set(logits_BV) if with_logits else logits_BMV

  def cond(state):
    i, _, _, _, _, _, done_B = state
    return (i < max_new) & ~jnp.all(done_B)

  def body(state):
    i, tokens_B, out_BM, logits_BMV, cache, rng, done_B = state
    logits_B1V, cache = model.apply({'params': params},
                                    _step_batch(tokens_B, next_positions_B + i - 1), cache=cache)
    tokens_B, rng = pick(logits_B1V[:, 0], rng)
    if with_logits:
      logits_BMV = logits_BMV.at[:, i].set(logits_B1V[:, 0])
    return (i + 1, tokens_B, out_BM.at[:, i].set(tokens_B), logits_BMV, cache, rng,
            done_B | (tokens_B == eot_id))

  state = (jnp.int32(1), tokens_B, out_BM, logits_BMV, cache, rng, tokens_B == eot_id)
  _, _, out_BM, logits_BMV, _, _, _ = jax.lax.while_loop(cond, body, state)
  return (out_BM, logits_BMV) if with_logits else out_BM


def _length_penalty(length, alpha):
  """GNMT's ((5 + length) / 6)^alpha (Wu et al. 2016): a beam's log-probability is divided by it."""
  return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=('model', 'beam_size', 'max_new', 'memory_length'))
def _beam_cached(model, params, batch, last_B, next_positions_B, alpha, eot_id, vocab_size, *,
                 beam_size, max_new, memory_length):
  """Beam search over rows that are each prompt repeated beam_size times: ([P, W, max_new]
  sequences, [P, W] scores), best first, the finished beams (ended by end-of-text) scored by
  log-probability / length penalty and, at the end, the live ones as if finished there.

  As t5x's: each step takes the 2W best extensions of the W live beams, so that W of them do not
  end; those among the W best that end join the finished set (W best kept), the best W others
  stay live. It stops at max_new, or when no live beam can still beat the worst finished one (its
  log-probability only falls, and the penalty is largest at max_new). One beam with
  length_penalty 0 is greedy decoding.
  """
  w = beam_size
  cache, logits_BV = _prefill(model, params, batch, last_B, max_new, memory_length)
  n = logits_BV.shape[0] // w
  v = logits_BV.shape[-1]
  neg_inf = jnp.float32(-jnp.inf)

  def select(i, logits_BV, alive_seq, alive_logp, fin_seq, fin_score):
    logp_PWV = jax.nn.log_softmax(mask_vocab(logits_BV, vocab_size), axis=-1).reshape(n, w, v)
    top_P2, index_P2 = jax.lax.top_k((alive_logp[..., None] + logp_PWV).reshape(n, w * v), 2 * w)
    parent_P2, token_P2 = index_P2 // v, (index_P2 % v).astype(jnp.int32)
    seq_P2M = jnp.take_along_axis(alive_seq, parent_P2[..., None], axis=1).at[:, :, i].set(token_P2)
    ended_P2 = token_P2 == eot_id
    alive_logp, keep_PW = jax.lax.top_k(jnp.where(ended_P2, neg_inf, top_P2), w)
    alive_seq = jnp.take_along_axis(seq_P2M, keep_PW[..., None], axis=1)
    parent_PW = jnp.take_along_axis(parent_P2, keep_PW, axis=1)
    # An ending counts only among the W best extensions (as Hugging Face's beam scorer): one
    # beam then ends exactly where greedy decoding does.
    ranked_P2 = jnp.arange(2 * w) < w
    ended_score_P2 = jnp.where(ended_P2 & ranked_P2, top_P2 / _length_penalty(i + 1, alpha),
                               neg_inf)
    fin_score, best_PW = jax.lax.top_k(jnp.concatenate([fin_score, ended_score_P2], 1), w)
    fin_seq = jnp.take_along_axis(jnp.concatenate([fin_seq, seq_P2M], 1), best_PW[..., None],
                                  axis=1)
    rows_B = (jnp.arange(n)[:, None] * w + parent_PW).reshape(-1)
    return alive_seq, alive_logp, fin_seq, fin_score, rows_B

  def done(alive_logp, fin_score):
    best_alive_P = jnp.max(alive_logp, axis=1) / _length_penalty(max_new, alpha)
    return jnp.all(jnp.min(fin_score, axis=1) > best_alive_P)

  seq = jnp.zeros((n, w, max_new), jnp.int32)
  # The W copies of a prompt start as one beam: the others at -inf until the first step fans out.
  alive_logp = jnp.where(jnp.arange(w) == 0, 0.0, neg_inf) * jnp.ones((n, 1))
  fin_score = jnp.full((n, w), neg_inf)
  state = (jnp.int32(1), cache) + select(0, logits_BV, seq, alive_logp, seq, fin_score)

  def cond(state):
    i, _, _, alive_logp, _, fin_score, _ = state
    return (i < max_new) & ~done(alive_logp, fin_score)

  def body(state):
    i, cache, alive_seq, alive_logp, fin_seq, fin_score, rows_B = state
    cache = cache.take_rows(rows_B)
    tokens_B = alive_seq[:, :, i - 1].reshape(-1)
    logits_B1V, cache = model.apply(
        {'params': params}, _step_batch(tokens_B, next_positions_B + i - 1), cache=cache)
    return (i + 1, cache) + select(i, logits_B1V[:, 0], alive_seq, alive_logp, fin_seq,
                                   fin_score)

  i, _, alive_seq, alive_logp, fin_seq, fin_score, _ = jax.lax.while_loop(cond, body, state)
  score = jnp.concatenate([fin_score, alive_logp / _length_penalty(i, alpha)], 1)
  score, best = jax.lax.top_k(score, w)
  seqs = jnp.take_along_axis(jnp.concatenate([fin_seq, alive_seq], 1), best[..., None], axis=1)
  return seqs, score


def check_positions(cfg, prompt_max_position: int, next_positions, max_new: int) -> None:
  """ConfigError when decoding would read a position past a learned position table (the training
  forward reuses its last row there; decoding refuses instead)."""
  if cfg.positional != 'learned' or max_new < 1:
    return
  last = max(prompt_max_position, int(np.max(next_positions)) + max_new - 2)
  if last >= cfg.max_len:
    raise ConfigError(
        f'decoding reads position {last}, past the learned position table of '
        f'model.max_len={cfg.max_len} positions: a shorter prompt or fewer new tokens '
        f'(at most {cfg.max_len - int(np.max(next_positions)) + 1} here)')


def check_sampling(*, num_samples=1, max_new_tokens=1, temperature=0.0, top_k=0, top_p=1.0,
                   beam_size=1) -> None:
  """ConfigError for settings no sampler takes."""
  if num_samples < 1:
    raise ConfigError(f'num_samples={num_samples}: must be at least 1')
  if max_new_tokens < 1:
    raise ConfigError(f'max_new_tokens={max_new_tokens}: must be at least 1')
  if not temperature >= 0:
    raise ConfigError(f'temperature={temperature}: must be at least 0 (0 is greedy)')
  if top_k < 0:
    raise ConfigError(f'top_k={top_k}: must be at least 0 (0 keeps every token)')
  if not 0 < top_p <= 1:
    raise ConfigError(f'top_p={top_p}: must be in (0, 1] (1 keeps every token)')
  if beam_size < 1:
    raise ConfigError(f'beam_size={beam_size}: must be at least 1 (1 samples without a beam)')
  if beam_size > 1 and num_samples > beam_size:
    raise ConfigError(f'num_samples={num_samples}: beam search returns at most '
                      f'beam_size={beam_size} beams per prompt')
  if beam_size > 1 and (top_k or top_p < 1):
    raise ConfigError('top_k and top_p filter sampling; beam search ranks every token by its '
                      'log-probability (leave them at 0 and 1 with beam_size > 1)')


def _cut(row, eot_id):
  return row[:row.index(eot_id)] if eot_id in row else row


def _layout(model, converter, prompts, copies: int, max_new: int, eot_id: int):
  prompts = [list(p) or [eot_id] for p in prompts]
  rows = [p for p in prompts for _ in range(copies)]
  layout = converter.prompt_layout(rows, prompt_bucket(max(len(p) for p in rows)))
  check_positions(model.cfg, layout.max_position, layout.next_positions, max_new)
  return layout, [jnp.asarray(a, jnp.int32) for a in (layout.last, layout.next_positions)]


def generate(model, params, prompts, *, converter, num_samples: int = 1, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             eot_id: int, vocab_size: int, beam_size: int = 1, length_penalty: float = 0.6,
             with_logits: bool = False):
  """For each prompt (a list of ids; [] reads as [eot_id]), num_samples continuations of at most
  max_new_tokens, each cut before its first end-of-text, drawn from the ids below vocab_size.

  beam_size > 1: beam search instead (`beam_search`), its num_samples best beams. The prompts
  are decoded together, right-padded to a bucket of lengths; model: an architecture of
  research/model/archs.py (model.cfg its ModelConfig); converter: its feature converter.
  with_logits (sampling only): also the [rows, max_new_tokens, V] float32 logits each token was
  chosen from, rows prompt-major (the tests' comparison with the full forward).
  """
  check_sampling(num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                 top_k=top_k, top_p=top_p, beam_size=beam_size)
  if beam_size > 1:
    beams = beam_search(model, params, prompts, converter=converter, beam_size=beam_size,
                        max_new_tokens=max_new_tokens, eot_id=eot_id, vocab_size=vocab_size,
                        length_penalty=length_penalty)
    return [rows[:num_samples] for rows, _ in beams]
  layout, (last_B, next_B) = _layout(model, converter, prompts, num_samples, max_new_tokens,
                                     eot_id)
  out = _sample_cached(
      model, params, jax.tree.map(jnp.asarray, layout.batch), last_B, next_B,
      jax.random.PRNGKey(seed), jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
      jnp.int32(eot_id), jnp.int32(vocab_size), max_new=max_new_tokens,
      memory_length=layout.memory_length, filtered=bool(top_k > 0 or top_p < 1),
      with_logits=with_logits)
  out, logits = out if with_logits else (out, None)
  rows = [_cut(r, eot_id) for r in np.asarray(out).tolist()]
  rows = [rows[i:i + num_samples] for i in range(0, len(rows), num_samples)]
  return (rows, np.asarray(logits)) if with_logits else rows


def beam_search(model, params, prompts, *, converter, beam_size: int, max_new_tokens: int,
                eot_id: int, vocab_size: int, length_penalty: float = 0.6):
  """For each prompt, its beam_size beams best first, as (token lists cut before end-of-text,
  scores: log-probability / ((5 + length) / 6)^length_penalty, length counting the end-of-text)."""
  check_sampling(max_new_tokens=max_new_tokens, beam_size=beam_size)
  layout, (last_B, next_B) = _layout(model, converter, prompts, beam_size, max_new_tokens,
                                     eot_id)
  seqs, scores = _beam_cached(
      model, params, jax.tree.map(jnp.asarray, layout.batch), last_B, next_B,
      jnp.float32(length_penalty), jnp.int32(eot_id), jnp.int32(vocab_size),
      beam_size=beam_size, max_new=max_new_tokens, memory_length=layout.memory_length)
  return [([_cut(r, eot_id) for r in rows], s)
          for rows, s in zip(np.asarray(seqs).tolist(), np.asarray(scores).tolist())]


def sample_texts(model, params, prompts, *, tokenizer, converter, num_samples: int,
                 max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, beam_size: int = 1, length_penalty: float = 0.6,
                 seed: int = 0, special_tokens: bool = False, fit: bool = False):
  """For each prompt text, num_samples texts: the prompt and its continuation (`generate`).

  Each prompt is read after an end-of-text token, as every document starts in training.
  special_tokens: the tokenizer's special tokens (sentinels, [MASK], paradigm tokens) may be
  drawn too; the model's padding rows never are. fit (the end-of-run samples): under learned
  positions the prompt keeps its last tokens and the continuation stops where the table ends, as
  the reference sampler did, where otherwise that is a ConfigError.
  """
  if max_new_tokens == 0:  # sample.max_new_tokens=0: the prompts as they are
    return [[p] * num_samples for p in prompts]
  ids = [[tokenizer.eot_id] + (tokenizer.encode(p) if p else []) for p in prompts]
  cfg = model.cfg
  if fit and cfg.positional == 'learned':
    ids = [p[-cfg.max_len:] for p in ids]
    max_new_tokens = max(1, min(max_new_tokens, cfg.max_len - max(map(len, ids)) + 1))
  vocab_size = tokenizer.vocab_size if special_tokens else tokenizer.sample_vocab_size
  rows = generate(model, params, ids, converter=converter, num_samples=num_samples,
                  max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                  top_p=top_p, seed=seed, eot_id=tokenizer.eot_id, vocab_size=vocab_size,
                  beam_size=beam_size, length_penalty=length_penalty)
  return [[p + tokenizer.decode(r) for r in per] for p, per in zip(prompts, rows)]


def bytes_per_token(cfg) -> int:
  """The cache's bytes per decoded token of one row (kv_cache.bytes_per_token)."""
  return kv_cache.bytes_per_token(cfg)


# ---- The full-recompute reference --------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=('model', 'max_new', 'vocab_size'))
def _sample(model, params, batch, offsets_N, rng, temperature, *, max_new, vocab_size):
  n, length = batch['inputs'].shape
  rows_N = jnp.arange(n)

  def body(i, carry):
    inputs_NL, out_NM, rng = carry
    logits_NLV = model.apply({'params': params}, dict(batch, inputs=inputs_NL))
    logits_NV = logits_NLV[rows_N, offsets_N + i]
    # Rows past the tokenizer's text vocabulary are special tokens or padding: never sampled.
    logits_NV = jnp.where(jnp.arange(logits_NV.shape[-1]) < vocab_size, logits_NV, -jnp.inf)
    rng, key = jax.random.split(rng)
    next_N = jnp.where(temperature > 0,
                       jax.random.categorical(key, logits_NV / jnp.maximum(temperature, 1e-6)),
                       jnp.argmax(logits_NV, axis=-1)).astype(inputs_NL.dtype)
    inputs_NL = inputs_NL.at[rows_N, offsets_N + i + 1].set(next_N, mode='drop')
    return inputs_NL, out_NM.at[:, i].set(next_N), rng

  out_NM = jnp.zeros((n, max_new), batch['inputs'].dtype)
  _, out_NM, _ = jax.lax.fori_loop(0, max_new, body, (batch['inputs'], out_NM, rng))
  return out_NM


def generation_batch(converter, model_lengths: dict, prompt_ids, num_samples: int,
                     max_new_tokens: int):
  """(Batch, [N] offsets of the first target, tokens that fit) of num_samples copies of the
  prompt with room for the targets, at the model's own sequence lengths."""
  lengths = converter.generation_lengths(model_lengths, len(prompt_ids))
  prompt = np.asarray(prompt_ids, np.int32)[None].repeat(num_samples, 0)
  targets = np.zeros((num_samples, lengths.targets), np.int32)
  example = {'inputs': prompt, 'inputs_segment_ids': np.ones_like(prompt),
             'targets': targets, 'targets_segment_ids': np.ones_like(targets)}
  batch = converter(example, lengths)
  offsets = converter.target_offsets(example)
  room = model_lengths['length'] - int(offsets.max())
  return batch, offsets, min(max_new_tokens, room, lengths.targets)


def generate_recompute(model, params, prompt_ids, *, converter, model_lengths: dict,
                       num_samples: int, max_new_tokens: int, temperature: float, seed: int,
                       eot_id: int, vocab_size: int):
  """The reference sampler: num_samples continuations of prompt_ids (list of ints), each cut at
  the first end-of-text, drawn from the first vocab_size ids (the tokenizer's text; the model may
  have more rows), by re-running the full forward at the model's sequence lengths for each new
  token. The prompt keeps its last tokens when the model's sequence cannot hold it all, and the
  continuation stops where the sequence ends."""
  prompt = list(prompt_ids) or [eot_id]
  prompt = prompt[-converter.max_prompt_length(model_lengths):]
  batch, offsets, max_new = generation_batch(converter, model_lengths, prompt, num_samples,
                                             max_new_tokens)
  out = np.asarray(_sample(model, params, jax.tree.map(jnp.asarray, batch),
                           jnp.asarray(offsets, jnp.int32), jax.random.PRNGKey(seed),
                           jnp.float32(temperature), max_new=max_new, vocab_size=vocab_size))
  return [_cut(row, eot_id) for row in out.tolist()]


@functools.partial(jax.jit, static_argnames=('model',))
def _forward(model, params, batch):
  return model.apply({'params': params}, batch)


def full_logits(model, params, prompts, continuations_BM, *, converter, model_lengths: dict):
  """[B, M, V] float32: the full forward's logits that predict each token of each row's
  continuation after its prompt, at the model's sequence lengths: the reference for
  cached_logits."""
  m = np.shape(continuations_BM)[1]
  longest = max(len(p) for p in prompts)
  inputs_BI = np.zeros((len(prompts), longest), np.int32)
  for b, p in enumerate(prompts):
    inputs_BI[b, :len(p)] = p
  lengths_B1 = np.array([len(p) for p in prompts])[:, None]
  example = {'inputs': inputs_BI,
             'inputs_segment_ids': (np.arange(longest)[None] < lengths_B1).astype(np.int32),
             'targets': np.asarray(continuations_BM, np.int32),
             'targets_segment_ids': np.ones((len(prompts), m), np.int32)}
  batch = converter(example, converter.generation_lengths(model_lengths, longest))
  logits_BLV = _forward(model, params, jax.tree.map(jnp.asarray, batch))
  index_BM = converter.target_offsets(example)[:, None] + np.arange(m)
  return jnp.take_along_axis(logits_BLV, jnp.asarray(index_BM)[..., None], axis=1)
