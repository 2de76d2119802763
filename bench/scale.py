"""Scale: synthetic data of MovieLens 25M's shape (25,000,095 ratings, 162,541 users, 59,047 items).

    python bench/scale.py [--device cpu|cuda] [--skip-study]

Measures, in this process: generating (ingest) and splitting the data, with peak RSS; training
throughput for one epoch per configuration; then, as a user would, a short study
(`python -m pipeline.search --config scale`: 3 trials of 2 epochs, refit, model logged and
registered) in a subprocess, with its wall time and peak RSS. Writes bench/results/scale-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline import ingest
from pipeline.split import split
from pipeline.training import TrainConfig, fit

SHAPE = dict(n_users=162_541, n_items=59_047, n_ratings=25_000_095, rank=16, noise=0.5)


def peak_rss_gib(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20  # KiB on Linux


def run_watching_memory(command: list[str], cwd: str) -> tuple[int, float, str]:
    """Run `command`; sample its RSS every 0.1 s (getrusage's children figure would include this
    process's own pages, inherited at fork). Returns (exit code, peak GiB, output)."""
    import psutil

    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)
        watched, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        process.wait()
        log.seek(0)
        return process.returncode, peak / 2**30, log.read()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-study", action="store_true")
    args = p.parse_args()
    record = {"date": time.strftime("%Y-%m-%d"), "device": args.device, "shape": SHAPE,
              "command": "python bench/scale.py " + " ".join(sys.argv[1:])}

    start = time.perf_counter()
    ratings = ingest.synthetic(**SHAPE)
    record["ingest_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    data = split(ratings, seed=0)
    record["split_seconds"] = time.perf_counter() - start
    record["peak_rss_gib_after_ingest_split"] = peak_rss_gib()
    print(f"ingest {record['ingest_seconds']:.1f} s, split {record['split_seconds']:.1f} s, "
          f"peak RSS {record['peak_rss_gib_after_ingest_split']:.2f} GiB", flush=True)

    train = data.part("train").to(args.device)
    dims = data.dims
    record["epochs"] = []
    for name, config in [
        ("sparse_sgd, 32 factors, batch 1024", TrainConfig(factors=32, optimizer="sparse_sgd", lr=0.005,
                                                           weight_decay=0.0, l2=0.05, batch_size=1024, epochs=1)),
        # (The d2l config itself, dense Adam at batch 512, takes minutes an epoch here: every step
        # updates all 221 k rows of the tables. At this scale: large batches, or sparse_sgd.)
        ("adam, 32 factors, batch 16384", TrainConfig(factors=32, lr=0.005, batch_size=16384, epochs=1)),
        ("sparse_sgd, 32 factors, batch 16384", TrainConfig(factors=32, optimizer="sparse_sgd", lr=0.005,
                                                            weight_decay=0.0, l2=0.05, batch_size=16384, epochs=1)),
        # The memory-bound end on a GPU: few, wide steps (a throughput probe, not a tuned setting).
        ("sparse_sgd, 32 factors, batch 262144", TrainConfig(factors=32, optimizer="sparse_sgd", lr=0.0005,
                                                             weight_decay=0.0, l2=0.05, batch_size=262144, epochs=1)),
    ]:
        result = fit(train, config, device=args.device, **dims)
        row = {"config": name, "examples_per_second": result.examples_per_second, "epoch_seconds": result.train_seconds}
        record["epochs"].append(row)
        print(f"{name:<42} {result.examples_per_second / 1e6:6.2f} M examples/s, {result.train_seconds:6.1f} s/epoch", flush=True)
    record["peak_rss_gib_in_process"] = peak_rss_gib()

    if not args.skip_study:
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "pipeline.search", "--config", "scale", "--quiet", "--device", args.device,
                       "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--storage", f"{tmp}/optuna.journal"]
            start = time.perf_counter()
            returncode, peak, stdout = run_watching_memory(command, tmp)
            record["study_seconds"] = time.perf_counter() - start
            record["study_returncode"] = returncode
            record["study_peak_rss_gib"] = peak
            print(stdout[-2500:])
            print(f"short study: rc {returncode}, {record['study_seconds']:.0f} s, "
                  f"peak RSS {record['study_peak_rss_gib']:.2f} GiB")
    path = Path(__file__).parent / "results" / f"scale-{torch.device(args.device).type}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
