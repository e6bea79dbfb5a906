#!/usr/bin/env python3
"""Reference values for the `peers` detector, computed in plain numpy from its documented
definition (docs/analysis.md, "How peers judges"), independently of the Rust code.

Run from the repository root:  python3 scripts/reference/peers.py > tests/fixtures/peers.json
tests/detector_fixtures.rs must match these to 1e-9 relative.
"""
import json
import sys

import numpy as np

rng = np.random.RandomState(20261123)


def reference_values(change, refs, direction, min_delta, far):
    """change, refs: lists of units, each a list of (slot, value) pairs."""
    slots = sorted({s for u in change + refs for s, _ in u})
    col = {s: i for i, s in enumerate(slots)}

    def matrix(units):
        m = np.full((len(units), len(slots)), np.nan)
        for i, u in enumerate(units):
            for s, v in u:
                m[i, col[s]] = v
        return m

    C, R = matrix(change), matrix(refs)
    level = float(np.median(R[~np.isnan(R)]))
    change_slots = ~np.all(np.isnan(C), axis=0)
    ref_slots = ~np.all(np.isnan(R), axis=0)
    pooled = not np.any(change_slots & ref_slots)
    if pooled:
        spread = float(np.max(np.abs(R[~np.isnan(R)] - level)))
    else:
        spread = 0.0
        for i in range(R.shape[0]):
            others = np.delete(R, i, axis=0)
            for j in range(R.shape[1]):
                o = others[:, j]
                o = o[~np.isnan(o)]
                if not np.isnan(R[i, j]) and len(o):
                    spread = max(spread, abs(R[i, j] - float(np.median(o))))
    band = max(spread, min_delta * abs(level))
    excess = []
    for j in range(len(slots)):
        c = C[:, j][~np.isnan(C[:, j])]
        if not len(c):
            continue
        if pooled:
            typical = level
        else:
            r = R[:, j][~np.isnan(R[:, j])]
            if not len(r):
                continue
            typical = float(np.median(r))
        d = float(np.median(c)) - typical
        d = {"increase": d, "decrease": -d, "either": abs(d)}[direction]
        excess.append(d / band if band > 0 else (np.inf if d > 0 else 0.0))
    beyond = np.array(excess) > 1.0
    longest = run = 0
    for b in beyond:
        run = run + 1 if b else 0
        longest = max(longest, run)
    return {"spread": spread, "level": level, "band": band, "excess": [float(e) for e in excess],
            "beyond": int(beyond.sum()), "longest": int(longest),
            "far": int((np.array(excess) > far).sum()), "pooled": bool(pooled)}


def units(n_units, n_slots, mean, noise, start=0, offset=None, missing=0.0):
    out = []
    for k in range(n_units):
        base = mean + (offset[k] if offset is not None else 0.0)
        u = [(start + s, float(base + noise * rng.normal())) for s in range(n_slots) if rng.uniform() >= missing]
        out.append(u)
    return out


cases = []
for name, change, refs, direction, min_delta in [
    ("canary like its peers", units(1, 10, 100, 3), units(4, 10, 100, 3, offset=[0, 5, -4, 2]), "increase", 0.25),
    ("sustained shift", units(1, 10, 160, 3), units(3, 10, 100, 3, offset=[0, 5, -4]), "increase", 0.25),
    ("two canaries, gaps", units(2, 12, 130, 5, missing=0.2), units(3, 12, 100, 4, missing=0.2), "increase", 0.1),
    ("success rate drop", units(1, 9, 60, 8), units(4, 9, 100, 0.0), "decrease", 0.01),
    ("either direction", units(1, 20, 70, 4), units(2, 20, 100, 6, offset=[0, 10]), "either", 0.25),
    ("pooled background", units(1, 8, 120, 2), units(3, 20, 100, 5, start=1000), "increase", 0.25),
]:
    r = reference_values(change, refs, direction, min_delta, 2.0)
    cases.append({"name": name, "change": change, "reference": refs, "direction": direction,
                  "min_delta": min_delta, "far_factor": 2.0, **r})

json.dump({"generator": "scripts/reference/peers.py", "numpy": np.__version__, "cases": cases},
          sys.stdout, indent=None, separators=(",", ":"))
sys.stdout.write("\n")
