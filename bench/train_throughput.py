"""Trainer throughput on ml-100k: pipeline's trainer vs the faithful port of the seed's loop.

    python bench/train_throughput.py [--device cpu|cuda] [--epochs 20]

Same split (default: random 80/10/10, seed 0), same seed configuration (30 factors, Adam lr 0.002,
wd 1e-5, batch 512, 20 epochs), one process. Then our trainer at larger batch sizes (Adam's lr
scaled with √batch) and the lazy sparse_sgd, each with its test RMSE, to find the fastest setting
with no loss of accuracy. Prints a table; writes bench/results/train_throughput-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from seed_port import train_seed_port  # noqa: E402

from pipeline import ingest  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.split import split  # noqa: E402
from pipeline.training import TrainConfig, fit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    ratings = ingest.load("ml-100k")
    data = split(ratings, seed=0)
    train, test = data.part("train"), data.part("test")
    dims = data.dims
    rows = []

    port = train_seed_port(train, test, data.n_users, data.n_items, epochs=args.epochs, device=device)
    rows.append({"trainer": "seed port (DataLoader, autograd)", "batch_size": 512, **port})

    seed = TrainConfig(epochs=args.epochs)
    variants = [("pipeline, seed config", seed)]
    for batch in (2048, 8192, 32768):
        variants.append((f"pipeline adam, lr×√{batch // 512}", seed.replace(
            batch_size=batch, lr=seed.lr * (batch / 512) ** 0.5)))
    for batch in (512, 4096):
        variants.append(("pipeline sparse_sgd", TrainConfig(
            factors=30, optimizer="sparse_sgd", lr=0.01, weight_decay=0.0, l2=0.1, l2_bias=0.01,
            batch_size=batch, epochs=args.epochs, init_std=0.1)))
    train_d, valid_d, test_d = train.to(device), data.part("valid").to(device), test.to(device)
    for name, config in variants:
        fit(train_d, config.replace(epochs=1), device=device, **dims)  # warm-up (CUDA init, allocator)
        # Full epochs, no validation or early stop, like the port: then score the final model.
        result = fit(train_d, config, device=device, **dims)
        rows.append({"trainer": name, "batch_size": config.batch_size,
                     "examples_per_second": result.examples_per_second, "seconds": result.train_seconds,
                     "test_rmse": evaluate(result.model, test_d).rmse,
                     "best_valid_epoch_test_rmse": evaluate(
                         fit(train_d, config, valid=valid_d, device=device, **dims).model, test_d).rmse})
    base = rows[0]["examples_per_second"]
    print(f"ml-100k, {len(train):,} training rows, {args.epochs} epochs, device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'})")
    print(f"{'trainer':<36}{'batch':>7}{'M ex/s':>9}{'× port':>8}{'test RMSE':>11}{'(best ep)':>11}")
    for row in rows:
        row["ratio_to_port"] = row["examples_per_second"] / base
        print(f"{row['trainer']:<36}{row['batch_size']:>7}{row['examples_per_second'] / 1e6:>9.2f}"
              f"{row['ratio_to_port']:>8.1f}{row['test_rmse']:>11.4f}{row.get('best_valid_epoch_test_rmse', float('nan')):>11.4f}")
    out = Path(args.out or Path(__file__).parent / "results" / f"train_throughput-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "device": str(device), "torch": torch.__version__,
        "cpu_count": torch.get_num_threads(), "epochs": args.epochs, "rows": rows,
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]),
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
