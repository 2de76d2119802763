"""`--workers 2` against `--workers 1` on the same fixed study, whole command, wall time.

    python bench/workers_throughput.py [--trials 40]

Every trial trains the same configuration (64 factors, Adam, 20 epochs, no pruning) on ml-100k, so
both runs do the same work; each run starts from a fresh journal and MLflow database and includes
start-up, the refit and the model registration. Writes bench/results/workers_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPACE = {
    "dataset": "ml-100k",
    "params": {"factors": {"type": "fixed", "value": 64}, "optimizer": {"type": "fixed", "value": "adam"},
               "lr": {"type": "fixed", "value": 0.002}, "weight_decay": {"type": "fixed", "value": 1e-5},
               "batch_size": {"type": "fixed", "value": 256}},
    "epochs": 20, "pruner": {"type": "none"},
}


def run(workers: int, trials: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fixed.yaml"
        config.write_text(yaml.safe_dump({**SPACE, "trials": trials}))
        command = [sys.executable, "-m", "pipeline.search", "--config", str(config), "--quiet", "--workers",
                   str(workers), "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--storage", f"{tmp}/optuna.journal"]
        start = time.perf_counter()
        subprocess.run(command, cwd=tmp, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=40)
    args = p.parse_args()
    seconds = {n: run(n, args.trials) for n in (1, 2)}
    speedup = seconds[1] / seconds[2]
    for n, s in seconds.items():
        print(f"--workers {n}: {s:6.1f} s for {args.trials} trials")
    print(f"speed-up: {speedup:.2f}x on {os.cpu_count()} CPU cores")
    out = Path(__file__).parent / "results" / "workers_throughput.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "trials": args.trials, "cpu_count": os.cpu_count(),
                               "seconds": seconds, "speedup": speedup,
                               "command": "python bench/workers_throughput.py " + " ".join(sys.argv[1:])}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
