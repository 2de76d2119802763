"""Stacked trials (pipeline.training) against the same trials one at a time, on ml-100k's train rows.

    python bench/stack.py [--device cpu|cuda] [--ratings PATH] [--epochs 10] [--out DIR]

For each optimizer and batch size (sparse_sgd at 64, 256, 1024; Adam at 512, 4096) and stack size
K: K models (64 factors, rates spread as a search would spread them) trained by one `fit_stack`,
against the same K trained by `fit` one after the other (stacks of one). On a CPU sparse_sgd runs
the compiled engine either way (a stack of it is its models one after the other), Adam the tensor
engine; on cuda sparse_sgd epochs are CUDA graphs. Both
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
from pipeline.training import TrainConfig, fit, fit_stack


CASES = [("sparse_sgd", 64), ("sparse_sgd", 256), ("sparse_sgd", 1024), ("adam", 512), ("adam", 4096)]


def configs(k: int, optimizer: str, batch: int, epochs: int) -> list[TrainConfig]:
    rates = dict(lr=0.005, weight_decay=0.0, l2=0.05) if optimizer == "sparse_sgd" else dict(lr=0.002, weight_decay=1e-5)
    return [TrainConfig(optimizer=optimizer, factors=64, init_std=0.1, batch_size=batch, epochs=epochs,
                        **{**rates, "lr": rates["lr"] * 1.2**j}) for j in range(k)]


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
    sizes = (1, 8, 32, 128) if device.type == "cuda" else (1, 2, 4, 8)
    for optimizer in ("sparse_sgd", "adam"):  # warm-up: numba's cache, kernels, the allocator
        fit_stack(train, configs(2, optimizer, 256, 2), [0, 1], valid=valid, device=device, **data.dims)
        fit(train, configs(1, optimizer, 256, 2)[0], valid=valid, device=device, **data.dims)
    rows = []
    print(f"{'optimizer':>11}{'batch':>6}{'K':>5}{'stacked M ex/s':>16}{'one by one M ex/s':>19}{'speedup':>9}")
    for optimizer, batch in CASES:
        for k in sizes:
            models = configs(k, optimizer, batch, args.epochs)
            examples = k * len(train) * args.epochs
            start = time.perf_counter()
            fit_stack(train, models, list(range(k)), valid=valid, device=device, **data.dims)
            stacked = time.perf_counter() - start
            start = time.perf_counter()
            for seed, config in enumerate(models[: min(k, 4)]):  # one by one: the first 4, scaled
                fit(train, config, valid=valid, seed=seed, device=device, **data.dims)
            alone = (time.perf_counter() - start) * k / min(k, 4)
            row = {"optimizer": optimizer, "batch_size": batch, "stack": k, "stacked_examples_per_second": examples / stacked,
                   "one_by_one_examples_per_second": examples / alone, "speedup": alone / stacked}
            rows.append(row)
            print(f"{optimizer:>11}{batch:>6}{k:>5}{row['stacked_examples_per_second'] / 1e6:>16.2f}"
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
