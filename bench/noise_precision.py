"""The Gibbs chain's noise precision, drawn or held: the running posterior mean's test RMSE by sweep.

    python bench/noise_precision.py [--split-seed 1] [--rank 22] [--sweeps 200] [--chains 4]

Fitted on train+valid, scored on test (random 80/10/10), both implicit blocks, burn-in 5. Part 1:
one chain per noise precision (drawn each sweep from its Gamma posterior, as libFM and myFM do, or
held at 1.0, 1.3, 1.6), the running mean's test RMSE at some sweeps and the drawn α's value. Part 2:
`--chains` chains with side features at α 1.3 (`refit`, chain c seeded split seed + 1000 c), their
posterior means averaged (`gibbs.average`) the first one, two, ... at a time. Prints both and writes bench/results/noise_precision.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import ingest
from pipeline.evaluate import evaluate
from pipeline.split import split
from pipeline.training import TrainConfig, refit
from pipeline.training.fitting import _feature_folds
from pipeline.training.gibbs import GibbsEngine, average

SHOWN = (10, 30, 60, 90, 150, 200, 300)


def trajectory(data, config: TrainConfig, seed: int) -> dict:
    """One chain on train+valid, test as its 'valid': the running mean's test RMSE per sweep."""
    engine = GibbsEngine(data.part("train+valid"), config, **data.dims, valid=data.part("test"),
                         generator=torch.Generator().manual_seed(seed),
                         folds=_feature_folds(config.features, data.features, "cpu"))
    rmse, alpha = [], []
    for sweep in range(1, config.epochs + 1):
        engine.epoch(sweep)
        rmse.append(engine.valid_rmse()[0])
        alpha.append(float(engine.sampler.alpha))
    return {"test_rmse": {n: rmse[n - 1] for n in SHOWN if n <= config.epochs},
            "best": [min(rmse), int(np.argmin(rmse)) + 1], "alpha": {n: alpha[n - 1] for n in SHOWN if n <= config.epochs}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--split-seed", type=int, default=1)
    p.add_argument("--rank", type=int, default=22)
    p.add_argument("--sweeps", type=int, default=200)
    p.add_argument("--chains", type=int, default=4)
    args = p.parse_args()
    data = split(ingest.load("ml-100k"), seed=args.split_seed)
    base = dict(family="bayes", implicit="both", factors=args.rank, epochs=args.sweeps, burn_in=5, init_std=0.1)
    record = {"date": time.strftime("%Y-%m-%d"), "split_seed": args.split_seed, "rank": args.rank,
              "sweeps": args.sweeps, "command": "python bench/noise_precision.py", "held_or_drawn": {}}
    for alpha in (None, 1.0, 1.3, 1.6):
        name = "drawn" if alpha is None else f"held {alpha}"
        row = trajectory(data, TrainConfig(**base, noise_precision=alpha), args.split_seed)
        record["held_or_drawn"][name] = row
        print(f"{name:<9} test RMSE by sweep " + ", ".join(f"{n}: {v:.4f}" for n, v in row["test_rmse"].items())
              + f"; best {row['best'][0]:.4f} at {row['best'][1]}; α " + ", ".join(
                  f"{n}: {v:.2f}" for n, v in row["alpha"].items()), flush=True)
    config = TrainConfig(**base, noise_precision=1.3, features="both")
    test = data.part("test")
    models = [refit(data.part("train+valid"), config, args.sweeps, seed=args.split_seed + 1000 * c,
                    features=data.features, threads=None, **data.dims).model for c in range(args.chains)]
    singles = [evaluate(m, test).rmse for m in models]
    averaged = {k: evaluate(average(models[:k]), test).rmse for k in range(1, args.chains + 1)}
    record["chains_with_side_features_held_1.3"] = {"each": singles, "averaged_first_k": averaged}
    print(f"side features, α 1.3: each chain {', '.join(f'{x:.4f}' for x in singles)}; averaged "
          + ", ".join(f"{k}: {v:.4f}" for k, v in averaged.items()))
    path = Path(__file__).parent / "results" / "noise_precision.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
