#!/usr/bin/env python3
"""Reference log parsers beside graygate's miner, on the same lines (tests/loghub.rs calls this).

Runs logparser3's Brain and Drain and the Drain3 package over a grid of settings on each loghub
system's `Content` column, with one generic mask set for every system (no per-system regex, and
Brain is given a neutral dataset name so its per-dataset splitting rules stay off), and prints
one JSON object: {parser: [{"setting": str, "ga": {system: grouping accuracy}}]}. The caller
chooses each parser's setting the way it chooses graygate's (on four systems, measured on the
other four; leave one system out), so every parser is measured alike.

Usage: anchors.py LOGHUB_DIR SYSTEM...   (needs: pip install -r scripts/logparsers/requirements.txt)
"""
import contextlib
import csv
import io
import json
import os
import sys
import tempfile
from collections import defaultdict

# One generic mask set for every parser and system: IP addresses (with a port), hex numbers,
# and numbers standing alone. Nothing names a system.
MASKS = [
    r"(/|)([0-9]+\.){3}[0-9]+(:[0-9]+|)(:|)",
    r"0x[0-9a-fA-F]+",
    r"(?<=[^A-Za-z0-9])(\-?\+?\d+)(?=[^A-Za-z0-9])|[0-9]+$",
]


def load(root, system):
    with open(os.path.join(root, system, f"{system}_2k.log_structured.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [r["EventId"] for r in rows]


def grouping_accuracy(predicted, truth):
    by_pred, by_truth = defaultdict(list), defaultdict(list)
    for i, (p, t) in enumerate(zip(predicted, truth)):
        by_pred[p].append(i)
        by_truth[t].append(i)
    correct = sum(len(ls) for ls in by_pred.values() if by_truth[truth[ls[0]]] == ls)
    return correct / max(len(predicted), 1)


def run_logparser(cls_kwargs, make, lines):
    """Run a logparser3 parser on `lines` (one message each) and return its event ids."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "in.log"), "w") as f:
            for line in lines:
                f.write(line.replace("\n", " ") + "\n")
        parser = make(indir=d, outdir=os.path.join(d, "out"), **cls_kwargs)
        with contextlib.redirect_stdout(io.StringIO()):
            parser.parse("in.log")
        with open(os.path.join(d, "out", "in.log_structured.csv"), newline="") as f:
            return [r["EventId"] for r in csv.DictReader(f)]


def brain(lines, threshold):
    from logparser.Brain import LogParser

    def make(**kw):
        return LogParser(logname="generic", log_format="<Content>", threshold=threshold,
                         delimeter=[], rex=MASKS, **kw)
    return run_logparser({}, make, lines)


def drain(lines, depth, st):
    from logparser.Drain import LogParser

    def make(**kw):
        return LogParser(log_format="<Content>", depth=depth, st=st, rex=MASKS, **kw)
    return run_logparser({}, make, lines)


def drain3(lines, sim_th):
    from drain3 import TemplateMiner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    cfg = TemplateMinerConfig()
    cfg.drain_sim_th = sim_th
    cfg.masking_instructions = [MaskingInstruction(m, "<*>") for m in MASKS]
    cfg.profiling_enabled = False
    miner = TemplateMiner(config=cfg)
    ids = [miner.add_log_message(line)["cluster_id"] for line in lines]
    # Drain3 can still merge clusters after a line was added: score the final grouping.
    return [miner.match(line).cluster_id if miner.match(line) else i for i, line in zip(ids, lines)]


def main():
    root, systems = sys.argv[1], sys.argv[2:]
    data = {s: load(root, s) for s in systems}
    grids = {
        "Brain": [(f"threshold {t}", lambda ls, t=t: brain(ls, t)) for t in (2, 3, 4, 5, 6)],
        "Drain": [(f"depth {d}, similarity {st}", lambda ls, d=d, st=st: drain(ls, d, st))
                  for d in (3, 4, 5) for st in (0.3, 0.4, 0.5, 0.6, 0.7)],
        "Drain3": [(f"similarity {st}", lambda ls, st=st: drain3(ls, st))
                   for st in (0.3, 0.4, 0.5, 0.6, 0.7)],
    }
    out = {}
    for name, grid in grids.items():
        out[name] = []
        for setting, run in grid:
            ga = {}
            for s, (lines, truth) in data.items():
                try:
                    ga[s] = grouping_accuracy(run(lines), truth)
                except Exception as e:  # a parser that breaks on a system scores 0 there
                    print(f"{name} {setting} failed on {s}: {e}", file=sys.stderr)
                    ga[s] = 0.0
            out[name].append({"setting": setting, "ga": ga})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
