"""Fuzz mpdref's file readers: >= 100,000 damaged IDX files, model files, checkpoints, .mpdz files, and the
ONNX, safetensors and PyTorch files that `mpdref convert` reads.

    python benchmarks/fuzz_formats.py [--cases 100000] [--workers 2] [--seconds 10] [--kinds onnx,pt]

Each case takes a valid file (written by mpdref; the PyTorch files by torch.save), damages
it (bit flips, byte and run overwrites, truncation, extension, deleted or duplicated runs,
splices of two files, zeroed runs; one to three at a time) and loads it with the matching
reader under a time limit. Allowed: the reader's documented error (DataError, FormatError),
or a load of the right content: exactly the undamaged file's (after a splice, that of either
spliced file) for the checksummed model files, checkpoints and .mpdz files, and for PyTorch
files, whose zip records' CRC-32s the reader checks; for the formats without a checksum,
exactly what a decoder other than the reader makes of the damaged bytes: IDX files
tests/naive.py idx_decode (and the original's dtype and shape while the header bytes are
intact), safetensors files the safetensors library, ONNX files a protobuf walk in
tests/fuzzing.py (the rule in full: tests/fuzzing.py). The ONNX, safetensors and PyTorch
kinds run where the interop extra (and for PyTorch files, torch) is installed. Counted
separately, and failing the run: a load of other content, any other exception, a hang
(time limit), a crashed worker process. Cases are reproducible from (kind, seed).
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

# fuzzing.py is test tooling and lives in tests/. Worker processes get this path too: forked
# ones inherit it, spawned ones run this module's top level again (as __mp_main__).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzzing import CaseTimeout, allowed_contents, available_kinds, load_outcome, mutate, sample_files  # noqa: E402

KINDS = ("idx", "model", "checkpoint", "mpdz", "onnx", "safetensors", "pt")  # their order fixes the seeds
_SAMPLES = None


def run_chunk(kind: str, seeds: range, seconds: float) -> dict:
    global _SAMPLES
    work = Path(tempfile.mkdtemp(prefix="mpdref-fuzz-"))
    if _SAMPLES is None:
        _SAMPLES = sample_files(work)
    counts = collections.Counter()
    failures = []
    for seed in seeds:
        rng = np.random.default_rng([seed, KINDS.index(kind)])
        which = int(rng.integers(len(_SAMPLES[kind])))
        sample = _SAMPLES[kind][which]
        other = _SAMPLES[kind][(which + 1) % len(_SAMPLES[kind])]
        data = sample.data
        applied = []
        for _ in range(int(rng.integers(1, 4))):
            mutation, data = mutate(data, rng, other.data)
            applied.append(mutation)
        path = work / f"case{sample.suffix}"
        path.write_bytes(data)
        try:
            outcome = load_outcome(kind, path, allowed_contents(sample, other, applied), seconds)
            counts[outcome.verdict if data != sample.data or outcome.verdict != "loaded" else "unchanged"] += 1
            if outcome.verdict == "loaded-different":
                failures.append((kind, seed, applied, f"loaded other content: {', '.join(outcome.differing)}"))
        except CaseTimeout:
            counts["hang"] += 1
            failures.append((kind, seed, applied, "hang"))
        except Exception:  # noqa: BLE001 - exactly what this benchmark is looking for
            counts["unexpected"] += 1
            failures.append((kind, seed, applied, traceback.format_exc(limit=3)))
    return {"kind": kind, "counts": counts, "failures": failures[:5]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000, help="total cases, split evenly over the kinds")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="time limit per case")
    p.add_argument("--chunk", type=int, default=2000)
    p.add_argument("--kinds", default=",".join(available_kinds()),
                   help=f"comma-separated kinds of file (default: those installed, of {', '.join(KINDS)})")
    args = p.parse_args()
    kinds = [kind for kind in args.kinds.split(",") if kind]
    unknown = [kind for kind in kinds if kind not in available_kinds()]
    if unknown:
        p.error(f"kinds {unknown} are unknown or not installed; available here: {', '.join(available_kinds())}")
    missing = [kind for kind in KINDS if kind not in available_kinds()]
    if missing:
        print(f"left out, not installed: {', '.join(missing)} (pip install -e '.[interop,crosscheck]')")

    started = time.perf_counter()
    per_kind = {kind: args.cases // len(kinds) + (i < args.cases % len(kinds)) for i, kind in enumerate(kinds)}
    jobs = [(kind, range(start, min(start + args.chunk, per_kind[kind])))
            for kind in kinds for start in range(0, per_kind[kind], args.chunk)]
    totals = {kind: collections.Counter() for kind in kinds}
    failures = []
    crashed = 0
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_chunk, kind, seeds, args.seconds) for kind, seeds in jobs]
        for (kind, seeds), future in zip(jobs, futures):
            try:
                result = future.result()
            except BrokenProcessPool:
                crashed += 1
                failures.append((kind, seeds.start, [], "worker process crashed in this chunk"))
                continue
            totals[kind].update(result["counts"])
            failures += result["failures"]
    seconds = time.perf_counter() - started

    # loaded: damaged, still a valid file with the right content (e.g. changed pixels, HDF5 user-block
    # padding, a splice that is the other file whole); unchanged: the damage happened to change nothing
    # (a splice at the very end, a byte set to itself); different: loaded other content
    print(f"{'format':<12}{'cases':>9}{'unchanged':>11}{'loaded':>9}{'rejected':>10}{'different':>11}"
          f"{'unexpected':>12}{'hangs':>7}")
    for kind in kinds:
        c = totals[kind]
        print(f"{kind:<12}{sum(c.values()):>9}{c['unchanged']:>11}{c['loaded']:>9}{c['rejected']:>10}"
              f"{c['loaded-different']:>11}{c['unexpected']:>12}{c['hang']:>7}")
    total = sum(sum(c.values()) for c in totals.values())
    print(f"{total} cases in {seconds:.0f} s, {crashed} crashed worker chunks")
    for kind, seed, applied, what in failures[:10]:
        print(f"FAIL {kind} seed {seed} {applied}:\n{what}")
    bad = crashed + sum(c["loaded-different"] + c["unexpected"] + c["hang"] for c in totals.values())
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
