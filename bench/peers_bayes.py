"""Bayesian peers on the pipeline's own ml-100k rows: myFM (Gibbs-sampled Bayesian FM) with user and
item one-hot features, plain and with implicit-feedback blocks (each user's rated items and each
item's raters, rows scaled 1/sqrt(n), built from the fitted rows only), beside our `bayes` family;
and both with side features (users' age bucket, gender, occupation, zip prefix; items' release year
and genres: the data stage's blocks, `Split.features`, so both models see the same encoding, one
prior group per feature group), myFM also in ordered probit and with the day of the rating.

    python bench/peers_bayes.py [--seeds 0 1 2] [--rank 10] [--samples 300] [--chains 5] [--only ROW ...]

`--only` runs some rows (ROWS below; `base`: the first three, `features`: the side-feature ones) and
merges them into the recorded table, keeping the rows it did not run.

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


def _relations(fit_users, fit_items, n_users: int, n_items: int, implicit: bool, side: dict | None = None):
    """Per-user and per-item feature rows (myFM relation blocks: each computed once per entity, not
    per rating): one-hot, plus (implicit) the normalized rated-items / raters rows, plus (side) each
    side's feature blocks as given (CSR over the table rows, the fallback row last); and the group
    sizes in column order, one group per one-hot, implicit block and feature group."""
    user_rows, item_rows = [sp.identity(n_users, format="csr")], [sp.identity(n_items, format="csr")]
    user_groups, item_groups = [n_users], [n_items]
    if implicit:
        ones = np.ones(len(fit_users))
        rated = sp.csr_matrix((ones, (fit_users, fit_items)), shape=(n_users, n_items))
        raters = sp.csr_matrix((ones, (fit_items, fit_users)), shape=(n_items, n_users))
        user_rows.append(sp.diags(1 / np.sqrt(np.maximum(rated.sum(1).A1, 1))) @ rated)
        item_rows.append(sp.diags(1 / np.sqrt(np.maximum(raters.sum(1).A1, 1))) @ raters)
        user_groups.append(n_items)
        item_groups.append(n_users)
    for rows, groups, blocks, n in ((user_rows, user_groups, (side or {}).get("user", []), n_users),
                                    (item_rows, item_groups, (side or {}).get("item", []), n_items)):
        for b in blocks:
            if b.shape[0] != n:
                raise ValueError(f"feature block {b.name!r}: {b.shape[0]} rows, expected {n} (the table + fallback)")
            rows.append(sp.csr_matrix((b.values.astype(np.float64), b.col, b.crow), shape=b.shape))
            groups.append(b.shape[1])
    return sp.hstack(user_rows).tocsr(), sp.hstack(item_rows).tocsr(), user_groups + item_groups


def _days(data, part: str, known: np.ndarray | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
    """The rating's day (UTC, timestamp // 86400) one-hot over the days of train+valid (`known`; the
    vocabulary myFM's ML-100K example builds from its fitted rows); a day outside it: an empty row."""
    rows = np.concatenate([getattr(data, f"{p}_rows") for p in part.split("+")])
    day = data.ratings.frame["timestamp"].to_numpy()[rows] // 86400
    known = np.unique(day) if known is None else known
    col = np.minimum(np.searchsorted(known, day), len(known) - 1)
    hit = known[col] == day
    x = sp.csr_matrix((np.ones(hit.sum()), (np.flatnonzero(hit), col[hit])), shape=(len(day), len(known)))
    return x, known


def myfm_scores(data, implicit: bool, rank: int, samples: int, seed: int, *, side: bool = False,
                day: bool = False, probit: bool = False) -> tuple[float, float, float]:
    """myFM fitted on train+valid, scored on test: (RMSE, MAE, fit seconds). side: the split's
    feature blocks in the relation blocks; day: the rating's day one-hot as a per-rating group;
    probit: ordered probit over the 5 ratings, predicting the expected rating Σ k p_k."""
    import myfm

    fit_rows, test = data.part("train+valid"), data.part("test")
    n_users, n_items = data.n_users + 1, data.n_items + 1  # + the fallback id of cold test rows
    fu, fi = fit_rows.users.numpy(), fit_rows.items.numpy()
    users, items, groups = _relations(fu, fi, n_users, n_items, implicit, data.features if side else None)
    if day:
        x_fit, known = _days(data, "train+valid")
        x_test, _ = _days(data, "test", known)
        groups = [x_fit.shape[1], *groups]  # myFM's columns: X's, then the relation blocks'
    else:
        x_fit, x_test = sp.csr_matrix((len(fu), 0)), sp.csr_matrix((len(test), 0))

    def blocks(part):
        return [myfm.RelationBlock(part.users.numpy(), users), myfm.RelationBlock(part.items.numpy(), items)]

    y = fit_rows.ratings.numpy()
    low, high = data.ratings.rating_scale
    start = time.perf_counter()
    if probit:  # classes 0..4 = ratings 1..5
        model = myfm.MyFMOrderedProbit(rank=rank, random_seed=seed).fit(
            x_fit, np.rint(y - low).astype(np.int64), X_rel=blocks(fit_rows), n_iter=samples, group_shapes=groups)
    else:
        model = myfm.MyFMRegressor(rank=rank, random_seed=seed).fit(
            x_fit, y, X_rel=blocks(fit_rows), n_iter=samples, group_shapes=groups)
    seconds = time.perf_counter() - start
    if probit:
        proba = model.predict_proba(x_test, blocks(test))
        predicted = proba @ (low + np.arange(proba.shape[1]))
    else:
        predicted = model.predict(x_test, blocks(test))
    err = np.clip(predicted, low, high) - test.ratings.numpy()
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err))), seconds


def ours(data, rank: int, sweeps: int, seed: int, side: bool = False) -> tuple[float, float, float]:
    config = TrainConfig(family="bayes", implicit="both", factors=rank, epochs=sweeps, burn_in=5, init_std=0.1,
                         features="both" if side else "none")
    start = time.perf_counter()
    model = refit(data.part("train+valid"), config, sweeps, seed=seed, threads=None, **data.dims,
                  **({"features": data.features} if side else {})).model
    m = evaluate(model, data.part("test"))
    return m.rmse, m.mae, time.perf_counter() - start


# Row key -> (name given rank and samples, scorer(data, rank, samples, seed)).
ROWS = {
    "plain": (lambda r, n: f"myFM rank {r}, {n} samples, plain",
              lambda d, r, n, s: myfm_scores(d, False, r, n, s)),
    "implicit": (lambda r, n: f"myFM rank {r}, {n} samples, implicit blocks",
                 lambda d, r, n, s: myfm_scores(d, True, r, n, s)),
    "bayes": (lambda r, n: f"pipeline bayes, rank {r}, both blocks, {n} sweeps",
              lambda d, r, n, s: ours(d, r, n, s)),
    "myfm-side": (lambda r, n: f"myFM rank {r}, {n} samples, implicit blocks + side features",
                  lambda d, r, n, s: myfm_scores(d, True, r, n, s, side=True)),
    "myfm-side-probit": (lambda r, n: f"myFM ordered probit rank {r}, {n} samples, implicit blocks + side features",
                         lambda d, r, n, s: myfm_scores(d, True, r, n, s, side=True, probit=True)),
    "myfm-side-day": (lambda r, n: f"myFM rank {r}, {n} samples, implicit blocks + side features + day",
                      lambda d, r, n, s: myfm_scores(d, True, r, n, s, side=True, day=True)),
    "myfm-side-day-probit": (
        lambda r, n: f"myFM ordered probit rank {r}, {n} samples, implicit blocks + side features + day",
        lambda d, r, n, s: myfm_scores(d, True, r, n, s, side=True, day=True, probit=True)),
    "bayes-side": (lambda r, n: f"pipeline bayes, rank {r}, both blocks + side features, {n} sweeps",
                   lambda d, r, n, s: ours(d, r, n, s, side=True)),
}
ALIASES = {"base": ["plain", "implicit", "bayes"],
           "features": ["myfm-side", "myfm-side-probit", "myfm-side-day", "myfm-side-day-probit", "bayes-side"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--chains", type=int, default=5)
    p.add_argument("--only", nargs="+", choices=[*ROWS, *ALIASES], default=["base", "features"],
                   help="rows to run (merged into the recorded table; the other rows are kept)")
    args = p.parse_args()
    keys = list(dict.fromkeys(k for o in args.only for k in ALIASES.get(o, [o])))
    ratings = ingest.load("ml-100k")
    runs: dict[str, dict[int, list]] = {}
    for seed in args.seeds:
        data = split(ratings, seed=seed)
        for chain in range(args.chains):
            s = seed + 1000 * chain
            for key in keys:
                name, run = ROWS[key][0](args.rank, args.samples), ROWS[key][1]
                result = run(data, args.rank, args.samples, s)
                runs.setdefault(name, {}).setdefault(seed, []).append(result)
                print(f"split {seed} chain {chain} {name}: RMSE {result[0]:.4f}, {result[2]:.1f} s", flush=True)
    command = "python bench/peers_bayes.py " + " ".join(sys.argv[1:])
    date = time.strftime("%Y-%m-%d")
    table = {name: {**_summary(per_seed), "chains": args.chains, "seeds": args.seeds, "date": date, "command": command}
             for name, per_seed in runs.items()}
    for name, t in table.items():
        print(f"{name:<55} RMSE {t['rmse_mean']:.4f}  MAE {t['mae_mean']:.4f}  {t['seconds_median']:.1f} s/fit  per seed "
              f"{', '.join(f'{x:.4f}' for x in t['rmse_per_seed'])} (chain 0: "
              f"{', '.join(f'{x:.4f}' for x in t['rmse_chain0_per_seed'])}; {args.chains} chains)")
    out = Path(__file__).parent / "results" / "peers_bayes.json"
    recorded = _recorded(out)
    recorded["table"].update(table)
    recorded["date"] = date
    recorded["commands"] = list(dict.fromkeys([*recorded["commands"], command]))
    out.write_text(json.dumps(recorded, indent=2))
    print(f"wrote {out} ({len(table)} rows run, {len(recorded['table'])} in the table)")


def _recorded(path: Path) -> dict:
    """The recorded table, each row with its own chains, seeds, date and command (a file written
    before rows were merged kept them once for the whole table: they move into its rows)."""
    if not path.exists():
        return {"date": "", "commands": [], "table": {}}
    old = json.loads(path.read_text())
    shared = {k: old.pop(k) for k in ("seeds", "chains", "command") if k in old}
    for row in old["table"].values():
        for key, value in shared.items():
            row.setdefault(key, value)
        row.setdefault("date", old["date"])
    commands = old.get("commands", [])
    if "command" in shared:
        commands.insert(0, shared["command"])
    return {"date": old["date"], "commands": commands, "table": old["table"]}


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
