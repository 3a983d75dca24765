"""Scaling-law fits: Kaplan's power laws, Chinchilla's three approaches, bootstrap intervals.

Every law here with an irreducible term is fitted as Hoffmann et al. (2022) fit approach 3: on the
LOG of the loss, the prediction written as a log-sum-exp of its terms,

  log L_hat = LSE(c_1 - p_1 log x_1, ..., c_K - p_K log x_K, e)   (L = E + sum_k C_k / x_k^p_k,
                                                                  C_k = exp(c_k), E = exp(e)),

so that coefficients spanning many orders of magnitude become additive offsets, with the Huber
loss (delta = 1e-3) of log L_hat - log L SUMMED over runs: Besiroglu et al. (2024) showed that the
original fit averaged it, which shrank the objective until L-BFGS's relative-reduction test
stopped it near its initial values; the sum lets it converge. (The test's floor of 1 under the
relative reduction still stops single runs early whenever the summed objective is far below 1, as
it is for a few dozen runs: the grid of starts is what finds the optimum.) It is minimised by
L-BFGS from every point of Hoffmann's grid of initial values and the best end point is kept.

That grid has 4500 points for approach 3. scipy's L-BFGS-B started 4500 times, with the analytic
gradient, takes about 37 s for 30 runs on this 2-core machine (a tenth of the grid timed: 3.7 s),
nearly all of it Python overhead per call and per iteration. So the grid is run by `_lbfgs`, an
L-BFGS written here over a batch of starts at once (one numpy evaluation of the objective and its
analytic gradient for every start still running per iteration, scipy's stopping tests per start),
and the best few end points are finished by scipy's L-BFGS-B, whose result is the one returned:
a whole approach-3 fit of 30 runs takes 1.3-1.6 s here (5 fits timed, the same optimum as scipy's
from every start).

Approach 1 (the lowest loss at each FLOP count over all training curves) and approach 2 (a
parabola in log N per IsoFLOP budget) reduce to least squares in log-log space (`fit_loglog`).
`bootstrap` resamples runs and refits any of them.
"""

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import scipy.optimize

from research.errors import ConfigError

HUBER_DELTA = 1e-3

# Hoffmann et al.'s initial values: exponents in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, the
# log-coefficients a, b in {0, 5, ..., 25}.
GRID_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_LOG_COEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)

# Chinchilla's intervals: the 10th and 90th percentiles of 100 fits to 80% of the runs.
CHINCHILLA_BOOTSTRAP = dict(n=100, fraction=0.8, replace=False, percentiles=(10.0, 90.0))

# scipy's L-BFGS-B defaults, so the batched screen stops where scipy would.
FTOL = 2.220446049250313e-09
GTOL = 1e-5


# ----------------------------------------------------------------------------------------------
# Input checks: one-line ConfigErrors naming the problem.

def _positive(name: str, x) -> np.ndarray:
  x_R = np.asarray(x, dtype=np.float64)
  if x_R.ndim != 1:
    raise ConfigError(f'{name} must be a 1-D array (one entry per run), got shape {x_R.shape}')
  bad_R = x_R[~(np.isfinite(x_R) & (x_R > 0))]
  if bad_R.size:
    raise ConfigError(f'{name} must be finite and positive, got {bad_R[:3].tolist()}')
  return x_R


def _runs(min_points: int, what: str, **arrays) -> list:
  """The arrays as positive float64 vectors of one common length of at least min_points."""
  out = [_positive(name, x) for name, x in arrays.items()]
  lengths = {name: len(x) for name, x in zip(arrays, out)}
  if len(set(lengths.values())) > 1:
    raise ConfigError(f'{what}: arrays of different lengths {lengths}')
  n = len(out[0])
  if n < min_points:
    raise ConfigError(f'{what} needs at least {min_points} runs (one per parameter), got {n}')
  return out


# ----------------------------------------------------------------------------------------------
# The log-sum-exp objective, over a batch of parameter vectors.

def lse_objective(theta_SQ, log_x_KR, log_loss_R, *, delta: float = HUBER_DELTA,
                  reduction: str = 'sum'):
  """Huber loss of log L_hat - log L and its gradient, for S parameter vectors at once.

  theta_SQ: [S, 2K + 1] rows (c_1..c_K, e, p_1..p_K); log_x_KR: the K inputs' logs per run;
  log_loss_R: the runs' log losses. reduction 'sum' (Besiroglu et al.) or 'mean' (the original
  fit's). Returns (objective_S, gradient_SQ).
  """
  if reduction not in ('sum', 'mean'):
    raise ConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
  k = log_x_KR.shape[0]
  # One [S, R] array per term (K + 1 of them), updated in place: this runs ~3000 times a fit.
  terms = [theta_SQ[:, i, None] - theta_SQ[:, k + 1 + i, None] * log_x_KR[i] for i in range(k)]
  terms.append(np.broadcast_to(theta_SQ[:, k, None], terms[0].shape))
  top_SR = terms[0].copy()
  for t_SR in terms[1:]:
    np.maximum(top_SR, t_SR, out=top_SR)
  weights = [np.exp(t_SR - top_SR) for t_SR in terms]
  total_SR = weights[0].copy()
  for w_SR in weights[1:]:
    total_SR += w_SR
  r_SR = np.log(total_SR)
  r_SR += top_SR
  r_SR -= log_loss_R
  abs_SR = np.abs(r_SR)
  huber_SR = np.where(abs_SR <= delta, 0.5 * np.minimum(abs_SR, delta) * abs_SR,
                      delta * (abs_SR - 0.5 * delta))
  # d Huber / d r times d LSE / d term (the softmax weight of each term).
  slope_SR = np.clip(r_SR, -delta, delta)
  slope_SR /= total_SR
  grad_SQ = np.empty_like(theta_SQ)
  for i in range(k + 1):
    sw_SR = weights[i]
    sw_SR *= slope_SR
    grad_SQ[:, i] = sw_SR.sum(axis=1)
    if i < k:
      grad_SQ[:, k + 1 + i] = -(sw_SR @ log_x_KR[i])
  objective_S = huber_SR.sum(axis=1)
  if reduction == 'mean':
    return objective_S / log_loss_R.size, grad_SQ / log_loss_R.size
  return objective_S, grad_SQ


def _lbfgs(fun, x_SQ, *, memory: int = 10, max_iter: int = 1000, max_ls: int = 30,
           drop_after: int = 200, drop_ratio: float = 10.0):
  """L-BFGS from S starts at once; fun(x_SQ) -> (f_S, g_SQ). Returns (x_SQ, f_S, iterations_S).

  Each start keeps its own history, step and stopping test, and leaves the batch when it stops,
  so later iterations evaluate only the starts still running. The line search backtracks
  (quadratic interpolation) from the unit step until the Armijo condition holds; a pair failing
  the curvature test is not stored. A start stops as scipy's L-BFGS-B does: relative reduction
  (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= FTOL or max |g| <= GTOL; or when its line search
  fails, or after max_iter iterations. Stopping early: after drop_after iterations a start still
  more than drop_ratio times worse than the best value any start has reached is abandoned; those
  are starts crawling along a flat valley far from the optimum (each step still passes FTOL), and
  without this rule one of them took half the time of a whole fit.
  """
  x_out_SQ = np.array(x_SQ, dtype=np.float64)
  f_out_S, g_AQ = fun(x_out_SQ)
  f_out_S = np.array(f_out_S)
  iters_out_S = np.zeros(len(x_out_SQ), dtype=np.int64)
  # The running batch A: original index, point, value, gradient, history (slot 0 the newest;
  # rho = 0 marks an empty slot, which then contributes nothing to the two loops).
  keep_A = np.isfinite(f_out_S) & (np.abs(g_AQ).max(axis=1) > GTOL)
  idx_A = np.flatnonzero(keep_A)
  x_AQ, f_A, g_AQ = x_out_SQ[keep_A], f_out_S[keep_A], g_AQ[keep_A]
  q = x_AQ.shape[1]
  s_AMQ = np.zeros((len(idx_A), memory, q))
  y_AMQ = np.zeros((len(idx_A), memory, q))
  rho_AM = np.zeros((len(idx_A), memory))
  for it in range(max_iter):
    if not idx_A.size:
      break
    r_AQ = g_AQ.copy()
    alpha_AM = np.zeros_like(rho_AM)
    for j in range(memory):
      alpha_AM[:, j] = rho_AM[:, j] * np.einsum('aq,aq->a', s_AMQ[:, j], r_AQ)
      r_AQ -= alpha_AM[:, j, None] * y_AMQ[:, j]
    yy_A = np.einsum('aq,aq->a', y_AMQ[:, 0], y_AMQ[:, 0])
    g_norm_A = np.sqrt(np.einsum('aq,aq->a', g_AQ, g_AQ))
    first_A = np.minimum(1.0, 1.0 / np.maximum(g_norm_A, 1e-300))
    # Initial scaling s'y / y'y; with no history a first step of at most unit length, as scipy.
    gamma_A = np.where(rho_AM[:, 0] > 0, 1.0 / np.maximum(rho_AM[:, 0] * yy_A, 1e-300), first_A)
    r_AQ *= gamma_A[:, None]
    for j in reversed(range(memory)):
      beta_A = rho_AM[:, j] * np.einsum('aq,aq->a', y_AMQ[:, j], r_AQ)
      r_AQ += (alpha_AM[:, j] - beta_A)[:, None] * s_AMQ[:, j]
    d_AQ = -r_AQ
    slope_A = np.einsum('aq,aq->a', g_AQ, d_AQ)
    bad_A = ~(slope_A < 0)
    if bad_A.any():  # not a descent direction: forget the history, take steepest descent
      d_AQ[bad_A] = -g_AQ[bad_A] * first_A[bad_A, None]
      slope_A[bad_A] = np.einsum('aq,aq->a', g_AQ[bad_A], d_AQ[bad_A])
      rho_AM[bad_A] = 0.0
    t_A = np.ones(len(idx_A))
    new_x_AQ, new_f_A, new_g_AQ = x_AQ.copy(), f_A.copy(), g_AQ.copy()
    pending = np.arange(len(idx_A))
    for _ in range(max_ls):
      trial_PQ = x_AQ[pending] + t_A[pending, None] * d_AQ[pending]
      tf_P, tg_PQ = fun(trial_PQ)
      ok_P = np.isfinite(tf_P) & (tf_P <= f_A[pending] + 1e-4 * t_A[pending] * slope_A[pending])
      done = pending[ok_P]
      new_x_AQ[done], new_f_A[done], new_g_AQ[done] = trial_PQ[ok_P], tf_P[ok_P], tg_PQ[ok_P]
      pending, tf_P = pending[~ok_P], tf_P[~ok_P]
      if not pending.size:
        break
      # The minimum of the quadratic through f(0), f'(0) and f(t), kept within [0.1 t, 0.5 t].
      t_P, sl_P = t_A[pending], slope_A[pending]
      curv_P = tf_P - f_A[pending] - sl_P * t_P
      safe_P = np.isfinite(curv_P) & (curv_P > 0)
      t_new_P = np.where(safe_P, -sl_P * t_P ** 2 / (2 * np.where(safe_P, curv_P, 1.0)),
                         0.5 * t_P)
      t_A[pending] = np.clip(t_new_P, 0.1 * t_P, 0.5 * t_P)
    failed_A = np.zeros(len(idx_A), dtype=bool)
    failed_A[pending] = True
    # Store the new pairs that pass the curvature test.
    s_new_AQ, y_new_AQ = new_x_AQ - x_AQ, new_g_AQ - g_AQ
    sy_A = np.einsum('aq,aq->a', s_new_AQ, y_new_AQ)
    store_A = ~failed_A & (sy_A > 2.2e-16 * np.einsum('aq,aq->a', y_new_AQ, y_new_AQ))
    s_AMQ[store_A] = np.roll(s_AMQ[store_A], 1, axis=1)
    y_AMQ[store_A] = np.roll(y_AMQ[store_A], 1, axis=1)
    rho_AM[store_A] = np.roll(rho_AM[store_A], 1, axis=1)
    s_AMQ[store_A, 0], y_AMQ[store_A, 0] = s_new_AQ[store_A], y_new_AQ[store_A]
    rho_AM[store_A, 0] = 1.0 / sy_A[store_A]
    reduction_A = (f_A - new_f_A) / np.maximum(np.maximum(np.abs(f_A), np.abs(new_f_A)), 1.0)
    x_AQ, f_A, g_AQ = new_x_AQ, new_f_A, new_g_AQ
    iters_out_S[idx_A[~failed_A]] += 1
    stop_A = failed_A | (reduction_A <= FTOL) | (np.abs(g_AQ).max(axis=1) <= GTOL)
    if it >= drop_after:
      best = min(f_A.min(), np.min(f_out_S, initial=np.inf, where=np.isfinite(f_out_S)))
      stop_A |= f_A > drop_ratio * best
    if stop_A.any():
      x_out_SQ[idx_A[stop_A]], f_out_S[idx_A[stop_A]] = x_AQ[stop_A], f_A[stop_A]
      go_A = ~stop_A
      idx_A, x_AQ, f_A, g_AQ = idx_A[go_A], x_AQ[go_A], f_A[go_A], g_AQ[go_A]
      s_AMQ, y_AMQ, rho_AM = s_AMQ[go_A], y_AMQ[go_A], rho_AM[go_A]
  x_out_SQ[idx_A], f_out_S[idx_A] = x_AQ, f_A  # those that ran out of iterations
  return x_out_SQ, f_out_S, iters_out_S


def _fit_lse(log_x_KR, log_loss_R, starts_SQ, *, delta: float, reduction: str, polish: int):
  """The best of L-BFGS runs from every start: the batched screen, then scipy's L-BFGS-B from the
  `polish` best distinct end points (scipy's own overhead, ~4 ms an iteration here, is why it does
  not run the grid). Returns (theta_Q, objective, info)."""
  fun = lambda th_SQ: lse_objective(th_SQ, log_x_KR, log_loss_R, delta=delta,  # noqa: E731
                                    reduction=reduction)
  # Far-off trial steps overflow to inf, which the line search then rejects: no warnings.
  with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
    x_SQ, f_S, iters_S = _lbfgs(fun, starts_SQ)
    return _polish(fun, x_SQ, f_S, iters_S, polish)


def _polish(fun, x_SQ, f_S, iters_S, polish: int):
  """scipy's L-BFGS-B from the `polish` best distinct end points of the screen; the best kept."""
  order = np.argsort(np.where(np.isfinite(f_S), f_S, np.inf))
  candidates = []
  for i in order:
    if not np.isfinite(f_S[i]) or len(candidates) == polish:
      break
    if all(np.max(np.abs(x_SQ[i] - x_SQ[j])) > 1e-3 for j in candidates):
      candidates.append(i)
  if not candidates:
    raise ConfigError('scaling-law fit: the objective is not finite at any initial value')
  best_theta, best_f = None, np.inf
  for i in candidates:
    res = scipy.optimize.minimize(lambda th: tuple(v[0] for v in fun(th[None])), x_SQ[i],
                                  jac=True, method='L-BFGS-B')
    theta, value = (res.x, res.fun) if res.fun <= f_S[i] else (x_SQ[i], f_S[i])
    if value < best_f:
      best_theta, best_f = theta, float(value)
  info = dict(starts=len(x_SQ), screen_iterations=int(iters_S.sum()),
              screen_best=float(f_S[order[0]]))
  return best_theta, best_f, info


def _grid(num_terms: int) -> np.ndarray:
  """Hoffmann's grid for K terms: rows (c_1..c_K, e, p_1..p_K)."""
  rows = itertools.product(*([GRID_LOG_COEF] * num_terms), GRID_E, *([GRID_EXPONENTS] * num_terms))
  return np.array(list(rows), dtype=np.float64)


def _start_box(theta_Q: np.ndarray, num_terms: int) -> np.ndarray:
  """theta and the 2^(2K+1) corners of a box around it (log-coefficients +-2, e +-0.25, exponents
  +-0.1): the starts of a refit seeded from a previous optimum."""
  half_Q = np.array([2.0] * num_terms + [0.25] + [0.1] * num_terms)
  corners = np.array(list(itertools.product((-1.0, 1.0), repeat=len(theta_Q))))
  return np.concatenate([theta_Q[None], theta_Q + corners * half_Q])


def _theta_of(params: dict, names: Sequence[str]) -> np.ndarray:
  try:
    return np.array([float(params[k]) for k in names])
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(f'init must be a previous fit (a dict with keys {list(names)}): {e}') from e


# ----------------------------------------------------------------------------------------------
# Kaplan: L(x) = E + A / x^alpha.

def fit_power_law(x, loss, *, delta: float = HUBER_DELTA, reduction: str = 'sum', init=None
                  ) -> dict:
  """L(x) = E + A / x^alpha fitted to (x, loss), one entry per run (x: N, D or C).

  log L_hat = LSE(log A - alpha log x, log E), Huber(delta) of the log residual summed over runs,
  L-BFGS from the grid alpha in {0, 0.5, .., 2}, log E in {-1, .., 1}, log A in {0, 5, .., 25}
  (150 starts), or, with init (a previous fit's dict), from it and a box around it.
  Returns E, A, alpha, their logs (log_E, log_A), objective and the RMS log residual.
  """
  x_R, loss_R = _runs(3, 'fit_power_law', x=x, loss=loss)
  log_x_KR, log_loss_R = np.log(x_R)[None], np.log(loss_R)
  starts = _grid(1) if init is None else _start_box(_theta_of(init, ('log_A', 'log_E', 'alpha')), 1)
  theta, value, info = _fit_lse(log_x_KR, log_loss_R, starts, delta=delta, reduction=reduction,
                                polish=3 if init is None else 1)
  log_a, log_e, alpha = theta
  out = dict(E=math.exp(log_e), A=math.exp(log_a), alpha=float(alpha), log_E=float(log_e),
             log_A=float(log_a), objective=value, **info)
  out['rms_log_residual'] = float(np.sqrt(np.mean(
      (np.log(predict_power_law(out, x_R)) - log_loss_R) ** 2)))
  return out


def predict_power_law(params: dict, x) -> np.ndarray:
  """E + A / x^alpha."""
  return params['E'] + params['A'] / np.asarray(x, dtype=np.float64) ** params['alpha']


# ----------------------------------------------------------------------------------------------
# Chinchilla approach 3: L(N, D) = E + A / N^alpha + B / D^beta.

CHINCHILLA_THETA = ('a', 'b', 'e', 'alpha', 'beta')


def fit_chinchilla(n_params, n_tokens, loss, *, delta: float = HUBER_DELTA,
                   reduction: str = 'sum', init=None) -> dict:
  """Hoffmann et al.'s approach 3 fitted to runs (one entry per run in each array).

  log L_hat = LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e; Huber
  (delta = 1e-3) of log L_hat - log L summed over runs (reduction='mean' reproduces the original
  averaged fit, for comparison); L-BFGS from Hoffmann's 4500 initial values (alpha, beta in
  {0, .., 2}, e in {-1, .., 1}, a, b in {0, 5, .., 25}), the best kept.

  init: a previous fit's dict: start instead from its optimum and the 32 corners of a box around
  it (a, b +-2, e +-0.25, alpha, beta +-0.1), what bootstrap refits use (33 starts, not 4500).

  Returns E, A, B, alpha, beta; a, b, e (the logs); the compute-optimal exponents
  a_opt = beta / (alpha + beta) (N_opt ~ C^a_opt) and b_opt = alpha / (alpha + beta), and G with
  N_opt(C) = G (C/6)^a_opt, D_opt(C) = (C/6)^b_opt / G; the objective; rms_log_residual.
  """
  n_R, d_R, loss_R = _runs(5, 'fit_chinchilla', n_params=n_params, n_tokens=n_tokens, loss=loss)
  log_x_KR = np.stack([np.log(n_R), np.log(d_R)])
  starts = _grid(2) if init is None else _start_box(_theta_of(init, CHINCHILLA_THETA), 2)
  theta, value, info = _fit_lse(log_x_KR, np.log(loss_R), starts, delta=delta,
                                reduction=reduction, polish=3 if init is None else 1)
  out = chinchilla_params(*theta)
  out.update(objective=value, **info)
  out['rms_log_residual'] = float(np.sqrt(np.mean(
      (np.log(predict(out, n_R, d_R)) - np.log(loss_R)) ** 2)))
  return out


def chinchilla_params(a: float, b: float, e: float, alpha: float, beta: float) -> dict:
  """The law's parameters and its compute-optimal allocation from (a, b, e, alpha, beta).

  Minimising L at fixed C = 6ND: N_opt = G (C/6)^(beta/(alpha+beta)), with
  G = (alpha A / (beta B))^(1/(alpha+beta)) (Hoffmann et al., eq. 4).
  """
  a, b, e, alpha, beta = map(float, (a, b, e, alpha, beta))
  out = dict(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
             a=a, b=b, e=e)
  if alpha > 0 and beta > 0:
    out.update(a_opt=beta / (alpha + beta), b_opt=alpha / (alpha + beta),
               G=math.exp((math.log(alpha / beta) + a - b) / (alpha + beta)))
  else:  # a flat term: no interior optimum
    out.update(a_opt=math.nan, b_opt=math.nan, G=math.nan)
  return out


def predict(params: dict, n_params, n_tokens) -> np.ndarray:
  """E + A / N^alpha + B / D^beta."""
  n = np.asarray(n_params, dtype=np.float64)
  d = np.asarray(n_tokens, dtype=np.float64)
  return params['E'] + params['A'] / n ** params['alpha'] + params['B'] / d ** params['beta']


def compute_optimal(params: dict, flops) -> dict:
  """The compute-optimal N, D = C / (6 N), their ratio and the loss there, for budgets C."""
  c = _positive('flops', np.atleast_1d(flops))
  n_opt = params['G'] * (c / 6) ** params['a_opt']
  d_opt = c / (6 * n_opt)
  return dict(flops=c, n_params=n_opt, n_tokens=d_opt, tokens_per_param=d_opt / n_opt,
              loss=predict(params, n_opt, d_opt))


# ----------------------------------------------------------------------------------------------
# Least squares in log-log space, for approaches 1 and 2.

def fit_loglog(x, y) -> dict:
  """y = coef * x^exponent by least squares on (log x, log y). Returns exponent, coef."""
  x_R, y_R = _runs(2, 'fit_loglog', x=x, y=y)
  if np.ptp(np.log(x_R)) == 0:
    raise ConfigError('fit_loglog: every x is the same, no exponent can be fitted')
  slope, intercept = np.polyfit(np.log(x_R), np.log(y_R), 1)
  return dict(exponent=float(slope), coef=math.exp(intercept))


# ----------------------------------------------------------------------------------------------
# Chinchilla approach 1: the envelope of the training curves.

def _curve(i: int, flops, loss, n_tokens):
  c = _positive(f'flops of run {i}', flops)
  l_ = _positive(f'loss of run {i}', loss)
  d = _positive(f'n_tokens of run {i}', n_tokens)
  if not len(c) == len(l_) == len(d):
    raise ConfigError(f'run {i}: flops, loss and n_tokens of different lengths '
                      f'{len(c)}, {len(l_)}, {len(d)}')
  if len(c) < 2 or np.any(np.diff(c) <= 0):
    raise ConfigError(f'run {i}: flops must have at least 2 points and increase strictly')
  return np.log(c), np.log(l_), np.log(d)


def fit_envelope(flops: Sequence, loss: Sequence, n_params: Sequence, n_tokens: Sequence, *,
                 num_points: int = 50, flops_range=None, drop_edges: bool = True) -> dict:
  """Chinchilla approach 1 from every run's training curve.

  flops, loss, n_tokens: one array per run (FLOPs so far, the loss there, tokens so far);
  n_params: one number per run. Each curve's log loss and log tokens are interpolated linearly in
  log C; at each of num_points log-spaced C the run with the lowest loss among the runs whose
  curve covers C is the compute-optimal one there, giving N_opt(C) and D_opt(C); then
  N_opt = n_coef C^a and D_opt = d_coef C^b by least squares in log-log.

  flops_range: (lo, hi) of the grid; default from the second-smallest first C to the
  second-largest last C over the runs, where at least two curves compete at each end. Where the
  envelope is the smallest or largest model of the sweep, N_opt is clipped by the sweep (the
  optimum may lie beyond it), so by default (drop_edges) those points (`at_edge`) are left out
  of the power-law fits.
  Returns a, b, n_coef, d_coef and envelope = dict(flops, loss, n_params, n_tokens, at_edge,
  used: the points fitted), arrays over the grid.
  """
  if not len(flops) == len(loss) == len(n_params) == len(n_tokens):
    raise ConfigError(f'fit_envelope: {len(flops)} flops curves, {len(loss)} loss curves, '
                      f'{len(n_params)} n_params and {len(n_tokens)} n_tokens curves')
  if len(flops) < 2:
    raise ConfigError(f'fit_envelope needs at least 2 runs, got {len(flops)}')
  if num_points < 2:
    raise ConfigError(f'fit_envelope: num_points must be at least 2, got {num_points}')
  n_runs = _positive('n_params', n_params)
  curves = [_curve(i, *run) for i, run in enumerate(zip(flops, loss, n_tokens))]
  starts = np.sort([c[0][0] for c in curves])
  ends = np.sort([c[0][-1] for c in curves])
  if flops_range is None:
    lo, hi = starts[1], ends[-2]
  else:
    bounds = _positive('flops_range', flops_range)
    if len(bounds) != 2:
      raise ConfigError(f'fit_envelope: flops_range must be (lo, hi), got {len(bounds)} values')
    lo, hi = np.log(bounds)
  if not hi > lo:
    raise ConfigError(f'fit_envelope: empty FLOP range [{math.exp(lo):.3g}, {math.exp(hi):.3g}]')
  grid_G = np.linspace(lo, hi, num_points)
  loss_RG = np.full((len(curves), num_points), np.inf)
  tokens_RG = np.full((len(curves), num_points), np.nan)
  for i, (log_c, log_l, log_d) in enumerate(curves):
    inside_G = (grid_G >= log_c[0]) & (grid_G <= log_c[-1])
    loss_RG[i, inside_G] = np.interp(grid_G[inside_G], log_c, log_l)
    tokens_RG[i, inside_G] = np.interp(grid_G[inside_G], log_c, log_d)
  covered_G = np.isfinite(loss_RG).any(axis=0)
  if covered_G.sum() < 2:
    raise ConfigError('fit_envelope: fewer than 2 points of the FLOP grid lie on any curve')
  grid_G, loss_RG, tokens_RG = grid_G[covered_G], loss_RG[:, covered_G], tokens_RG[:, covered_G]
  best_G = np.argmin(loss_RG, axis=0)
  cols = np.arange(len(grid_G))
  env = dict(flops=np.exp(grid_G), loss=np.exp(loss_RG[best_G, cols]), n_params=n_runs[best_G],
             n_tokens=np.exp(tokens_RG[best_G, cols]),
             at_edge=(n_runs[best_G] == n_runs.min()) | (n_runs[best_G] == n_runs.max()))
  use_G = ~env['at_edge'] if drop_edges else np.ones(len(grid_G), dtype=bool)
  if len(np.unique(env['n_params'][use_G])) < 2:
    raise ConfigError('fit_envelope: fewer than 2 sizes are the lowest anywhere in the FLOP range'
                      + (' away from the smallest and largest size' if drop_edges else ''))
  env['used'] = use_G
  fn = fit_loglog(env['flops'][use_G], env['n_params'][use_G])
  fd = fit_loglog(env['flops'][use_G], env['n_tokens'][use_G])
  return dict(a=fn['exponent'], n_coef=fn['coef'], b=fd['exponent'], d_coef=fd['coef'],
              envelope=env)


# ----------------------------------------------------------------------------------------------
# Chinchilla approach 2: IsoFLOP parabolas.

def isoflop_parabolas(flops, n_params, loss) -> list:
  """Per IsoFLOP budget (runs with equal `flops`), the parabola of loss against log N.

  Each at least 3 distinct sizes, else a ConfigError. Returns per budget, in increasing C,
  dict(flops, coef=(c2, c1, c0), n_opt, d_opt, loss_opt, in_range, why): the minimum N_opt =
  exp(-c1 / (2 c2)) and D_opt = C / (6 N_opt) (None when c2 <= 0: no minimum), in_range when
  N_opt lies within the sizes trained at that budget, why '' or what keeps it from being a
  measured minimum.
  """
  c_R, n_R, loss_R = _runs(6, 'fit_isoflop', flops=flops, n_params=n_params, loss=loss)
  out = []
  for c in np.unique(c_R):
    at = c_R == c
    if at.sum() < 3:
      raise ConfigError(f'fit_isoflop: budget {c:.3g} has {at.sum()} runs, a parabola needs 3')
    log_n = np.log(n_R[at])
    if len(np.unique(log_n)) < 3:
      raise ConfigError(f'fit_isoflop: budget {c:.3g} has fewer than 3 distinct sizes')
    c2, c1, c0 = np.polyfit(log_n, loss_R[at], 2)
    entry = dict(flops=float(c), coef=(float(c2), float(c1), float(c0)), n_opt=None,
                 d_opt=None, loss_opt=None, in_range=False,
                 why='the parabola opens downwards (no minimum): its sizes do not bracket the '
                     'optimum')
    if c2 > 0:
      log_n_opt = -c1 / (2 * c2)
      n_opt = math.exp(log_n_opt)
      inside = bool(log_n.min() <= log_n_opt <= log_n.max())
      side = 'below the smallest' if log_n_opt < log_n.min() else 'above the largest'
      entry.update(n_opt=n_opt, d_opt=float(c / (6 * n_opt)),
                   loss_opt=float(c0 - c1 ** 2 / (4 * c2)), in_range=inside,
                   why='' if inside else f'its minimum lies {side} size trained at it')
    out.append(entry)
  return out


def fit_isoflop(flops, n_params, loss, *, require_inside: bool = False) -> dict:
  """Chinchilla approach 2: per IsoFLOP budget a parabola of loss against log N
  (isoflop_parabolas), then power laws of its minima: N_opt = n_coef C^a and D_opt = d_coef C^b
  in log-log (at least 2 budgets).

  flops: each run's compute budget C (runs with equal values form one IsoFLOP curve: pass the
  nominal budget, not each run's measured count), n_params its N, loss its final loss. A budget
  whose parabola has no minimum is an error; with require_inside, it and every budget whose
  minimum lies outside the sizes trained at it (an extrapolation, not a measurement) are left out
  of the power laws and listed in `excluded` instead.
  Returns a, b, n_coef, d_coef, budgets (isoflop_parabolas' entries used) and excluded.
  """
  budgets, excluded = [], []
  for entry in isoflop_parabolas(flops, n_params, loss):
    if entry['n_opt'] is None and not require_inside:
      raise ConfigError(f'fit_isoflop: budget {entry["flops"]:.3g}: {entry["why"]}')
    (excluded if require_inside and entry['why'] else budgets).append(entry)
  if len(budgets) < 2:
    left = '; '.join(f'{e["flops"]:.3g}: {e["why"]}' for e in excluded)
    raise ConfigError(f'fit_isoflop needs at least 2 budgets, got {len(budgets)}'
                      + (f' (left out: {left})' if left else ''))
  cs = [b['flops'] for b in budgets]
  fn = fit_loglog(cs, [b['n_opt'] for b in budgets])
  fd = fit_loglog(cs, [b['d_opt'] for b in budgets])
  return dict(a=fn['exponent'], n_coef=fn['coef'], b=fd['exponent'], d_coef=fd['coef'],
              budgets=budgets, excluded=excluded)


# ----------------------------------------------------------------------------------------------
# Bootstrap.

def _take(x, idx):
  if isinstance(x, np.ndarray):
    return x[idx]
  if isinstance(x, (list, tuple)):
    return [x[i] for i in idx]
  return np.asarray(x)[idx]


def bootstrap(fit_fn: Callable[..., dict], *data, n: int = 100, seed: int = 0,
              fraction: float = 1.0, replace: bool = True,
              percentiles: tuple = (2.5, 97.5), **fit_kwargs) -> dict:
  """Percentile intervals of every number a fit returns, over refits to resampled runs.

  data: the fit's per-run arguments (arrays, or lists of per-run curves for fit_envelope), all
  resampled with the same run indices. Each of the n refits draws round(fraction * runs) runs,
  with replacement by default (the plain bootstrap); Chinchilla's variant is fraction=0.8,
  replace=False, percentiles=(10, 90) (CHINCHILLA_BOOTSTRAP). Deterministic in seed: the draws
  come from numpy's default_rng(seed) and the fits are deterministic. A resample the fit refuses
  (a ConfigError, e.g. an IsoFLOP budget left with 2 sizes) is skipped and counted.

  For fit_chinchilla, pass init=<the full fit> in fit_kwargs to start each refit from the full
  fit's optimum and a box around it (33 starts) instead of Hoffmann's 4500.
  Returns dict(intervals={key: (low, high)}, median={key: ...}, samples={key: array}, n=refits
  kept, failed=refits refused, percentiles).
  """
  if not data:
    raise ConfigError('bootstrap: no data to resample')
  runs = {len(x) for x in data}
  if len(runs) != 1:
    raise ConfigError(f'bootstrap: data of different lengths {sorted(runs)}')
  runs = runs.pop()
  size = int(round(fraction * runs))
  if not 0 < fraction <= 1 or size < 1:
    raise ConfigError(f'bootstrap: fraction must be in (0, 1] and keep a run, got {fraction}')
  if n < 2:
    raise ConfigError(f'bootstrap: n must be at least 2, got {n}')
  rng = np.random.default_rng(seed)
  samples: dict = {}
  failed = 0
  for _ in range(n):
    idx = rng.choice(runs, size=size, replace=replace)
    try:
      fit = fit_fn(*(_take(x, idx) for x in data), **fit_kwargs)
    except ConfigError:
      failed += 1
      continue
    for key, value in fit.items():
      if isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool):
        samples.setdefault(key, []).append(float(value))
  kept = n - failed
  if kept < 2:
    raise ConfigError(f'bootstrap: the fit refused {failed} of {n} resamples')
  samples = {k: np.array(v) for k, v in samples.items() if len(v) == kept}
  lo, hi = percentiles
  return dict(intervals={k: (float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi)))
                         for k, v in samples.items()},
              median={k: float(np.nanmedian(v)) for k, v in samples.items()},
              samples=samples, n=kept, failed=failed, percentiles=(lo, hi))
