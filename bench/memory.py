"""Memory: a fit's measured peak against `TrainConfig.memory_bytes`, on a CPU.

    python bench/memory.py [--only bayes|mf]

Each case runs in a fresh process (`--case JSON`). Method: load and split the data as
`python -m pipeline.train` does; warm up with a 2-factor, 2-epoch fit of the same family and
implicit mode (imports, numba's JIT, the LAPACK and OpenMP thread pools: one-time costs, not the
fit's); `gc.collect()`; read VmRSS; reset the high-water mark (writing 5 to /proc/self/clear_refs);
fit; read VmHWM. measured = VmHWM - VmRSS before, bytes: the fit's peak resident growth.
The cases run under MALLOC_MMAP_THRESHOLD_=65536, a fixed threshold: every block of 64 KiB or
more (each table, each (rows, d, d) batch) is its own mapping, returned to the system when freed,
so RSS follows the live memory (glibc's default threshold rises after frees and keeps freed
blocks in the heap, which would hide later peaks). The calibration case checks the method: a
256 MiB tensor allocated and filled in the measured section reads as 256 MiB.
Writes bench/results/memory-cpu.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ML = "ml-100k"
USER_HEAVY = "synthetic:n_users=6000,n_items=600,n_ratings=100000"
CASES = (
    [{"family": "calibrate"}]
    + [{"dataset": ML, "family": "bayes", "factors": f, "implicit": i, "epochs": 3, "burn_in": 1}
       for f in (50, 150, 300) for i in ("none", "both")]
    + [{"dataset": ML, "family": "bayes", "factors": f, "implicit": "none", "epochs": 60, "burn_in": 0}
       for f in (10, 50)]  # many kept samples: the export's share
    + [{"dataset": USER_HEAVY, "family": "bayes", "factors": 150, "implicit": "both", "epochs": 3, "burn_in": 1}]
    + [{"dataset": ML, "family": "mf", "factors": f, "implicit": i, "epochs": 2}
       for f in (50, 150, 300) for i in ("none", "both")]
    + [{"dataset": ML, "family": "mf", "factors": 300, "implicit": "none", "epochs": 2, "optimizer": "sparse_sgd",
        "weight_decay": 0.0}]
)


def _status(key: str) -> int:
    """A /proc/self/status line's value, bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _measure(run) -> int:
    """Peak resident growth of run(), bytes."""
    gc.collect()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark back to the current RSS
    run()
    return _status("VmHWM") - before


def one_case(case: dict) -> dict:
    """Measure one case in this process; returns the case with its estimate and measurement."""
    import torch

    if case["family"] == "calibrate":
        torch.ones(16).add_(1)  # the kernel's code paged in before the measurement
        return {**case, "estimated": 2**28, "measured": _measure(lambda: torch.ones(2**26).add_(1))}
    from pipeline import ingest
    from pipeline.split import split
    from pipeline.training import TrainConfig, fit

    data = split(ingest.load(case["dataset"]), "random", test=0.1, valid=0.1, seed=0)
    train, valid = data.part("train"), data.part("valid")
    config = TrainConfig(**{k: v for k, v in case.items() if k != "dataset"})
    fit(train, config.replace(factors=2, epochs=2, burn_in=0), valid=valid, device="cpu", **data.dims)
    start = time.perf_counter()
    measured = _measure(lambda: fit(train, config, valid=valid, device="cpu", **data.dims))
    return {**case, "users": data.n_users, "items": data.n_items, "rows": len(train),
            "estimated": config.memory_bytes(data.n_users, data.n_items, len(train), len(valid)),
            "measured": measured,
            "seconds": round(time.perf_counter() - start, 1)}


def _run(case: dict) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(r: dict) -> str:
    what = ("calibration: 256 MiB tensor" if r["family"] == "calibrate" else
            f"{r['dataset'][:9]:<9} {r['family']:<5} f={r['factors']:<3} {r['implicit']:<4} "
            f"ep={r['epochs']:<2} {r.get('optimizer', '')}")
    ratio = r["estimated"] / r["measured"]
    return f"{what:<44} est {r['estimated'] / 2**20:9.1f} MiB  meas {r['measured'] / 2**20:9.1f} MiB  x{ratio:.2f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--case", help="one case, JSON (the child process)")
    p.add_argument("--only", choices=("bayes", "mf"))
    args = p.parse_args()
    if args.case:
        print(json.dumps(one_case(json.loads(args.case))))
        return
    results = []
    for case in CASES:
        if args.only in (None, case["family"]) or case["family"] == "calibrate":
            results.append(_run(case))
            print(_line(results[-1]), flush=True)
    record = {"date": time.strftime("%Y-%m-%d"), "device": "cpu", "cpus": os.cpu_count(),
              "command": "python bench/memory.py " + " ".join(sys.argv[1:]),
              "method": "fresh process per case; VmHWM reset by /proc/self/clear_refs after a warm-up fit; "
                        "measured = VmHWM - VmRSS before the fit; MALLOC_MMAP_THRESHOLD_=65536",
              "units": "bytes", "cases": results}
    out = Path(__file__).parent / "results" / "memory-cpu.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
