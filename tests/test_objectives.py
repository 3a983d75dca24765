"""The objectives' properties: T5's noise mask and length helper, inputs and targets that give
back the original tokens, determinism across processes, lengths, and one-line refusals."""

import numpy as np
import pytest

from research import config as config_lib
from research import objectives
from research.data import features
from research.errors import ConfigError
from research.objectives import span_corruption, ul2

V = 300  # text ids 0..298, end-of-text 299; special tokens above
EOS = V - 1


def ids(extra=100):
  top = V + 4 + extra - 1
  return objectives.SpecialIds(eos=EOS, text_vocab_size=V, mask=V,
                               paradigm={'[NLU]': V + 1, '[NLG]': V + 2, '[S2S]': V + 3},
                               top=top, num_sentinels=extra)


def config(name, seq_len=64, arch='decoder', **objective):
  c = config_lib.default_config()
  c.model.arch = arch
  c.data.seq_len = seq_len
  c.objective.name = name
  for k, v in objective.items():
    c.objective[k] = v
  config_lib.validate(c)
  return c


def rows(b=16, n=64, seed=0):
  """Loader-style rows: n + 1 text tokens (never end-of-text, so reconstruction is exact)."""
  tokens = np.random.default_rng(seed).integers(0, V - 1, (b, n + 1)).astype(np.int32)
  return tokens, np.ones_like(tokens)


def run(c, b=16, seed=0, step=0):
  obj = objectives.build(c)
  tokens, seg = rows(b, c.data.seq_len, seed)
  draws = objectives.Draws(7, 'train', step, num_rows=b)
  return obj, tokens, obj(tokens, seg, draws, ids(max(100, obj.extra_ids())))


def real(x, seg):
  return [list(r[s > 0]) for r, s in zip(x, seg)]


def fill_sentinels(inputs, targets, special):
  """Each sentinel of the inputs replaced by what follows the same sentinel in the targets."""
  pieces, current = {}, None
  for t in targets:
    if t >= V + 4:
      current = t
      pieces[current] = []
    elif t != EOS and current is not None:
      pieces[current].append(t)
  out = []
  for t in inputs:
    if t >= V + 4:
      out += pieces.get(t, [])
    elif t != EOS and t not in special:
      out.append(t)
  return out


# ---- T5's noise mask and helper.

def test_noise_mask_counts_spans_start_and_end():
  for length, density, mean in ((190, 0.15, 3.0), (568, 0.15, 3.0), (100, 0.5, 8.0),
                                (64, 0.15, 64.0), (37, 0.3, 2.0)):
    for seed in range(5):
      m = objectives.random_spans_noise_mask(length, density, mean, seed)
      noise = objectives.num_noise_tokens(length, density)
      assert m.shape == (length,) and m.sum() == noise
      assert not m[0] and m[-1]  # starts with non-noise, ends with noise
      starts = np.flatnonzero(m & ~np.pad(m[:-1], (1, 0)))
      assert len(starts) == span_corruption.num_noise_spans(noise, mean)


def test_noise_count_rounds_in_float32_as_t5():
  assert objectives.num_noise_tokens(190, 0.15) == 29  # float64's round(28.4999...) is 28
  assert round(190 * 0.15) == 28
  assert objectives.num_noise_tokens(568, 0.15) == 85
  assert objectives.num_noise_tokens(10, 0.01) == 1 and objectives.num_noise_tokens(2, 0.99) == 1
  assert objectives.random_spans_noise_mask(1, 0.15, 3.0, 0).tolist() == [False]


def test_noise_span_lengths_are_a_uniform_composition():
  """Over many seeds every composition of 6 noise tokens into 2 spans appears about equally."""
  counts = np.zeros(6, int)
  for seed in range(3000):
    m = objectives.random_spans_noise_mask(40, 0.15, 3.0, seed)  # 6 noise tokens, 2 spans
    first = np.diff(np.flatnonzero(np.diff(np.pad(m.astype(int), 1))))[0]
    counts[first] += 1
  assert counts[0] == 0 and (np.abs(counts[1:] / 3000 - 0.2) < 0.035).all()


@pytest.mark.parametrize('inputs, density, mean, want', [
    (512, 0.15, 3.0, (568, 114)), (512, 0.15, 2.0, (552, 126)), (512, 0.15, 5.0, (581, 105)),
    (512, 0.15, 10.0, (591, 99)), (512, 0.25, 3.0, (614, 206)), (512, 0.5, 3.0, (766, 512)),
])
def test_random_spans_helper_gives_t5s_lengths(inputs, density, mean, want):
  assert objectives.random_spans_helper(inputs, density, mean) == want
  # And the examples made from that many raw tokens have those lengths.
  assert span_corruption.span_corruption_lengths(want[0], density, mean) == (inputs, want[1])


# ---- Each objective's examples.

@pytest.mark.parametrize('density,mean', [(0.15, 3.0), (0.5, 8.0), (0.15, 1.0)])
def test_span_corruption_gives_back_the_original(density, mean):
  c = config('span_corruption', noise_density=density, mean_span_length=mean)
  obj, tokens, ex = run(c)
  lengths = obj.lengths()
  assert ex['inputs'].shape == (16, lengths.inputs) and ex['targets'].shape == (16, lengths.targets)
  assert (ex['inputs_segment_ids'] == 1).all() and (ex['targets_segment_ids'] == 1).all()
  for b in range(16):
    inp, tgt = ex['inputs'][b], ex['targets'][b]
    assert inp[-1] == EOS and tgt[-1] == EOS
    assert tgt[0] == ids().top  # the targets open with sentinel 0 (<extra_id_0>)
    assert fill_sentinels(inp, tgt, ()) == list(tokens[b, :64])
    sentinels = inp[inp >= V + 4]
    np.testing.assert_array_equal(sentinels, ids().top - np.arange(len(sentinels)))


def test_iid_drop_and_replace_give_back_the_original():
  obj, tokens, ex = run(config('iid_replace'))
  n_noise = objectives.num_noise_tokens(64, 0.15)
  pairs = zip(real(ex['inputs'], ex['inputs_segment_ids']),
              real(ex['targets'], ex['targets_segment_ids']))
  for b, (inp, tgt) in enumerate(pairs):
    assert fill_sentinels(inp, tgt, ()) == list(tokens[b, :64])
    assert sum(t < EOS for t in tgt) == n_noise
  obj, tokens, ex = run(config('iid_drop'))
  draws = objectives.Draws(7, 'train', 0, num_rows=16)
  noise = obj.mask(draws)  # the same draws: the mask the objective used
  pairs = zip(real(ex['inputs'], ex['inputs_segment_ids']),
              real(ex['targets'], ex['targets_segment_ids']))
  for b, (inp, tgt) in enumerate(pairs):
    assert inp[-1] == EOS and tgt[-1] == EOS and len(tgt) == n_noise + 1
    rebuilt = np.empty(64, np.int64)
    rebuilt[~noise[b]], rebuilt[noise[b]] = inp[:-1], tgt[:-1]
    np.testing.assert_array_equal(rebuilt, tokens[b, :64])


def test_deshuffle_and_prefix_lm():
  _, tokens, ex = run(config('deshuffle'))
  np.testing.assert_array_equal(ex['targets'][:, :64], tokens[:, :64])
  np.testing.assert_array_equal(np.sort(ex['inputs'][:, :64], 1), np.sort(tokens[:, :64], 1))
  assert (ex['inputs'][:, :64] != tokens[:, :64]).any(axis=1).all()
  obj, tokens, ex = run(config('prefix_lm'), b=200)
  splits = []
  pairs = zip(real(ex['inputs'], ex['inputs_segment_ids']),
              real(ex['targets'], ex['targets_segment_ids']))
  for b, (inp, tgt) in enumerate(pairs):
    assert inp[-1] == EOS and tgt[-1] == EOS
    assert inp[:-1] + tgt[:-1] == list(tokens[b, :64])
    splits.append(len(inp) - 1)
  assert min(splits) >= 1 and max(splits) <= 63 and len(set(splits)) > 40  # uniform in [1, n-1]


def test_bert_mlm_rates_and_weights():
  obj, tokens, ex = run(config('bert_mlm', seq_len=200), b=64)
  chosen = ex['mlm_weights'][:, :200] > 0
  assert (chosen.sum(1) == objectives.num_noise_tokens(200, 0.15)).all()
  np.testing.assert_array_equal(ex['targets'][:, :200], tokens[:, :200])
  changed = ex['inputs'][:, :200] != tokens[:, :200]
  assert not (changed & ~chosen).any()  # only chosen tokens change
  masked = ex['inputs'][:, :200] == V
  assert 0.85 < masked[chosen].mean() < 0.95  # T5's 90% to [MASK], 10% random
  assert not (ex['inputs'][:, :200][chosen & ~masked] >= EOS).any()  # random ids are text
  _, _, ex = run(config('bert_mlm', seq_len=200, arch='encoder'), b=64)
  chosen = ex['mlm_weights'][:, :200] > 0
  kept = ex['inputs'][:, :200][chosen] == tokens[:, :200][chosen]
  masked = ex['inputs'][:, :200][chosen] == V
  assert 0.75 < masked.mean() < 0.85 and 0.05 < kept.mean() < 0.16  # BERT's 80/10/10


def test_ul2_mixes_its_denoisers_with_paradigm_tokens():
  obj, tokens, ex = run(config('ul2', seq_len=128), b=700, seed=3)
  lengths = obj.lengths()
  assert ex['inputs'].shape[1] == lengths.inputs and ex['targets'].shape[1] == lengths.targets
  first = ex['inputs'][:, 0]
  counts = {t: int((first == t).sum()) for t in (V + 1, V + 2, V + 3)}
  # R: 2 of 7 denoisers, X: 4 of 7, S: 1 of 7, drawn uniformly.
  assert abs(counts[V + 1] / 700 - 2 / 7) < 0.06 and abs(counts[V + 2] / 700 - 4 / 7) < 0.06
  assert abs(counts[V + 3] / 700 - 1 / 7) < 0.05
  all_inputs = real(ex['inputs'], ex['inputs_segment_ids'])
  all_targets = real(ex['targets'], ex['targets_segment_ids'])
  for b, (inp, tgt) in enumerate(zip(all_inputs, all_targets)):
    if inp[0] == V + 3:  # the S-denoiser: a prefix LM
      assert inp[1:-1] + tgt[:-1] == list(tokens[b, :128])
    else:
      assert fill_sentinels(inp, tgt, (V + 1, V + 2)) == list(tokens[b, :128])
  only_s = config('ul2', seq_len=128, ul2_rates=(0, 0, 0, 0, 0, 0, 1), ul2_paradigm_tokens=False)
  _, _, ex = run(only_s, b=8)
  assert not np.isin(ex['inputs'], [V + 1, V + 2, V + 3]).any()


@pytest.mark.parametrize('name', sorted(objectives.OBJECTIVES))
def test_pure_in_seed_and_step_and_the_same_on_any_process(name):
  """A row's corruption depends on (seed, step, its index), not on which process holds it."""
  c = config(name, seq_len=96)
  obj = objectives.build(c)
  tokens, seg = rows(8, 96)
  special = ids(max(100, obj.extra_ids()))
  whole = obj(tokens, seg, objectives.Draws(3, 'train', 5, num_rows=8), special)
  again = obj(tokens, seg, objectives.Draws(3, 'train', 5, num_rows=8), special)
  halves = [obj(tokens[i * 4:(i + 1) * 4], seg[i * 4:(i + 1) * 4],
                objectives.Draws(3, 'train', 5, first_row=i * 4, num_rows=4, global_rows=8),
                special) for i in range(2)]
  for key in whole:
    np.testing.assert_array_equal(whole[key], again[key])
    np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
  if name != 'causal_lm':
    other = obj(tokens, seg, objectives.Draws(3, 'train', 6, num_rows=8), special)
    assert any((whole[k] != other[k]).any() for k in whole)
  lengths = obj.lengths()
  assert whole['inputs'].shape[1] <= lengths.inputs and whole['targets'].shape[1] <= lengths.targets
  total = (whole['inputs_segment_ids'] > 0).sum(1) + (whole['targets_segment_ids'] > 0).sum(1)
  assert total.max() <= lengths.total
  # The sentinels any row uses are within the count the objective declares.
  used = whole['inputs'][whole['inputs'] > special.top - special.num_sentinels]
  assert len(used) == 0 or special.top - used.min() < max(obj.extra_ids(), 1)


# ---- Through the feature converters.

def test_decoder_only_conversion_of_a_known_example():
  ex = {'inputs': np.array([[5, 6, 7]]), 'inputs_segment_ids': np.array([[1, 1, 1]]),
        'targets': np.array([[8, 9, 0]]), 'targets_segment_ids': np.array([[1, 1, 0]])}
  lengths = features.ExampleLengths(3, 3, 6)
  b = features.DecoderOnly(prefix=True)(ex, lengths)
  np.testing.assert_array_equal(b['inputs'], [[5, 6, 7, 8, 9]])
  np.testing.assert_array_equal(b['targets'], [[6, 7, 8, 9, 0]])
  np.testing.assert_array_equal(b['loss_mask'], [[0, 0, 1, 1, 0]])  # predicting 8 and 9
  np.testing.assert_array_equal(b['prefix_mask'], [[1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(b['segment_ids'], [[1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(b['positions'], [[0, 1, 2, 3, 4]])
  every = features.DecoderOnly(loss_on_inputs=True)(ex, lengths)
  np.testing.assert_array_equal(every['loss_mask'], [[1, 1, 1, 1, 0]])
  assert 'prefix_mask' not in every
  ed = features.EncoderDecoder(bos_id=EOS)(ex, lengths)
  np.testing.assert_array_equal(ed['encoder_inputs'], [[5, 6, 7]])
  np.testing.assert_array_equal(ed['inputs'], [[EOS, 8, 0]])  # shifted right behind the start
  np.testing.assert_array_equal(ed['targets'], [[8, 9, 0]])
  np.testing.assert_array_equal(ed['loss_mask'], [[1, 1, 0]])
  with pytest.raises(ConfigError, match='aligned'):
    features.EncoderOnly()(ex, lengths)


@pytest.mark.parametrize('name,arch', [(n, a) for n, cls in sorted(objectives.OBJECTIVES.items())
                                       for a in cls.ARCHS])
def test_every_pair_converts_to_the_batch_its_architecture_reads(name, arch):
  from research.data import batch as batch_lib, pipeline
  from research.model import archs
  c = config(name, seq_len=48, arch=arch)
  obj = objectives.build(c)
  tokens, seg = rows(4, 48)
  ex = obj(tokens, seg, objectives.Draws(0, 'train', 0, num_rows=4), ids(max(100, obj.extra_ids())))
  conv = pipeline.converter(c, bos_id=EOS)
  lengths = pipeline.model_lengths(c)
  b = conv(ex, obj.lengths())
  batch_lib.check(b, archs.ARCHS[arch].BATCH_KEYS, lengths)
  assert b['loss_mask'].sum() > 0


@pytest.mark.parametrize('key,value,arch,match', [
    ('name', 'span_corruption', 'encoder', 'cannot run on model.arch=encoder'),
    ('noise_density', 1.5, 'decoder', r'objective.noise_density=1.5: must be in \(0, 1\)'),
    ('noise_density', 0.0, 'decoder', 'objective.noise_density'),
    ('mean_span_length', 0.5, 'decoder', 'objective.mean_span_length=0.5: must be at least 1'),
    ('ul2_rates', (1.0, 1.0), 'decoder', 'objective.ul2_rates'),
    ('name', 'gpt', 'decoder', "objective.name='gpt' is not one of"),
])
def test_bad_objective_settings_are_refused(key, value, arch, match):
  c = config_lib.default_config()
  c.model.arch = arch
  c.objective.name = {'name': value, 'ul2_rates': 'ul2'}.get(key, 'span_corruption')
  if key != 'name':
    c.objective[key] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_too_short_rows_and_too_few_sentinels_are_refused():
  c = config_lib.default_config()
  c.objective.name, c.data.seq_len = 'span_corruption', 1
  with pytest.raises(ConfigError, match='data.seq_len=1 is too short'):
    config_lib.validate(c)
  c.data.seq_len, c.objective.noise_density, c.objective.mean_span_length = 8, 0.9, 1.0
  with pytest.raises(ConfigError, match='noise spans need as many uncorrupted tokens'):
    config_lib.validate(c)
  c.objective.noise_density, c.objective.mean_span_length = 0.15, 3.0
  c.data.seq_len, c.data.extra_ids = 568, 10
  with pytest.raises(ConfigError, match='data.extra_ids=10 is too few sentinels.*28'):
    config_lib.validate(c)
  c.model.arch = 'transformer'
  with pytest.raises(ConfigError, match="model.arch='transformer' is not one of"):
    config_lib.validate(c)


def test_registries_match_the_config_choices():
  from research.model import archs
  assert config_lib.CHOICES['objective.name'] == tuple(objectives.OBJECTIVES)
  assert config_lib.CHOICES['model.arch'] == tuple(archs.ARCHS)
  assert len(ul2.DENOISERS) == len(config_lib.default_config().objective.ul2_rates)
