"""Stacked trials (pipeline.stack) against the same trials one at a time, on ml-100k's train rows.

    python bench/stack.py [--device cpu|cuda] [--ratings PATH] [--epochs 10] [--out DIR]

For each batch size and stack size K: K sparse_sgd models (64 factors, rates spread as a search
would spread them) trained by one `fit_stack`, against the same K trained by `fit` one after the
other (on a CPU: the compiled numba loop; on cuda: a stack of one, its epoch a CUDA graph). Both
include everything a trial pays for training: the per-epoch permutations, the valid RMSE, the
graph capture. Prints a table; writes DIR/stack-<device>.json (default DIR: bench/results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pipeline import ingest
from pipeline.device import device_name, resolve_device
from pipeline.split import split
from pipeline.stack import fit_stack
from pipeline.trainer import TrainConfig, fit


def configs(k: int, batch: int, epochs: int) -> list[TrainConfig]:
    return [TrainConfig(optimizer="sparse_sgd", weight_decay=0.0, factors=64, lr=0.005 * 1.2**j, l2=0.05,
                        init_std=0.1, batch_size=batch, epochs=epochs) for j in range(k)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ratings", default=None, help="ml-100k's ratings file (default: the recbole wheel's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    device = resolve_device(args.device)
    ratings = ingest.load(args.ratings, rating_scale=(1.0, 5.0)) if args.ratings else ingest.load("ml-100k")
    data = split(ratings, seed=0)
    train, valid = data.part("train").to(device), data.part("valid").to(device)
    sizes = (1, 4, 16, 64) if device.type == "cuda" else (1, 2, 4, 8)
    fit_stack(train, configs(2, 256, 2), [0, 1], valid=valid, device=device, **data.dims)  # warm-up
    fit(train, configs(1, 256, 2)[0], valid=valid, device=device, **data.dims)
    rows = []
    print(f"{'batch':>6}{'K':>5}{'stacked M ex/s':>16}{'one by one M ex/s':>19}{'speedup':>9}")
    for batch in (64, 256, 1024):
        for k in sizes:
            models = configs(k, batch, args.epochs)
            examples = k * len(train) * args.epochs
            start = time.perf_counter()
            fit_stack(train, models, list(range(k)), valid=valid, device=device, **data.dims)
            stacked = time.perf_counter() - start
            start = time.perf_counter()
            for seed, config in enumerate(models[: min(k, 4)]):  # one by one: the first 4, scaled
                fit(train, config, valid=valid, seed=seed, device=device, **data.dims)
            alone = (time.perf_counter() - start) * k / min(k, 4)
            row = {"batch_size": batch, "stack": k, "stacked_examples_per_second": examples / stacked,
                   "one_by_one_examples_per_second": examples / alone, "speedup": alone / stacked}
            rows.append(row)
            print(f"{batch:>6}{k:>5}{row['stacked_examples_per_second'] / 1e6:>16.2f}"
                  f"{row['one_by_one_examples_per_second'] / 1e6:>19.2f}{row['speedup']:>9.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"stack-{device.type}.json"
    path.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "epochs": args.epochs,
        "dataset": f"ml-100k train ({len(train):,} rows), 64 factors",
        "command": "python bench/stack.py " + " ".join(sys.argv[1:]), "runs": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
