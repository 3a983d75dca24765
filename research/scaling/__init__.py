"""Size ladders and scaling-law fits (numpy and scipy only).

`research.scaling.ladder` stays the module (its function is research.scaling.ladder.ladder);
everything else public is here.
"""

from research.scaling.fits import (CHINCHILLA_BOOTSTRAP, HUBER_DELTA, bootstrap, chinchilla_params,
                                   compute_optimal, fit_chinchilla, fit_envelope, fit_isoflop,
                                   fit_loglog, fit_power_law, isoflop_parabolas,
                                   lse_objective, predict, predict_power_law)
from research.scaling.ladder import Rung, count_params, count_params_of, ladder_sizes, rung
