#!/usr/bin/env python3
"""logparser3's Brain on every loghub line, for the differential test of graygate's port
(tests/brain_reference.rs).

For each system it takes two inputs: the `Content` column of the structured file (the message a
parser sees after the header) and the raw lines of `X_2k.log` (header and all). Each goes through
the reference `logparser.Brain.LogParser` with the same generic masks graygate uses and a neutral
dataset name (so none of the reference's per-dataset splitting applies), once per threshold
asked for. Prints one JSON object:
{system: {input: {"lines": [...], "ids": {threshold: [event id per line]}}}}.
Carriage returns and newlines inside a line become spaces first, so both sides see the same
lines.

Usage: brain_reference.py LOGHUB_DIR THRESHOLDS SYSTEM...   (THRESHOLDS like 2,4)
"""
import contextlib
import csv
import io
import json
import os
import sys
import tempfile

from anchors import MASKS


def clean(line):
    return line.replace("\r", " ").replace("\n", " ")


def inputs(root, system):
    with open(os.path.join(root, system, f"{system}_2k.log_structured.csv"), newline="") as f:
        content = [clean(r["Content"]) for r in csv.DictReader(f)]
    with open(os.path.join(root, system, f"{system}_2k.log"), "rb") as f:
        raw = f.read().decode("utf-8", errors="replace").split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    return {"content": content, "raw": [clean(line) for line in raw]}


def brain_ids(lines, threshold):
    from logparser.Brain import LogParser

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "in.log"), "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        parser = LogParser(logname="generic", log_format="<Content>", indir=d,
                           outdir=os.path.join(d, "out"), threshold=threshold,
                           delimeter=[], rex=MASKS)
        with contextlib.redirect_stdout(io.StringIO()):
            parser.parse("in.log")
        with open(os.path.join(d, "out", "in.log_structured.csv"), newline="",
                  encoding="utf-8") as f:
            ids = [r["EventId"] for r in csv.DictReader(f)]
    if len(ids) != len(lines):
        raise SystemExit(f"the reference kept {len(ids)} of {len(lines)} lines")
    return ids


def main():
    root, thresholds, systems = sys.argv[1], sys.argv[2], sys.argv[3:]
    out = {}
    for system in systems:
        out[system] = {}
        for name, lines in inputs(root, system).items():
            ids = {t: brain_ids(lines, int(t)) for t in thresholds.split(",")}
            out[system][name] = {"lines": lines, "ids": ids}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
