#!/usr/bin/env python3
"""Time scipy's mannwhitneyu and gaussian_kde against graygate's detectors on the same inputs,
in the same run, and print the ratio. Run from the repository root:

    python3 scripts/bench/scipy_side_by_side.py
"""
import json
import os
import subprocess
import tempfile
import timeit

import numpy as np
import scipy
from scipy import stats

rng = np.random.RandomState(42)
x = rng.normal(102.0, 10.0, 600)
y = rng.normal(100.0, 10.0, 600)

with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({"x": x.tolist(), "y": y.tolist()}, f)
    path = f.name

subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "detector_timing"], check=True)
rust = json.loads(subprocess.run(["target/release/examples/detector_timing", path], check=True, capture_output=True, text=True).stdout)
os.unlink(path)


def per_call(fn, number):
    fn()
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


mw = per_call(lambda: stats.mannwhitneyu(x, y, alternative="two-sided"), 200)
kde = per_call(lambda: stats.gaussian_kde(y, bw_method="silverman").logpdf(x).mean(), 50)
p = stats.mannwhitneyu(x, y, alternative="two-sided").pvalue
ll = stats.gaussian_kde(y, bw_method="silverman").logpdf(x).mean()
assert abs(rust["p_value"] / p - 1) < 1e-9, (rust["p_value"], p)
assert abs(rust["kde_loglik"] / ll - 1) < 1e-9, (rust["kde_loglik"], ll)

print(f"scipy {scipy.__version__}, numpy {np.__version__}; inputs 600 vs 600; same results to 1e-9")
print("| computation | scipy | graygate | scipy / graygate |")
print("| --- | ---: | ---: | ---: |")
print(f"| Mann-Whitney U test (two-sided, asymptotic) | {mw / 1000:.1f} µs | {rust['mann_whitney_u_ns'] / 1000:.1f} µs | {mw / rust['mann_whitney_u_ns']:.0f}× |")
print(f"| … graygate's detector incl. Hodges-Lehmann shift | | {rust['mann_whitney_with_hl_ns'] / 1000:.1f} µs | {mw / rust['mann_whitney_with_hl_ns']:.1f}× |")
print(f"| Gaussian KDE (Silverman) log-likelihood of 600 points | {kde / 1e6:.2f} ms | {rust['kde_loglik_ns'] / 1e6:.2f} ms | {kde / rust['kde_loglik_ns']:.1f}× |")
print(f"| … graygate's full KDE score incl. leave-one-out | | {rust['kde_score_ns'] / 1e6:.2f} ms | |")
