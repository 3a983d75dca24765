"""Cached decoding (research/model/decode.py, kv_cache.py) against the full forward, the sampling
filters, beam search, and launch.sample end to end.

Tolerance: cached logits equal the full forward's within 1e-5 absolute in float32 (logits of
magnitude ~4; the largest difference measured over the whole cube is 3e-6: the same products
summed in other orders, and the masked cache slots adding exact zeros). The default suite keeps
one case per architecture (decoder/rope, a scanned prefix_lm/alibi, encoder_decoder/t5_bias),
greedy checked against the full forward's argmax; the whole architecture x scheme x
scanned/looped cube, each also against the reference sampler, is under `slow`.
"""

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research.errors import ConfigError
from research.model import archs, decode
from research.model.transformer import ModelConfig
from research.train import step as step_lib
from tests.conftest import TINY, run_cli

V, TEXT = 40, 36  # vocabulary; ids from TEXT up are "special": never drawn
NEVER = V - 1  # an end-of-text id that is never drawn: every row runs to max_new_tokens
TRAIN_LEN, MAX_LEN, FULL_LEN = 12, 32, 24  # decoding runs past the training length
SCHEMES = ('learned', 'sinusoidal', 'none', 'rope', 'alibi', 't5_bias', 'shaw')
GENERATING = ('decoder', 'prefix_lm', 'encoder_decoder')
M = 8  # new tokens
_rng = np.random.RandomState(0)
PROMPTS = [list(_rng.randint(2, TEXT, n)) for n in (3, 9, 5)]
CONTINUATIONS = _rng.randint(2, TEXT, (len(PROMPTS), M))


def random_params(model, lengths):
  """Parameters of the model's shapes drawn with numpy (std 0.3, norm scales about 1): the
  model's own initialization compiles a random-bits kernel per parameter (seconds per model)."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      step_lib.init_params(model, jax.random.PRNGKey(0), lengths)))
  rng = np.random.RandomState(0)

  def draw(path, leaf):
    noise = rng.randn(*leaf.shape).astype(np.float32)
    return jnp.asarray(1 + 0.1 * noise if path[-1].key == 'scale' else 0.3 * noise)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def tiny(arch, scheme, scan=False):
  """(model, params, converter, full-forward lengths) of a 2-layer d_model-16 model."""
  c = config_lib.default_config()
  c.model.arch, c.model.positional, c.model.scan_layers = arch, scheme, scan
  c.model.num_layers, c.model.d_model, c.model.num_heads = 2, 16, 2
  c.model.num_encoder_layers = 1
  c.model.max_len = MAX_LEN
  c.data.seq_len = TRAIN_LEN
  cfg = ModelConfig.from_config(config_lib.resolve(c, vocab_size=V))
  model = archs.build(cfg)
  lengths = {'length': FULL_LEN, 'encoder_length': FULL_LEN}
  params = random_params(model, lengths)
  converter = archs.ARCHS[arch].features(loss_on_inputs=False, bos_id=1)
  if arch != 'encoder_decoder':
    lengths = {'length': FULL_LEN}
  return model, params, converter, lengths


def greedy(arch, scheme, scan, prompts, max_new=M, eot_id=NEVER, **kwargs):
  model, params, converter, _ = tiny(arch, scheme, scan)
  out = decode.generate(model, params, prompts, converter=converter, max_new_tokens=max_new,
                        eot_id=eot_id, vocab_size=TEXT, **kwargs)
  if kwargs.get('with_logits'):
    return [r[0] for r in out[0]], out[1]
  return [r[0] for r in out]


def check_cached_equals_full(arch, scheme, scan, reference_sampler=False):
  """Prompts of three lengths decoded greedily in one batch; the full forward over each prompt
  and the tokens decoded has the logits the cache computed, and its argmax is each token."""
  model, params, converter, lengths = tiny(arch, scheme, scan)
  tokens, cached = greedy(arch, scheme, scan, PROMPTS, with_logits=True)
  tokens = np.asarray(tokens)
  assert tokens.shape == (len(PROMPTS), M)
  full = np.asarray(decode.full_logits(model, params, PROMPTS, tokens, converter=converter,
                                       model_lengths=lengths))
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0, err_msg=f'{arch}/{scheme}/{scan}')
  np.testing.assert_array_equal(np.argmax(full[..., :TEXT], -1), tokens)
  if reference_sampler:
    for prompt, row in zip(PROMPTS, tokens.tolist()):
      assert row == decode.generate_recompute(
          model, params, prompt, converter=converter, model_lengths=lengths, num_samples=1,
          max_new_tokens=M, temperature=0.0, seed=0, eot_id=NEVER, vocab_size=TEXT)[0]


CORE = [('decoder', 'rope', False), ('prefix_lm', 'alibi', True),
        ('encoder_decoder', 't5_bias', False)]
CUBE = [(a, s, scan) for a in GENERATING for s in SCHEMES for scan in (False, True)
        if (a, s, scan) not in CORE]


@pytest.mark.parametrize('arch,scheme,scan', CORE)
def test_cached_logits_and_greedy_equal_the_full_forward(arch, scheme, scan):
  check_cached_equals_full(arch, scheme, scan)


@pytest.mark.slow
@pytest.mark.parametrize('arch,scheme,scan', CUBE)
def test_cached_equals_full_every_arch_scheme_and_layer_loop(arch, scheme, scan):
  check_cached_equals_full(arch, scheme, scan, reference_sampler=True)


def check_alone_as_in_batch(arch, scheme, prompts):
  together = greedy(arch, scheme, False, prompts, with_logits=True)[0]
  for prompt, row in zip(prompts, together):
    assert greedy(arch, scheme, False, [prompt]) == [row]


def test_a_prompt_alone_decodes_as_inside_a_batch():
  """Longer and shorter prompts beside it change nothing: per-row positions, no attention to
  padding."""
  check_alone_as_in_batch('decoder', 'rope', PROMPTS)


@pytest.mark.slow
@pytest.mark.parametrize('arch,scheme', [('decoder', 't5_bias'), ('prefix_lm', 'alibi'),
                                         ('encoder_decoder', 'shaw')])
def test_a_prompt_alone_decodes_as_inside_a_batch_of_another_bucket(arch, scheme):
  """The same beside a 20-token prompt: the batch's prompts padded to 32 tokens, not 16."""
  check_alone_as_in_batch(arch, scheme, PROMPTS + [list(_rng.randint(2, TEXT, 20))])


def test_sampling_is_reproducible_compiles_once_and_tends_to_greedy():
  """One compiled loop for every prompt of the bucket, temperature, seed, top-k and top-p value;
  the same seed draws the same tokens; temperature -> 0 and top-k 1 are greedy."""
  model, params, converter, _ = tiny('decoder', 'rope')

  def run(prompts=PROMPTS, **kwargs):
    kwargs.setdefault('top_k', TEXT)  # keeps every drawable token: the same program throughout
    return decode.generate(model, params, prompts, converter=converter, max_new_tokens=M,
                           eot_id=NEVER, vocab_size=TEXT, num_samples=3, **kwargs)

  drawn = run(temperature=1.0, top_k=10, top_p=0.9, seed=4)
  compiled = decode._sample_cached._cache_size()
  assert drawn == run(temperature=1.0, top_k=10, top_p=0.9, seed=4)
  assert drawn != run(temperature=1.0, top_k=10, top_p=0.9, seed=5)
  assert max(i for rows in drawn for r in rows for i in r) < TEXT
  greedy_rows = run(temperature=0.0)
  assert all(rows == [rows[0]] * 3 for rows in greedy_rows)
  assert run(temperature=1e-5, seed=1) == greedy_rows
  assert run(temperature=1.0, top_k=1, seed=2) == greedy_rows
  run([p + [5] for p in PROMPTS], temperature=0.3, top_p=0.5, seed=7)  # other lengths, same bucket
  assert decode._sample_cached._cache_size() == compiled


def _random_logits(seed, rows=300, v=24):
  """Float32 logits with many ties (values on a coarse grid) and some -inf (masked ids)."""
  rng = np.random.RandomState(seed)
  logits = rng.randint(-6, 6, (rows, v)).astype(np.float32) * 0.5
  logits[rng.rand(rows, v) < 0.1] = -np.inf
  logits[:, 0] = np.maximum(logits[:, 0], -3.0)  # every row keeps a finite logit
  return logits


def test_top_k_keeps_every_logit_at_or_above_the_kth():
  logits = _random_logits(0)
  filter_ = jax.jit(decode.top_k_filter)
  for k in (0, 1, 2, 5, 23, 24, 30):
    kept = np.isfinite(np.asarray(filter_(jnp.asarray(logits), jnp.int32(k))))
    for row, keep in zip(logits, kept):
      kth = np.sort(row)[::-1][min(k, len(row)) - 1] if k else -np.inf
      assert np.array_equal(keep, np.isfinite(row) & (row >= kth)), (k, row, keep)
      finite = np.isfinite(row).sum()
      if k:  # k kept (or every finite one), more only through ties with the k-th
        assert keep.sum() >= min(k, finite)
        assert keep.sum() <= k or (row == kth).sum() > 1


def test_top_p_keeps_the_smallest_most_probable_set_reaching_p_with_its_ties():
  logits = _random_logits(1)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
  filter_ = jax.jit(decode.top_p_filter)
  for p in (0.05, 0.3, 0.5, 0.9, 0.999, 1.0):
    kept = np.isfinite(np.asarray(filter_(jnp.asarray(logits), jnp.float32(p))))
    for logit, row, keep in zip(logits, probs, kept):
      if p == 1.0:
        assert np.array_equal(keep, np.isfinite(logit))
        continue
      above = np.array([row[row > q].sum() for q in row])  # the mass strictly more probable
      near = np.abs(above - p) < 1e-5  # float32 rounding may decide these either way
      assert np.array_equal(keep[~near], (above < p)[~near]), (p, row, keep)
      assert row[keep].sum() >= p - 1e-5  # the kept set reaches p ...
      least = row[keep].min()  # ... and would not without its least probable tie group
      assert row[keep & (row > least)].sum() < p + 1e-5


def test_top_k_then_top_p_combine():
  logits = jnp.asarray(_random_logits(2))
  both = decode.top_p_filter(decode.top_k_filter(logits, jnp.int32(5)), jnp.float32(0.6))
  k_only = np.isfinite(np.asarray(decode.top_k_filter(logits, jnp.int32(5))))
  kept = np.isfinite(np.asarray(both))
  assert (kept <= k_only).all() and kept.any(axis=1).all()
  assert (kept.sum(1) < k_only.sum(1)).any()


def test_beam_size_one_is_greedy():
  """Beam size 1 is greedy: always without length penalty (an ended beam is kept against longer
  ones), and under one for rows that never end."""
  model, params, converter, _ = tiny('decoder', 'rope')
  never_ending = greedy('decoder', 'rope', False, PROMPTS, with_logits=True)[0]
  # Rows that end where greedy draws the fourth token of row 0.
  for eot_id, alpha in ((NEVER, 0.6), (never_ending[0][3], 0.0)):
    want = greedy('decoder', 'rope', False, PROMPTS, eot_id=eot_id, with_logits=True)[0]
    got = decode.beam_search(model, params, PROMPTS, converter=converter, beam_size=1,
                             max_new_tokens=M, eot_id=eot_id, vocab_size=TEXT,
                             length_penalty=alpha)
    assert [rows[0] for rows, _ in got] == want
  assert min(map(len, want)) < M


def test_a_wide_beam_finds_the_exhaustive_best():
  """With 5 drawable ids, 3 new tokens and 25 beams (every 2-token prefix kept), beam search is
  exhaustive: its beams are the best sequences by log-probability / GNMT length penalty, as
  scored by the full forward, with the scores it reports."""
  model, params, converter, lengths = tiny('decoder', 'rope')
  ids, eot, alpha, prompt = 5, 2, 0.6, PROMPTS[1]
  beams, scores = decode.beam_search(model, params, [prompt], converter=converter, beam_size=25,
                                     max_new_tokens=3, eot_id=eot, vocab_size=ids,
                                     length_penalty=alpha)[0]
  every = np.array(np.meshgrid(*[np.arange(ids)] * 3, indexing='ij')).reshape(3, -1).T
  logits = np.asarray(decode.full_logits(model, params, [prompt] * len(every), every,
                                         converter=converter, model_lengths=lengths))
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits[..., :ids]), -1), np.float64)
  step_logp = np.take_along_axis(logp, every[..., None], -1)[..., 0]
  best = {}
  for seq, lp in zip(every.tolist(), step_logp):
    n = seq.index(eot) + 1 if eot in seq else 3
    best[tuple(seq[:n])] = lp[:n].sum() / ((5 + n) / 6) ** alpha
  ranked = sorted(best.items(), key=lambda kv: -kv[1])[:25]
  assert [list(s[:-1] if s[-1] == eot else s) for s, _ in ranked] == beams
  np.testing.assert_allclose(scores, [s for _, s in ranked], atol=1e-4)


def test_learned_positions_refuse_to_decode_past_their_table():
  """(Every other scheme decodes past the training length: the tests above read 17 positions of
  a model trained at 12.)"""
  model, params, converter, _ = tiny('decoder', 'rope')
  cfg = dataclasses.replace(model.cfg, positional='learned')
  prompt = PROMPTS[1]  # 9 tokens: new tokens read positions 9, 10, ...; the table holds 32
  room = MAX_LEN - len(prompt) + 1
  decode.check_positions(cfg, len(prompt) - 1, [len(prompt)], room)
  with pytest.raises(ConfigError, match=r'position 32, past the learned position table of '
                     r'model.max_len=32 positions'):
    decode.generate(archs.build(cfg), params, [prompt], converter=converter,
                    max_new_tokens=room + 1, eot_id=NEVER, vocab_size=TEXT)


def test_cache_bytes_per_token():
  model, _, _, _ = tiny('decoder', 'rope')
  # 2 layers x (key + value) x 2 heads x 8 dims x 4 bytes, and 3 int32 slot fields.
  assert decode.bytes_per_token(model.cfg) == 2 * 2 * 2 * 8 * 4 + 12


# ---- launch.sample -----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp('sample') / 'run')
  r = run_cli('launch.train', '--config=experiments/quickstart.py', f'--workdir={workdir}',
              '--progress=false', f'--config.data.cache_dir={cache_dir}',
              '--config.train.steps=10', *TINY)
  assert r.returncode == 0, r.stderr
  return workdir


@pytest.mark.slow
def test_launch_sample_prints_the_runs_samples_and_beams(tiny_run, tmp_path):
  r = run_cli('launch.sample', f'--workdir={tiny_run}')
  assert r.returncode == 0, r.stderr
  with open(os.path.join(tiny_run, 'samples.txt')) as f:
    assert r.stdout.strip() == '--- sample 1 ---\n' + f.read().strip()
  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('In the beginning\n\nAnd God said\n')
  r = run_cli('launch.sample', f'--workdir={tiny_run}', f'--prompt_file={prompts}',
              '--beam_size=3', '--num_samples=2', '--max_new_tokens=5')
  assert r.returncode == 0, r.stderr
  blocks = r.stdout.strip().split('\n\n')
  assert [b.split('\n')[0] for b in blocks] == [
      f'--- prompt {p}, sample {s} ---' for p in (1, 2) for s in (1, 2)]
  assert all(b.split('\n', 1)[1].startswith(start) for b, start in
             zip(blocks, ['In the beginning'] * 2 + ['And God said'] * 2))


@pytest.mark.slow
def test_launch_sample_bad_inputs_one_line_exit_2(tiny_run, tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('\n  \n')
  no_checkpoint = tmp_path / 'fresh'
  no_checkpoint.mkdir()
  (no_checkpoint / 'config.json').write_text(open(os.path.join(tiny_run, 'config.json')).read())
  cases = [
      ([f'--workdir={tmp_path / "nothing"}'], 'holds no run'),
      ([f'--workdir={no_checkpoint}'], 'holds no checkpoint'),
      ([f'--workdir={tiny_run}', f'--prompt_file={empty}'], 'holds no prompt'),
      ([f'--workdir={tiny_run}', '--top_p=0'], 'top_p'),
      ([f'--workdir={tiny_run}', '--top_p=1.5'], 'top_p'),
      ([f'--workdir={tiny_run}', '--top_k=-1'], 'top_k'),
      ([f'--workdir={tiny_run}', '--beam_size=0'], 'beam_size'),
  ]
  for args, needle in cases:
    r = run_cli('launch.sample', *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, r.stderr)
