"""How often a healthy demo change fails the built-in error-ratio test, with the level held at
0.01 per judgement or shared among the change's judgements (docs/analysis.md, "One significance
level for the whole change"). A Monte Carlo of the demo's settings, independent of graygate's
code: pods serve Poisson traffic at 20 requests/s with 0.2% errors; batches of 1 pod against 3
control pods, 2 against 2, and 4 against one hour of background (28,888 requests); after the
warm-up, 13.3 s, 10.7 s and 13.3 s of data judged every 5 s on the data so far with scipy's
one-sided Fisher exact test and a 0.2-point minimum effect; a batch fails on 2 failing
judgements in a row, and is judged past its bake while the last judgement failed.

usage: python3 scripts/reference/shared_level.py [RUNS]
"""

import sys

import numpy as np
from scipy.stats import fisher_exact

P_ERROR = 0.002
RATE = 20
INTERVAL = 5
BACKGROUND = 28_888
BATCHES = [(1, 3, 13.3), (2, 2, 10.7), (4, 0, 13.3)]  # change pods, control pods, judged seconds


def batch_fails(rng, change_pods, control_pods, judged, alpha):
    secs = int(np.ceil(judged)) + 2 * INTERVAL
    n_change = rng.poisson(RATE * change_pods, secs)
    e_change = rng.binomial(n_change, P_ERROR)
    if control_pods:
        n_ref = rng.poisson(RATE * control_pods, secs)
        e_ref = rng.binomial(n_ref, P_ERROR)
    else:
        bg_errors = rng.binomial(BACKGROUND, P_ERROR)
    streak, t = 0, INTERVAL
    while t <= secs:
        a, n1 = e_change[:t].sum(), n_change[:t].sum()
        if control_pods:
            c, n2 = e_ref[:t].sum(), n_ref[:t].sum()
        else:
            c, n2 = bg_errors, BACKGROUND
        p = fisher_exact([[a, n1 - a], [c, n2 - c]], alternative="greater")[1]
        streak = streak + 1 if p < alpha and a / n1 - c / n2 >= 0.002 else 0
        if streak >= 2:
            return True
        if t >= judged and streak == 0:
            return False
        t += INTERVAL
    return False


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    looks = sum(max(1, int(j // INTERVAL)) for _, _, j in BATCHES)
    for name, alpha in [("0.01 per judgement", 0.01), (f"0.01 / {looks} judgements", 0.01 / looks)]:
        rng = np.random.default_rng(7)
        failed = sum(
            any(batch_fails(rng, c, k, j, alpha) for c, k, j in BATCHES) for _ in range(runs)
        )
        share = failed / runs
        print(
            f"{name}: {share:.2%} of healthy changes failed; "
            f"{1 - (1 - share) ** 20:.1%} of runs of twenty changes"
        )


if __name__ == "__main__":
    main()
