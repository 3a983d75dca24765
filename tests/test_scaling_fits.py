"""The scaling-law fitters recover the laws that generated synthetic losses (Chinchilla's and Epoch
AI's published parameters, plus noise), their bootstrap intervals cover them, and bad input is
refused in one line."""

import functools
import math

import numpy as np
import pytest
import scipy.optimize

from research.errors import ConfigError
from research.scaling import fits

# Hoffmann et al. 2022 (approach 3) and Besiroglu et al. 2024's refit of the same data.
LAWS = {
    'chinchilla': dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    'epoch': dict(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
}

# 30 runs: 6 sizes in [1e7, 1e10] x 5 token counts in [1e8, 1e12].
N_R = np.repeat(np.logspace(7, 10, 6), 5)
D_R = np.tile(np.logspace(8, 12, 5), 6)


def full(law: str) -> dict:
  p = LAWS[law]
  return fits.chinchilla_params(math.log(p['A']), math.log(p['B']), math.log(p['E']),
                                p['alpha'], p['beta'])


def noisy(law, n_R, d_R, sigma, seed):
  """The law's losses times exp(N(0, sigma)): multiplicative noise of about sigma."""
  rng = np.random.default_rng(seed)
  return fits.predict(LAWS[law], n_R, d_R) * np.exp(rng.normal(0.0, sigma, np.shape(n_R)))


@functools.lru_cache(maxsize=None)
def noisy_fit(law: str, sigma: float):
  loss_R = noisy(law, N_R, D_R, sigma, seed=0)
  return loss_R, fits.fit_chinchilla(N_R, D_R, loss_R)


# --- approach 3 -----------------------------------------------------------------------------

def test_chinchilla_fit_recovers_noise_free_law_exactly():
  """No noise: the grid + L-BFGS must land on the generating parameters (to 1e-4 relative)."""
  loss_R = noisy('epoch', N_R, D_R, 0.0, 0)
  fit = fits.fit_chinchilla(N_R, D_R, loss_R)
  for k, v in LAWS['epoch'].items():
    assert fit[k] == pytest.approx(v, rel=1e-4), k
  assert fit['starts'] == 4500  # Hoffmann's whole grid
  assert fit['objective'] < 1e-12


@pytest.mark.parametrize('law', ['chinchilla', 'epoch'])
def test_chinchilla_fit_recovers_published_laws_from_noisy_losses(law):
  """0.5% noise on 30 runs. Tolerances are about twice the worst error over 8 noise seeds
  (E 2.6%, log A and log B 0.17, alpha and beta 0.011, a 0.009, the extrapolated loss 1.1%)."""
  loss_R, fit = noisy_fit(law, 0.005)
  true = full(law)
  assert fit['E'] == pytest.approx(true['E'], rel=0.05)
  assert abs(math.log(fit['A'] / true['A'])) < 0.35
  assert abs(math.log(fit['B'] / true['B'])) < 0.35
  assert fit['alpha'] == pytest.approx(true['alpha'], abs=0.025)
  assert fit['beta'] == pytest.approx(true['beta'], abs=0.025)
  assert fit['a_opt'] == pytest.approx(true['a_opt'], abs=0.02)
  assert fit['a_opt'] + fit['b_opt'] == pytest.approx(1.0)
  # Chinchilla itself (70B parameters, 1.4T tokens), beyond every run fitted.
  assert fits.predict(fit, 7e10, 1.4e12) == pytest.approx(fits.predict(true, 7e10, 1.4e12),
                                                          rel=0.025)
  # The optimizer did its job: no worse than the generating parameters on the same objective.
  theta_true = np.array([[true[k] for k in fits.CHINCHILLA_THETA]])
  at_truth = fits.lse_objective(theta_true, np.log(np.stack([N_R, D_R])), np.log(loss_R))[0][0]
  assert fit['objective'] <= at_truth * (1 + 1e-9)


def test_compute_optimal_is_the_minimum_at_fixed_compute():
  """N_opt = G (C/6)^a minimises the law along C = 6ND (a brute-force search over N)."""
  law = full('epoch')
  assert law['a_opt'] == pytest.approx(0.5126, abs=1e-4)  # Epoch's a = beta / (alpha + beta)
  for c in (1e18, 1e21, 1e24):
    n_grid = np.logspace(5, 14, 200001)
    best = n_grid[np.argmin(fits.predict(law, n_grid, c / (6 * n_grid)))]
    opt = fits.compute_optimal(law, c)
    assert opt['n_params'][0] == pytest.approx(best, rel=1e-3)
    assert opt['n_params'][0] * opt['n_tokens'][0] * 6 == pytest.approx(c)


def test_summed_huber_converges_where_the_averaged_one_stops_near_its_start():
  """Besiroglu et al. 2024: averaging the Huber loss over runs (as Hoffmann et al. did) shrinks the
  objective until L-BFGS-B's relative-reduction test stops it at once. From three of Hoffmann's
  initial values, on noise-free data: the averaged fit leaves the log-coefficients a, b within
  0.1 of where they started; the summed one moves them and ends at least 5x lower, and the best
  summed run reaches the true parameters."""
  log_x_KR, log_loss_R = np.log(np.stack([N_R, D_R])), np.log(noisy('epoch', N_R, D_R, 0.0, 0))
  true = np.array([full('epoch')[k] for k in fits.CHINCHILLA_THETA])

  def run(start, reduction):
    def fun(theta):
      f, g = fits.lse_objective(theta[None], log_x_KR, log_loss_R, reduction=reduction)
      return f[0], g[0]
    x = scipy.optimize.minimize(fun, np.array(start, float), jac=True, method='L-BFGS-B').x
    return x, fits.lse_objective(x[None], log_x_KR, log_loss_R)[0][0]  # summed, to compare

  best = np.inf, None
  for start in ([0, 5, 0.5, 0, 0.5], [5, 5, 0, 0.5, 0.5], [5, 10, 0.5, 0.5, 0.5]):
    x_mean, f_mean = run(start, 'mean')
    x_sum, f_sum = run(start, 'sum')
    assert np.abs(x_mean[:2] - start[:2]).max() < 0.1, (start, x_mean)
    assert np.abs(x_sum[:2] - start[:2]).max() > 0.5, (start, x_sum)
    assert f_sum < f_mean / 5
    best = min(best, (f_sum, tuple(x_sum)))
  np.testing.assert_allclose(best[1], true, atol=1e-3)


# --- Kaplan power laws ----------------------------------------------------------------------

@pytest.mark.parametrize('term', ['N', 'D'])
def test_power_law_recovers_chinchilla_terms(term):
  """L(N) = E + A / N^alpha over N in [1e7, 1e10] and L(D) = E + B / D^beta over D in [1e8, 1e12]
  with Chinchilla's values, 12 runs: exact without noise (1e-4 relative); with 0.5% noise E within
  2% and the exponent within 0.05 (worst over 6 seeds: 0.6% and 0.023)."""
  p = LAWS['chinchilla']
  coef, expo = (p['A'], p['alpha']) if term == 'N' else (p['B'], p['beta'])
  x_R = np.logspace(7, 10, 12) if term == 'N' else np.logspace(8, 12, 12)
  clean_R = p['E'] + coef / x_R ** expo
  fit = fits.fit_power_law(x_R, clean_R)
  assert (fit['E'], fit['A'], fit['alpha']) == pytest.approx((p['E'], coef, expo), rel=1e-4)
  assert fit['starts'] == 150
  fit = fits.fit_power_law(x_R, clean_R * np.exp(np.random.default_rng(1).normal(0, 0.005, 12)))
  assert fit['E'] == pytest.approx(p['E'], rel=0.02)
  assert fit['alpha'] == pytest.approx(expo, abs=0.05)
  assert fits.predict_power_law(fit, x_R) == pytest.approx(clean_R, rel=0.01)


# --- approaches 1 and 2 ---------------------------------------------------------------------

def isoflop_runs(sigma, seed):
  """5 IsoFLOP budgets 1e17..1e21, 9 sizes each spanning 100x around 1.5x the true optimum (an
  off-centre guess, as a real sweep has), trained for D = C / (6N), losses from Epoch's law."""
  law = full('epoch')
  c_R, n_R = [], []
  for c in np.logspace(17, 21, 5):
    guess = 1.5 * law['G'] * (c / 6) ** law['a_opt']
    for n in guess * np.logspace(-1, 1, 9):
      c_R.append(c)
      n_R.append(n)
  c_R, n_R = np.array(c_R), np.array(n_R)
  return c_R, n_R, noisy('epoch', n_R, c_R / (6 * n_R), sigma, seed)


def test_isoflop_parabolas_recover_epoch_exponent():
  """0.2% noise: a within 0.015 of beta / (alpha + beta) = 0.513 (worst over 6 seeds: 0.005),
  b = 1 - a (D_opt = C / 6 N_opt), each budget's minimum within 25% of the law's optimum."""
  law = full('epoch')
  c_R, n_R, loss_R = isoflop_runs(0.002, 0)
  fit = fits.fit_isoflop(c_R, n_R, loss_R)
  assert fit['a'] == pytest.approx(law['a_opt'], abs=0.015)
  assert fit['a'] + fit['b'] == pytest.approx(1.0)
  assert len(fit['budgets']) == 5
  for b in fit['budgets']:
    assert b['coef'][0] > 0 and b['in_range']
    truth = fits.compute_optimal(law, b['flops'])
    assert b['n_opt'] == pytest.approx(truth['n_params'][0], rel=0.25)
    assert b['loss_opt'] == pytest.approx(truth['loss'][0], rel=0.01)
  # Noise-free, the parabola's minimum is the law's to a few percent, so a to 1e-3.
  assert fits.fit_isoflop(*isoflop_runs(0.0, 0))['a'] == pytest.approx(law['a_opt'], abs=1e-3)


def test_isoflop_budgets_without_a_measured_minimum_are_left_out_when_asked():
  """require_inside: a budget whose sizes all lie on one side of its optimum (here the largest
  budget cut to its 3 smallest sizes, all below half the optimum: the vertex lies above them) or whose parabola opens
  downwards is listed in `excluded` with the reason, and the power laws use the other budgets;
  without it the downward parabola is an error."""
  c_R, n_R, loss_R = isoflop_runs(0.002, 0)
  top = c_R == c_R.max()
  keep = ~top | (n_R <= np.sort(n_R[top])[2])
  c_R, n_R, loss_R = c_R[keep], n_R[keep], loss_R[keep]
  low = c_R == c_R.min()
  loss_R = np.where(low, loss_R.max() + 1 - (np.log(n_R) - np.log(n_R[low]).mean()) ** 2, loss_R)
  fit = fits.fit_isoflop(c_R, n_R, loss_R, require_inside=True)
  assert [b['flops'] for b in fit['budgets']] == pytest.approx(np.logspace(18, 20, 3))
  why = {e['flops']: e['why'] for e in fit['excluded']}
  assert 'opens downwards' in why[1e17] and 'above the largest size' in why[1e21]
  assert fit['a'] == pytest.approx(full('epoch')['a_opt'], abs=0.03)
  parabolas = fits.isoflop_parabolas(c_R, n_R, loss_R)
  assert [p['in_range'] for p in parabolas] == [False, True, True, True, False]
  assert parabolas[0]['n_opt'] is None and parabolas[-1]['n_opt'] > n_R[c_R == 1e21].max()
  with pytest.raises(ConfigError, match='budget 1e[+]17: the parabola opens downwards'):
    fits.fit_isoflop(c_R, n_R, loss_R)
  with pytest.raises(ConfigError, match=r'at least 2 budgets, got 0 \(left out: 1e\+17: the'):
    fits.fit_isoflop(c_R[low], n_R[low], loss_R[low], require_inside=True)


def training_curves(sigma, seed):
  """10 sizes 1e7 * 2^k, each a curve of 60 points from 0.3N to 300N tokens (C = 6ND), losses
  from Epoch's law at the tokens seen so far."""
  rng = np.random.default_rng(seed)
  flops, losses, sizes, tokens = [], [], [], []
  for n in 1e7 * 2.0 ** np.arange(10):
    d = np.logspace(math.log10(0.3 * n), math.log10(300 * n), 60)
    flops.append(6 * n * d)
    losses.append(fits.predict(LAWS['epoch'], n, d) * np.exp(rng.normal(0, sigma, d.size)))
    sizes.append(n)
    tokens.append(d)
  return flops, losses, sizes, tokens


def test_envelope_of_training_curves_recovers_epoch_exponent():
  """The lowest loss at each FLOP count: a within 0.04 of 0.513 with 0.2% noise (worst over 6
  seeds: 0.024; the sizes are a factor 2 apart, so N_opt is a staircase); noise-free the envelope
  lies on or above the law's compute-optimal frontier, within 1% of it where fitted."""
  law = full('epoch')
  fit = fits.fit_envelope(*training_curves(0.002, 0))
  assert fit['a'] == pytest.approx(law['a_opt'], abs=0.04)
  assert fit['b'] == pytest.approx(1 - law['a_opt'], abs=0.04)
  env = fits.fit_envelope(*training_curves(0.0, 0))['envelope']
  frontier = fits.compute_optimal(law, env['flops'])['loss']
  assert np.all(env['loss'] >= frontier * (1 - 1e-9))
  # The ends, where the smallest or largest model is the lowest (and may be far from optimal),
  # are not fitted; elsewhere the staircase is within 1% of the frontier.
  assert env['at_edge'].any() and np.array_equal(env['used'], ~env['at_edge'])
  assert np.all(env['loss'][env['used']] <= frontier[env['used']] * 1.01)
  fit = fits.fit_envelope(*training_curves(0.0, 0), flops_range=(1e18, 1e21))
  assert fit['envelope']['flops'][[0, -1]] == pytest.approx([1e18, 1e21])
  assert fit['a'] == pytest.approx(law['a_opt'], abs=0.01)


# --- bootstrap ------------------------------------------------------------------------------

def test_bootstrap_intervals_of_approach_3_contain_the_truth():
  """20 refits to resampled runs (with replacement), each seeded from the full fit's optimum and a
  box around it (33 starts): the 95% intervals of every parameter and exponent contain Epoch's."""
  loss_R, fit = noisy_fit('epoch', 0.005)
  boot = fits.bootstrap(fits.fit_chinchilla, N_R, D_R, loss_R, n=20, seed=0, init=fit)
  assert boot['n'] == 20 and boot['failed'] == 0
  true = full('epoch')
  for k in ('E', 'A', 'B', 'alpha', 'beta', 'a_opt', 'G'):
    low, high = boot['intervals'][k]
    assert low <= true[k] <= high, (k, low, high, true[k])
    assert low <= boot['median'][k] <= high


def power_law_boot(sigma, n=20, seed=0):
  """L(N) = 1.69 + 406.4 / N^0.34 on 16 sizes, `sigma` noise; its bootstrap, refits seeded from
  the full fit (9 starts)."""
  x_R = np.logspace(7, 10, 16)
  clean_R = 1.69 + 406.4 / x_R ** 0.34
  loss_R = clean_R * np.exp(np.random.default_rng(2).normal(0, sigma, x_R.size))
  fit = fits.fit_power_law(x_R, loss_R)
  return fits.bootstrap(fits.fit_power_law, x_R, loss_R, n=n, seed=seed, init=fit)


def test_bootstrap_intervals_narrow_with_less_noise_and_repeat_with_the_seed():
  """1% and 0.2% noise: both 95% intervals of E and alpha contain the truth, and the quieter one
  is under half as wide (0.09-0.20 of it over 6 noise seeds)."""
  noisy_boot, quiet_boot = power_law_boot(0.01), power_law_boot(0.002)
  for k, true in (('E', 1.69), ('alpha', 0.34)):
    for boot in (noisy_boot, quiet_boot):
      assert boot['intervals'][k][0] <= true <= boot['intervals'][k][1], (k, boot['intervals'][k])
    width = lambda b: b['intervals'][k][1] - b['intervals'][k][0]  # noqa: E731
    assert width(quiet_boot) < 0.5 * width(noisy_boot)
  first = power_law_boot(0.002, n=5)
  np.testing.assert_array_equal(power_law_boot(0.002, n=5)['samples']['alpha'],
                                first['samples']['alpha'])
  assert not np.array_equal(power_law_boot(0.002, n=5, seed=1)['samples']['alpha'],
                            first['samples']['alpha'])


def test_bootstrap_draws_runs_with_replacement_or_chinchillas_80_percent():
  def fit_fn(ids, other):
    assert np.array_equal(ids, other)  # every array resampled with the same run indices
    return dict(size=len(ids), distinct=len(set(ids.tolist())))
  ids = np.arange(10)
  chin = fits.bootstrap(fit_fn, ids, ids.copy(), **fits.CHINCHILLA_BOOTSTRAP)
  assert chin['n'] == 100 and chin['percentiles'] == (10.0, 90.0)
  assert set(chin['samples']['size']) == {8} and set(chin['samples']['distinct']) == {8}
  plain = fits.bootstrap(fit_fn, ids, ids.copy(), n=50)
  assert set(plain['samples']['size']) == {10} and plain['samples']['distinct'].max() < 10
  # Lists of per-run curves (fit_envelope's input) are resampled as lists.
  curves = fits.bootstrap(lambda c: dict(size=len(c)), [np.ones(3)] * 10, n=5, fraction=0.5)
  assert set(curves['samples']['size']) == {5}


# --- bad input ------------------------------------------------------------------------------

BAD_INPUTS = [
    (lambda: fits.fit_chinchilla(N_R, D_R[:-1], N_R), 'different lengths'),
    (lambda: fits.fit_chinchilla(-N_R, D_R, N_R), 'n_params must be finite and positive'),
    (lambda: fits.fit_chinchilla(N_R, D_R, np.where(N_R > 1e9, np.nan, 2.0)),
     'loss must be finite and positive'),
    (lambda: fits.fit_chinchilla(N_R[:4], D_R[:4], N_R[:4]), 'at least 5 runs'),
    (lambda: fits.fit_chinchilla(N_R.reshape(5, 6), D_R, N_R), '1-D array'),
    (lambda: fits.fit_chinchilla(N_R, D_R, N_R, reduction='median'), "reduction must be"),
    (lambda: fits.fit_chinchilla(N_R, D_R, N_R, init={'E': 1.0}), 'init must be a previous fit'),
    (lambda: fits.fit_power_law([1e7, 1e8], [3.0, 2.0]), 'at least 3 runs'),
    (lambda: fits.fit_power_law([1e7, 0, 1e9], [3.0, 2.5, 2.0]), 'x must be finite and positive'),
    (lambda: fits.fit_isoflop(*(a[:-7] for a in isoflop_runs(0, 0))), 'has 2 runs'),
    (lambda: fits.fit_isoflop(np.full(9, 1e20), np.logspace(7, 9, 9),
                              2 + (np.linspace(7, 9, 9) - 8) ** 2),
     'at least 2 budgets'),
    (lambda: fits.fit_isoflop(np.full(6, 1e20), np.logspace(7, 9, 6),
                              9 - (np.arange(6) - 2.5) ** 2), 'opens downwards'),
    (lambda: fits.fit_envelope([[1e15, 1e14]] * 2, [[3.0, 2.0]] * 2, [1e7, 2e7],
                               [[1e7, 2e7]] * 2), 'increase strictly'),
    (lambda: fits.fit_envelope([[1e15, 1e16]] * 2, [[3.0, 2.0]] * 3, [1e7, 2e7],
                               [[1e7, 2e7]] * 2), '2 flops curves, 3 loss curves'),
    (lambda: fits.compute_optimal(full('epoch'), 0.0), 'flops must be finite and positive'),
    (lambda: fits.bootstrap(fits.fit_power_law, np.ones(5), np.ones(4)), 'different lengths'),
    (lambda: fits.bootstrap(fits.fit_power_law, np.ones(5), np.ones(5), fraction=1.5),
     'fraction must be in'),
]


@pytest.mark.parametrize('call,match', BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_a_one_line_config_error(call, match):
  with pytest.raises(ConfigError, match=match) as info:
    call()
  assert '\n' not in str(info.value)
