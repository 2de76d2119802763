"""Accuracy on ml-100k over three split seeds, everyone on the same test rows.

    python bench/accuracy.py [--seeds 0 1 2] [--n-iter 200] [--skip-search] [--reuse-surprise] [--reuse-search]

Per split seed (random 80/10/10): the d2l configuration with our trainer (early stop on valid, refit
on train+valid), the global-mean and biases-only baselines, Surprise SVD with its defaults, SVD tuned
by Surprise's own RandomizedSearchCV (`n-iter` configurations, 3-fold CV on train+valid, as many as
our default study's trials), and our default search (`python -m pipeline.search`, refit champion).
Everything is fitted on the same train+valid rows and scored on the same test rows. Prints
mean ± sd and writes bench/results/accuracy.json. Needs the `bench` extra (scikit-surprise).
--reuse-search: the default search's rows from bench/results/search_default-mf-split<seed>.json
(`bench/search_default.py`, the same command) when that record ran the shipped space (its digest).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from pipeline import ingest
from pipeline.evaluate import baselines, evaluate
from pipeline.split import split
from pipeline.training import TrainConfig, fit, refit

sys.path.insert(0, str(Path(__file__).parent))


def surprise_rows(data):
    from surprise import Dataset, Reader

    frame = data.ratings.frame
    fit_rows = frame.iloc[np.concatenate([data.train_rows, data.valid_rows])][["user_id", "item_id", "rating"]]
    test_rows = frame.iloc[data.test_rows][["user_id", "item_id", "rating"]]
    dataset = Dataset.load_from_df(fit_rows, Reader(rating_scale=data.ratings.rating_scale))
    return dataset, list(test_rows.itertuples(index=False, name=None))


def surprise_scores(algo, testset) -> tuple[float, float]:
    from surprise import accuracy

    predictions = algo.test(testset)
    return accuracy.rmse(predictions, verbose=False), accuracy.mae(predictions, verbose=False)


def one_seed(seed: int, n_iter: int, run_search: bool, reuse: dict | None = None, reuse_search: bool = False) -> dict:
    ratings = ingest.load("ml-100k")
    data = split(ratings, seed=seed)
    dims = data.dims
    rows = {}
    first = fit(data.part("train"), TrainConfig(), valid=data.part("valid"), seed=seed, **dims)
    final = refit(data.part("train+valid"), TrainConfig(), first.best_epoch, seed=seed, **dims)
    m = evaluate(final.model, data.part("test"))
    rows["d2l config, our trainer"] = (m.rmse, m.mae)
    for name, b in baselines(data.part("train+valid"), data.part("test"), **dims).items():
        rows[name.replace("_", " ")] = (b.rmse, b.mae)

    if reuse is not None:  # Surprise's rows from an earlier run on the same splits (its search takes minutes)
        for name in ("Surprise SVD, defaults", "Surprise SVD, RandomizedSearchCV"):
            rows[name] = tuple(reuse["rows"][name])
        out = {"seed": seed, "rows": rows, **{k: reuse[k] for k in ("surprise_search_seconds", "surprise_best_params")}}
        return _with_search(out, seed, run_search, reuse_search)
    from surprise import SVD
    from surprise.model_selection import KFold, RandomizedSearchCV

    dataset, testset = surprise_rows(data)
    trainset = dataset.build_full_trainset()
    rows["Surprise SVD, defaults"] = surprise_scores(SVD(random_state=seed).fit(trainset), testset)
    start = time.perf_counter()
    search = RandomizedSearchCV(SVD, {
        "n_factors": stats.randint(10, 200), "n_epochs": stats.randint(10, 60),
        "lr_all": stats.loguniform(1e-3, 3e-2), "reg_all": stats.loguniform(1e-2, 2e-1),
        "init_std_dev": stats.loguniform(1e-2, 2e-1), "random_state": [seed]}, n_iter=n_iter, measures=["rmse"],
        cv=KFold(3, random_state=seed), refit=True,  # seeded folds and starting weights: reproducible
        random_state=seed, n_jobs=1)
    search.fit(dataset)
    tuned_seconds = time.perf_counter() - start
    rows["Surprise SVD, RandomizedSearchCV"] = surprise_scores(search.best_estimator["rmse"], testset)
    out = {"seed": seed, "rows": rows, "surprise_search_seconds": tuned_seconds,
           "surprise_best_params": search.best_params["rmse"]}
    return _with_search(out, seed, run_search, reuse_search)


def _with_search(out: dict, seed: int, run_search: bool, reuse: bool = False) -> dict:
    if run_search:
        import search_default

        record = _recorded_search(seed) if reuse else search_default.run_default(seed)
        out["rows"]["pipeline default search (refit champion)"] = (record["test_rmse"], record["test_mae"])
        out["search_seconds"] = record["wall_seconds"]
        out["search_best_params"] = record["best_params"]
    return out


def _recorded_search(seed: int) -> dict:
    """The default search's record for split `seed`; refused unless it ran the shipped space."""
    from pipeline.space import load_space

    path = Path(__file__).parent / "results" / f"search_default-mf-split{seed}.json"
    record = json.loads(path.read_text())
    if record.get("space_digest") != load_space("mf").digest() or any(
            flag in record["command"] for flag in ("--n-trials", "--space", "--config")):
        raise SystemExit(f"{path}: not a record of the default search (another space or trial count): rerun "
                         f"`python bench/search_default.py --split-seed {seed}`")
    return record


def _myfm_rows(seeds: list[int]) -> dict:
    """myFM's rows from bench/results/peers_bayes.json (same splits, fitted on train+valid, scored
    on test; `python bench/peers_bayes.py`), shown beside ours: the rows measured on `seeds`."""
    path = Path(__file__).parent / "results" / "peers_bayes.json"
    if not path.exists():
        return {}
    return {f"{name} (peers_bayes.json)": {k: row[k] for k in ("rmse_mean", "mae_mean", "rmse_per_seed", "chains")}
            for name, row in json.loads(path.read_text())["table"].items()
            if name.startswith("myFM") and row.get("seeds") == seeds}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-iter", type=int, default=200)
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--reuse-search", action="store_true",
                   help="take the default search's rows from bench/results/search_default-mf-split*.json")
    p.add_argument("--reuse-surprise", action="store_true",
                   help="take Surprise's rows from bench/results/accuracy.json (same splits) instead of rerunning")
    args = p.parse_args()
    path = Path(__file__).parent / "results" / "accuracy.json"
    previous = {r["seed"]: r for r in json.loads(path.read_text())["runs"]} if args.reuse_surprise else {}
    results = [one_seed(seed, args.n_iter, not args.skip_search, previous.get(seed) if args.reuse_surprise else None,
                        args.reuse_search) for seed in args.seeds]
    names = list(results[0]["rows"])
    print(f"ml-100k, split seeds {args.seeds}, test RMSE / MAE, mean ± sd")
    table = {}
    for name in names:
        rmse = [r["rows"][name][0] for r in results]
        mae = [r["rows"][name][1] for r in results]
        sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        table[name] = {"rmse_mean": statistics.mean(rmse), "rmse_sd": sd(rmse), "mae_mean": statistics.mean(mae),
                       "mae_sd": sd(mae), "rmse_per_seed": rmse}
        print(f"{name:<44} {statistics.mean(rmse):.4f} ± {sd(rmse):.4f}   {statistics.mean(mae):.4f} ± {sd(mae):.4f}"
              f"   per seed {', '.join(f'{x:.4f}' for x in rmse)}")
    peers = _myfm_rows(args.seeds)
    for name, row in peers.items():
        print(f"{name:<44} {row['rmse_mean']:.4f}            {row['mae_mean']:.4f}"
              f"            per seed {', '.join(f'{x:.4f}' for x in row['rmse_per_seed'])}")
    for r in results:
        print(f"seed {r['seed']}: Surprise RandomizedSearchCV {r['surprise_search_seconds']:.0f} s"
              + (f", pipeline search {r['search_seconds']:.0f} s" if "search_seconds" in r else ""))
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "n_iter": args.n_iter,
                                "table": table, "peers_bayes": peers, "runs": results,
                                "command": "python bench/accuracy.py " + " ".join(sys.argv[1:])}, indent=2,
                               default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
