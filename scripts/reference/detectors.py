#!/usr/bin/env python3
"""Reference values for graygate's statistical detectors, computed with scipy and numpy.

Run from the repository root:  python3 scripts/reference/detectors.py > tests/fixtures/detectors.json
The Rust tests (tests/detector_fixtures.rs) must match these to 1e-9 relative.
"""
import json
import sys

import numpy as np
import scipy
from scipy import stats

rng = np.random.RandomState(20261121)


def sample(kind, n):
    if kind == "normal":
        return rng.normal(100.0, 15.0, n)
    if kind == "lognormal":
        return rng.lognormal(np.log(0.04), 0.3, n)
    if kind == "ties":
        return rng.randint(0, 6, n).astype(float)
    if kind == "shifted":
        return rng.normal(110.0, 15.0, n)
    if kind == "wide":
        return rng.normal(100.0, 45.0, n)
    raise ValueError(kind)


def floats(a):
    return [float(x) for x in a]


cases = {"mann_whitney": [], "hodges_lehmann": [], "fisher": [], "two_proportion": [],
         "brown_forsythe": [], "three_sigma": [], "kde": [], "dtw": []}

for n1, n2, kx, ky in [(5, 7, "normal", "shifted"), (8, 30, "lognormal", "lognormal"), (3, 4, "normal", "normal"),
                       (20, 25, "normal", "shifted"), (60, 60, "ties", "ties"), (150, 120, "lognormal", "lognormal"),
                       (7, 100, "shifted", "normal"), (12, 9, "ties", "ties"), (200, 200, "shifted", "normal")]:
    x, y = sample(kx, n1), sample(ky, n2)
    for alternative in ["greater", "less", "two-sided"]:
        for method in ["auto", "asymptotic"] + (["exact"] if min(n1, n2) <= 8 and len(set(np.concatenate([x, y]))) == n1 + n2 else []):
            r = stats.mannwhitneyu(x, y, alternative=alternative, method=method, use_continuity=True)
            cases["mann_whitney"].append({"x": floats(x), "y": floats(y), "alternative": alternative, "method": method,
                                          "u1": float(r.statistic), "p": float(r.pvalue)})
    cases["hodges_lehmann"].append({"x": floats(x), "y": floats(y), "shift": float(np.median(np.subtract.outer(x, y)))})

for table in [[[3, 597], [0, 1800]], [[0, 600], [0, 1800]], [[12, 588], [4, 1796]], [[1, 9], [11, 3]],
              [[40, 960], [20, 980]], [[5, 95], [0, 300]], [[2, 2], [2, 2]]]:
    for alternative in ["greater", "less", "two-sided"]:
        r = stats.fisher_exact(table, alternative=alternative)
        cases["fisher"].append({"table": table, "alternative": alternative, "p": float(r[1] if isinstance(r, tuple) else r.pvalue)})

for a, n1, c, n2 in [(120, 6000, 80, 6000), (50, 1000, 30, 1200), (300, 10000, 310, 10000)]:
    p1, p2, pooled = a / n1, c / n2, (a + c) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    cases["two_proportion"].append({"a": a, "n1": n1, "c": c, "n2": n2, "z": float(z), "p_greater": float(stats.norm.sf(z))})

for kx, ky, n1, n2 in [("normal", "wide", 40, 50), ("normal", "normal", 100, 80), ("ties", "ties", 30, 30), ("lognormal", "lognormal", 600, 600)]:
    x, y = sample(kx, n1), sample(ky, n2)
    r = stats.levene(x, y, center="median")
    cases["brown_forsythe"].append({"x": floats(x), "y": floats(y), "w": float(r.statistic), "p": float(r.pvalue)})

for kx, n in [("normal", 30), ("shifted", 12), ("lognormal", 50)]:
    change, background = sample(kx, n), sample("normal", 240)
    mad = np.median(np.abs(background - np.median(background)))
    cases["three_sigma"].append({
        "change": floats(change), "background": floats(background),
        "classic": float((np.median(change) - background.mean()) / background.std(ddof=1)),
        "robust": float((np.median(change) - np.median(background)) / (1.4826 * mad)),
    })

for kx, ky, n1, n2 in [("normal", "normal", 40, 60), ("shifted", "normal", 30, 80), ("lognormal", "lognormal", 100, 120)]:
    change, control = sample(kx, n1), sample(ky, n2)
    kde = stats.gaussian_kde(control, bw_method="silverman")
    h = float(np.sqrt(kde.covariance[0, 0]))
    change_ll = float(kde.logpdf(change).mean())
    # Leave-one-out likelihood of the control, with the same kernel width, in plain numpy.
    diffs = control[:, None] - control[None, :]
    dens = np.exp(-0.5 * (diffs / h) ** 2) / (h * np.sqrt(2 * np.pi))
    np.fill_diagonal(dens, 0.0)
    loo = float(np.mean(np.log(dens.sum(axis=1) / (len(control) - 1))))
    cases["kde"].append({"change": floats(change), "control": floats(control), "bandwidth": h,
                         "change_ll": change_ll, "loo_ll": loo, "score": change_ll - loo})


def znorm(v):
    v = np.asarray(v, dtype=float)
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def dtw_band(a, b, band):
    n, m = len(a), len(b)
    band = max(band, abs(n - m))
    D = np.full((n + 1, m + 1), np.inf)
    D[0, 0] = 0.0
    for i in range(1, n + 1):
        centre = i * m // n
        for j in range(max(1, centre - band), min(m, centre + band) + 1):
            D[i, j] = abs(a[i - 1] - b[j - 1]) + min(D[i - 1, j], D[i, j - 1], D[i - 1, j - 1])
    return float(D[n, m])


for n, m, frac in [(50, 50, 0.1), (80, 60, 0.1), (120, 120, 0.05)]:
    t1 = np.linspace(0, 6, n)
    t2 = np.linspace(0, 6, m)
    a = np.sin(t1) + rng.normal(0, 0.1, n)
    b = np.sin(t2 + 0.4) * 2 + 5 + rng.normal(0, 0.1, m)
    band = int(np.ceil(max(n, m) * frac))
    cases["dtw"].append({"a": floats(a), "b": floats(b), "fraction": frac,
                         "distance": dtw_band(znorm(a), znorm(b), band) / (n + m)})

json.dump({"generator": "scripts/reference/detectors.py", "scipy": scipy.__version__, "numpy": np.__version__,
           "cases": cases}, sys.stdout, indent=None, separators=(",", ":"))
sys.stdout.write("\n")
