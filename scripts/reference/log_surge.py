#!/usr/bin/env python3
"""Reference values for the log surge test's arithmetic, computed with scipy and numpy.

Run from the repository root:  python3 scripts/reference/log_surge.py > tests/fixtures/log_surge.json
tests/detector_fixtures.rs must match these to 1e-9 relative.

- binomial_sf: P(X >= k) for X ~ Binomial(n, p). Whole counts come from scipy.stats.binom.sf;
  the quasi-binomial test divides both counts by the dispersion, and its fractional counts come
  from the regularized incomplete beta function I_p(k, n - k + 1) (scipy.special.betainc), which
  equals binom.sf(k - 1, n, p) for whole k.
- dispersion: Pearson's index of dispersion of window counts, sum((x - mean)^2) / mean / (k - 1).
"""
import json
import sys

import numpy as np
import scipy
from scipy import special, stats

rng = np.random.RandomState(20261202)
cases = {"binomial_sf": [], "dispersion": []}

for k, n, p in [(18, 22, 0.5), (1, 1, 0.5), (3, 10, 0.2), (40, 48, 0.5), (5, 100, 0.01), (60, 132, 0.8333333333333334),
                (12, 30, 0.3), (7, 7, 0.9)]:
    cases["binomial_sf"].append({"k": k, "n": n, "p": p, "sf": float(stats.binom.sf(k - 1, n, p))})
for k, n, p, phi in [(18, 22, 0.5, 11.36), (40, 48, 0.5, 3.2), (5, 9, 0.25, 1.7), (100, 130, 0.6, 25.0),
                     (3, 4, 0.5, 2.5), (250, 400, 0.5, 7.75)]:
    kk, nn = k / phi, n / phi
    cases["binomial_sf"].append({"k": kk, "n": nn, "p": p, "sf": float(special.betainc(kk, nn - kk + 1, p))})

for windows, rate, burst in [(7, 4.0, False), (7, 8.0, True), (30, 0.5, False), (30, 2.0, True), (300, 0.1, True),
                             (12, 20.0, False)]:
    x = rng.poisson(rate, windows).astype(float)
    if burst:
        x = x * rng.binomial(1, 0.3, windows) * 3
    if x.sum() == 0:
        x[0] = 1.0
    m = x.mean()
    cases["dispersion"].append({"counts": [float(v) for v in x], "index": float(((x - m) ** 2).sum() / m / (windows - 1))})

json.dump({"generator": "scripts/reference/log_surge.py", "scipy": scipy.__version__, "numpy": np.__version__,
           "cases": cases}, sys.stdout, indent=None, separators=(",", ":"))
sys.stdout.write("\n")
