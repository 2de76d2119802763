"""Bayesian peers on the pipeline's own ml-100k rows: myFM (Gibbs-sampled Bayesian FM) with user and
item one-hot features, plain and with implicit-feedback blocks (each user's rated items and each
item's raters, rows scaled 1/sqrt(n), built from the fitted rows only), beside our `bayes` family.

    python bench/peers_bayes.py [--seeds 0 1 2] [--rank 10] [--samples 300] [--chains 5]

Everything is fitted on train+valid and scored once on test (random 80/10/10, split seeds 0-2).
Both samplers keep the same samples: myFM's default keeps the last n_iter - 5, ours burns in 5.
A chain's test RMSE moves by ~0.001 with its seed (myFM's too), so each model runs `--chains`
chains per split (chain c seeded split seed + 1000 c; chain 0 is the split seed, as before) and the
table gives their mean. Needs the `bench` extra (myfm). Writes bench/results/peers_bayes.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from pipeline import ingest
from pipeline.evaluate import evaluate
from pipeline.split import split
from pipeline.training import TrainConfig, refit


def _relations(fit_users, fit_items, n_users: int, n_items: int, implicit: bool):
    """Per-user and per-item feature rows (myFM relation blocks: each computed once per entity, not
    per rating): one-hot, plus (implicit) the normalized rated-items / raters rows; and the groups."""
    user_rows, item_rows = [sp.identity(n_users, format="csr")], [sp.identity(n_items, format="csr")]
    groups = [n_users, n_items]
    if implicit:
        ones = np.ones(len(fit_users))
        rated = sp.csr_matrix((ones, (fit_users, fit_items)), shape=(n_users, n_items))
        raters = sp.csr_matrix((ones, (fit_items, fit_users)), shape=(n_items, n_users))
        user_rows.append(sp.diags(1 / np.sqrt(np.maximum(rated.sum(1).A1, 1))) @ rated)
        item_rows.append(sp.diags(1 / np.sqrt(np.maximum(raters.sum(1).A1, 1))) @ raters)
        groups = [n_users, n_items, n_items, n_users]
    return sp.hstack(user_rows).tocsr(), sp.hstack(item_rows).tocsr(), groups


def myfm_scores(data, implicit: bool, rank: int, samples: int, seed: int) -> tuple[float, float, float]:
    import myfm

    fit_rows, test = data.part("train+valid"), data.part("test")
    n_users, n_items = data.n_users + 1, data.n_items + 1  # + the fallback id of cold test rows
    fu, fi = fit_rows.users.numpy(), fit_rows.items.numpy()
    users, items, groups = _relations(fu, fi, n_users, n_items, implicit)

    def blocks(part):
        return [myfm.RelationBlock(part.users.numpy(), users), myfm.RelationBlock(part.items.numpy(), items)]

    start = time.perf_counter()
    model = myfm.MyFMRegressor(rank=rank, random_seed=seed).fit(
        sp.csr_matrix((len(fu), 0)), fit_rows.ratings.numpy(), X_rel=blocks(fit_rows), n_iter=samples,
        group_shapes=groups)
    seconds = time.perf_counter() - start
    predicted = model.predict(sp.csr_matrix((len(test), 0)), blocks(test))
    err = np.clip(predicted, *data.ratings.rating_scale) - test.ratings.numpy()
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err))), seconds


def ours(data, rank: int, sweeps: int, seed: int) -> tuple[float, float, float]:
    config = TrainConfig(family="bayes", implicit="both", factors=rank, epochs=sweeps, burn_in=5, init_std=0.1)
    start = time.perf_counter()
    model = refit(data.part("train+valid"), config, sweeps, seed=seed, threads=None, **data.dims).model
    m = evaluate(model, data.part("test"))
    return m.rmse, m.mae, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--chains", type=int, default=5)
    args = p.parse_args()
    ratings = ingest.load("ml-100k")
    runs: dict[str, dict[int, list]] = {}
    for seed in args.seeds:
        data = split(ratings, seed=seed)
        for chain in range(args.chains):
            s = seed + 1000 * chain
            for name, run in ((f"myFM rank {args.rank}, {args.samples} samples, plain",
                               lambda: myfm_scores(data, False, args.rank, args.samples, s)),
                              (f"myFM rank {args.rank}, {args.samples} samples, implicit blocks",
                               lambda: myfm_scores(data, True, args.rank, args.samples, s)),
                              (f"pipeline bayes, rank {args.rank}, both blocks, {args.samples} sweeps",
                               lambda: ours(data, args.rank, args.samples, s))):
                result = run()
                runs.setdefault(name, {}).setdefault(seed, []).append(result)
                print(f"split {seed} chain {chain} {name}: RMSE {result[0]:.4f}, {result[2]:.1f} s", flush=True)
    table = {name: _summary(per_seed) for name, per_seed in runs.items()}
    for name, t in table.items():
        print(f"{name:<55} RMSE {t['rmse_mean']:.4f}  MAE {t['mae_mean']:.4f}  {t['seconds_median']:.1f} s/fit  per seed "
              f"{', '.join(f'{x:.4f}' for x in t['rmse_per_seed'])} (chain 0: "
              f"{', '.join(f'{x:.4f}' for x in t['rmse_chain0_per_seed'])})")
    out = Path(__file__).parent / "results" / "peers_bayes.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "chains": args.chains,
                               "table": table, "command": "python bench/peers_bayes.py " + " ".join(sys.argv[1:])},
                              indent=2))
    print(f"wrote {out}")


def _summary(per_seed: dict[int, list]) -> dict:
    """Means over each split's chains, then over the splits; every chain's RMSE and seconds kept (the
    median seconds too: a fit that shares the 2 cores with other work takes several times longer)."""
    seeds = sorted(per_seed)
    mean = {k: [statistics.mean(r[k] for r in per_seed[s]) for s in seeds] for k in range(3)}
    return {"rmse_mean": statistics.mean(mean[0]), "mae_mean": statistics.mean(mean[1]),
            "seconds_mean": statistics.mean(mean[2]),
            "seconds_median": statistics.median(r[2] for s in seeds for r in per_seed[s]), "rmse_per_seed": mean[0],
            "rmse_chain0_per_seed": [per_seed[s][0][0] for s in seeds],
            "rmse_sd_over_chains": [statistics.stdev(r[0] for r in per_seed[s]) if len(per_seed[s]) > 1 else 0.0
                                    for s in seeds],
            "rmse_per_chain": [[r[0] for r in per_seed[s]] for s in seeds],
            "seconds_per_chain": [[r[2] for r in per_seed[s]] for s in seeds]}


if __name__ == "__main__":
    main()
