#!/usr/bin/env python3
"""Reference values for the history group's moderated prediction interval (docs/analysis.md,
"The history group"), computed with scipy independently of the Rust code: the trigamma function
(scipy.special.polygamma), its inverse (by bracketing root search, not Newton), the prior of
the log-variance estimated by the method of moments (Smyth 2004, limma's fitFDist), and the
prediction interval of one more change's median ratio.

Run from the repository root:  python3 scripts/reference/moderated.py > tests/fixtures/moderated.json
src/analysis/history.rs must match these to 1e-6 relative.
"""
import json
import math

import numpy as np
from scipy import optimize, special, stats

rng = np.random.RandomState(20261202)


def trigamma(x):
    return float(special.polygamma(1, x))


def trigamma_inverse(x):
    return optimize.brentq(lambda y: trigamma(y) - x, 1e-9, 1e9, xtol=1e-14, rtol=1e-14)


def prior(variances):
    v = [(s2, d) for s2, d in variances if s2 > 1e-12 and d >= 1]
    if len(v) < 3:
        return None
    e = np.array([math.log(s2) - special.digamma(d / 2) + math.log(d / 2) for s2, d in v])
    spread = np.var(e, ddof=1) - np.mean([trigamma(d / 2) for _, d in v])
    total = sum(d for _, d in v)
    if spread > 0:
        d0 = 2 * trigamma_inverse(spread)
        s0sq = math.exp(np.mean(e) + special.digamma(d0 / 2) - math.log(d0 / 2))
        return d0, s0sq, total
    return math.inf, math.exp(np.mean(e)), total


def interval(medians, alpha, se, pr):
    logs = np.log(medians)
    n = len(logs)
    mean, s2 = float(np.mean(logs)), float(np.var(logs, ddof=1))
    if pr is None:
        var, df = s2, n - 1
    elif math.isinf(pr[0]):
        var, df = pr[1], max(pr[2], n - 1)
    else:
        var = (pr[0] * pr[1] + (n - 1) * s2) / (pr[0] + n - 1)
        # limma caps the moderated degrees of freedom at all the workloads' together
        df = min(pr[0] + n - 1, max(pr[2], n - 1))
    q = stats.norm.ppf(1 - alpha) if math.isinf(df) else stats.t.ppf(1 - alpha, df)
    half = q * math.sqrt(var * (1 + 1 / n) + se * se)
    return math.exp(mean - half), math.exp(mean + half)


def enc(x):
    return "inf" if math.isinf(x) else x


out = {"trigamma": [], "trigamma_inverse": [], "priors": []}
for x in [0.05, 0.5, 1.0, 1.5, 2.5, 7.0, 40.0]:
    out["trigamma"].append({"x": x, "trigamma": trigamma(x)})
for x in [0.02, 0.3, 1.0, 4.0, 30.0]:
    out["trigamma_inverse"].append({"x": x, "inverse": trigamma_inverse(x)})
cases = [
    # workloads whose variances differ far more than sampling makes them: little is lent
    [(0.001, 2), (0.04, 3), (0.2, 5), (0.0005, 2), (0.09, 9)],
    # variances alike: infinite prior degrees of freedom
    [(0.010, 9), (0.011, 9), (0.0105, 9), (0.0098, 9)],
]
for _ in range(4):
    g = rng.randint(3, 9)
    sd0 = rng.uniform(0.02, 0.3)
    case = []
    for _ in range(g):
        d = int(rng.randint(1, 10))
        s2 = float(sd0 ** 2 * rng.chisquare(d) / d * rng.lognormal(0, 0.8))
        case.append((s2, d))
    cases.append(case)
for case in cases:
    pr = prior(case)
    medians = list(np.exp(rng.normal(0.1, 0.05, size=3)))
    se = float(rng.uniform(0, 0.05))
    lo, hi = interval(medians, 0.0025, se, pr)
    plo, phi = interval(medians, 0.0025, se, None)
    out["priors"].append({
        "variances": case,
        "d0": enc(pr[0]),
        "s0sq": pr[1],
        "df_total": pr[2],
        "medians": medians,
        "alpha": 0.0025,
        "se": se,
        "moderated": [lo, hi],
        "plain": [plo, phi],
    })
print(json.dumps(out, indent=1))
