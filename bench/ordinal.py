"""Ordinal output against regression at the default search's champions: test RMSE, time, size.

    python bench/ordinal.py [--split-seeds 0 1 2] [--precisions 1.0 1.3 1.7]

Per split seed, the champion's settings of `bench/search_default.py`'s record
(bench/results/search_default-mf-split<S>.json: rank, burn-in, side features, noise precision,
sweeps). Regression: those settings. Ordinal: the same with `output: ordinal`, its noise precision
chosen on valid among `--precisions` (fitted on train, the running mean's valid RMSE at the last
sweep). Both refit on train+valid as 2 chains averaged (as the search refits a held-noise
champion), scored on test. Also each one's seconds per sweep and its scorer's bytes (the same
formula for both: the kept samples' columns, reduced to at most min(users, items)), and what that
formula gives on MovieLens 25M's shape. Writes bench/results/ordinal.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline import ingest
from pipeline.evaluate import evaluate
from pipeline.split import split
from pipeline.training import TrainConfig, fit, refit

RESULTS = Path(__file__).parent / "results"
ML25M = {"users": 162_541, "items": 59_047}  # MovieLens 25M's rated users and items


def scorer_bytes(model) -> int:
    """The exported tables' bytes (users and items, float32; side tables and buffers are small)."""
    return 4 * (model.users.numel() + model.items.numel())


def ml25m_bytes(factors: int, samples: int) -> int:
    """The same formula on ML-25M's shape: S·factors columns, at most min(users, items), + 2."""
    columns = min(samples * factors, min(ML25M.values()))
    return 4 * (ML25M["users"] + ML25M["items"] + 2) * (columns + 2)


def one_seed(seed: int, precisions: list[float]) -> dict:
    record = json.loads((RESULTS / f"search_default-mf-split{seed}.json").read_text())
    best = record["best_params"]
    base = TrainConfig(family="bayes", implicit=best["implicit"], features=best["features"], factors=best["factors"],
                       burn_in=best["burn_in"], epochs=best["epochs"], init_std=best["init_std"],
                       noise_precision=best["noise_precision"])
    data = split(ingest.load("ml-100k"), seed=seed)
    options = dict(features=data.features, **data.dims)
    valid = {}
    for alpha in precisions:
        config = base.replace(output="ordinal", noise_precision=alpha)
        valid[alpha] = fit(data.part("train"), config, valid=data.part("valid"), seed=seed, **options).history[-1][2]
    chosen = min(valid, key=valid.get)
    row = {"champion": {k: best[k] for k in ("factors", "burn_in", "features", "noise_precision")},
           "ordinal_valid_rmse_by_precision": valid, "ordinal_precision": chosen}
    test = data.part("test")
    for name, config in (("regression", base), ("ordinal", base.replace(output="ordinal", noise_precision=chosen))):
        start = time.perf_counter()
        result = refit(data.part("train+valid"), config, config.epochs, chains=2, seed=seed, **options)
        seconds = time.perf_counter() - start
        row[name] = {"test_rmse": evaluate(result.model, test).rmse, "seconds_per_sweep": seconds / (2 * config.epochs),
                     "scorer_bytes": scorer_bytes(result.model)}
    samples = 2 * (base.epochs - base.burn_in)
    row["ml25m_scorer_bytes"] = ml25m_bytes(base.factors, samples)
    print(f"split {seed}: rank {base.factors}, features {base.features}: regression α {base.noise_precision:.2f} "
          f"test {row['regression']['test_rmse']:.4f} ({row['regression']['seconds_per_sweep'] * 1e3:.0f} ms a sweep); "
          f"ordinal α {chosen} (valid {', '.join(f'{a}: {v:.4f}' for a, v in valid.items())}) test "
          f"{row['ordinal']['test_rmse']:.4f} ({row['ordinal']['seconds_per_sweep'] * 1e3:.0f} ms a sweep); scorer "
          f"{row['ordinal']['scorer_bytes'] / 2**20:.1f} MiB both, {row['ml25m_scorer_bytes'] / 2**30:.2f} GiB on "
          f"ML-25M's shape", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--precisions", type=float, nargs="+", default=[1.0, 1.3, 1.7])
    args = p.parse_args()
    rows = {seed: one_seed(seed, args.precisions) for seed in args.split_seeds}
    mean = {name: sum(r[name]["test_rmse"] for r in rows.values()) / len(rows) for name in ("regression", "ordinal")}
    print("mean test RMSE: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    record = {"date": time.strftime("%Y-%m-%d"), "command": "python bench/ordinal.py", "per_seed": rows,
              "mean_test_rmse": mean}
    (RESULTS / "ordinal.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {RESULTS / 'ordinal.json'}")


if __name__ == "__main__":
    main()
