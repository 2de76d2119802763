"""Trainer throughput against the peers on ml-100k: same split, same factors, same epochs, one run.

    python bench/throughput_peers.py [--factors 30 100] [--epochs 20]

Rows: the faithful PyTorch port of the d2l loop (DataLoader, autograd, Adam, batch 512); Surprise's
Cython SVD `fit` (per-example SGD, its defaults otherwise); our trainer with the d2l config and with
sparse_sgd (the same per-example SGD family as Surprise) at a few batch sizes. Training examples
per second and test RMSE of the final model. Writes bench/results/throughput_peers.json. Needs the
`bench` extra (scikit-surprise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from seed_port import train_seed_port  # noqa: E402

from pipeline import ingest  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.split import split  # noqa: E402
from pipeline.training import TrainConfig, fit  # noqa: E402


def surprise_fit(data, factors: int, epochs: int) -> dict:
    from surprise import SVD, Dataset, Reader, accuracy

    frame = data.ratings.frame
    train = frame.iloc[data.train_rows][["user_id", "item_id", "rating"]]
    trainset = Dataset.load_from_df(train, Reader(rating_scale=data.ratings.rating_scale)).build_full_trainset()
    algo = SVD(n_factors=factors, n_epochs=epochs, random_state=0)
    start = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - start
    test = list(frame.iloc[data.test_rows][["user_id", "item_id", "rating"]].itertuples(index=False, name=None))
    return {"examples_per_second": len(train) * epochs / seconds, "seconds": seconds,
            "test_rmse": accuracy.rmse(algo.test(test), verbose=False)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--factors", type=int, nargs="+", default=[30, 100])
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args()
    ratings = ingest.load("ml-100k")
    data = split(ratings, seed=0)
    train, test = data.part("train"), data.part("test")
    dims = data.dims
    rows = []
    for k in args.factors:
        rows.append({"factors": k, "trainer": "d2l port (DataLoader, autograd)", "batch_size": 512,
                     **train_seed_port(train, test, data.n_users, data.n_items, factors=k, epochs=args.epochs)})
        rows.append({"factors": k, "trainer": "Surprise SVD (Cython, per example)", "batch_size": 1,
                     **surprise_fit(data, k, args.epochs)})
        sgd = TrainConfig(factors=k, optimizer="sparse_sgd", lr=0.005, weight_decay=0.0, l2=0.02, init_std=0.1,
                          epochs=args.epochs)  # Surprise's defaults: lr 0.005, reg 0.02, init std 0.1
        for name, config in [("pipeline, d2l config", TrainConfig(factors=k, epochs=args.epochs)),
                             *[("pipeline sparse_sgd", sgd.replace(batch_size=b)) for b in (256, 1024, 4096)]]:
            fit(train, config.replace(epochs=1), **dims)  # warm-up
            result = fit(train, config, **dims)
            rows.append({"factors": k, "trainer": name, "batch_size": config.batch_size,
                         "examples_per_second": result.examples_per_second, "seconds": result.train_seconds,
                         "test_rmse": evaluate(result.model, test).rmse})
    print(f"ml-100k, {len(train):,} training rows, {args.epochs} epochs, 1 process, this CPU")
    print(f"{'factors':>7}  {'trainer':<36}{'batch':>6}{'M ex/s':>8}{'× port':>8}{'× Surprise':>11}{'test RMSE':>10}")
    for k in args.factors:
        group = [r for r in rows if r["factors"] == k]
        port, surprise = group[0]["examples_per_second"], group[1]["examples_per_second"]
        for r in group:
            r["ratio_to_port"], r["ratio_to_surprise"] = r["examples_per_second"] / port, r["examples_per_second"] / surprise
            print(f"{k:>7}  {r['trainer']:<36}{r['batch_size']:>6}{r['examples_per_second'] / 1e6:>8.2f}"
                  f"{r['ratio_to_port']:>8.1f}{r['ratio_to_surprise']:>11.2f}{r['test_rmse']:>10.4f}")
    path = Path(__file__).parent / "results" / "throughput_peers.json"
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "epochs": args.epochs, "rows": rows,
                                "command": "python bench/throughput_peers.py " + " ".join(sys.argv[1:])}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
