"""What to ship after the default search: the best-valid trial, an ensemble of the top trials, or
the top trials re-ranked by K-fold CV? All scored on the same test rows.

    python bench/selection.py [--seeds 0 1 2] [--n-trials N] [--folds 3]

Per split seed: the default search (`python -m pipeline.search`, space mf, fresh temporary folder,
as bench/search_default.py runs it), then from its completed trials, sorted by valid RMSE:
(a) the current rule: the best-valid trial refit on train+valid for its best epoch count (checked
    against the search's own test RMSE);
(b) top-k ensembles, k = 2, 3, 5: the top k trials' refits, their clamped predictions averaged (the
    main number); beside it the same k models collapsed into one MatrixFactorization (each model's
    factor columns scaled 1/sqrt(k) and concatenated, biases and global means averaged), whose
    unclamped predictions must equal the average of the models' unclamped ones;
(c) K-fold selection: each of the top 5 re-scored by `--folds`-fold CV on train+valid (a
    permutation seeded by the split seed; `refit` on the other folds for the trial's best epoch
    count, RMSE on the held-out fold); the lowest mean CV RMSE is refit on all train+valid and tested.
Every fit uses the search's training seed (0), as its own refit does. "extra seconds" is what each
option would add to a search that already refits its best trial: the other refits (b), the CV
fits plus the winner's refit unless it is the best-valid trial (c). With the space's 4 trials,
"top 5" is every completed trial. Wall times: a shared 2-core machine under `nice -n 19`.
Writes bench/results/selection.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from optuna.trial import TrialState

from pipeline import ingest
from pipeline.evaluate import evaluate
from pipeline.model import MatrixFactorization
from pipeline.space import SEARCH_SPACES
from pipeline.split import Interactions, split
from pipeline.training import TrainConfig, refit

TRAIN_SEED = 0  # pipeline.search's --seed default: its trials' and its refit's seed
KS = (2, 3, 5)


def run_search(split_seed: int, n_trials: int | None = None) -> tuple[list[optuna.trial.FrozenTrial], dict, float]:
    """The default search in a fresh folder, as bench/search_default.py runs it (which also writes
    its own result file, hence this copy): (trials, the study's summary, wall seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = yaml.safe_load((SEARCH_SPACES / "mf.yaml").read_text())
        raw["split"]["seed"] = split_seed
        (Path(tmp) / "mf.yaml").write_text(yaml.safe_dump(raw))
        command = [sys.executable, "-m", "pipeline.search", "--config", f"{tmp}/mf.yaml", "--quiet",
                   "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--storage", f"{tmp}/optuna.journal"]
        if n_trials:
            command += ["--n-trials", str(n_trials)]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the search failed ({done.returncode}):\n{done.stderr[-3000:]}")
        wall = time.perf_counter() - start
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{tmp}/optuna.journal"))
        (name,) = optuna.get_all_study_names(storage)  # the search leaves its study and nothing else
        study = optuna.load_study(study_name=name, storage=storage)
        return study.get_trials(states=(TrialState.COMPLETE,)), study.user_attrs["summary"], wall


def collapse(models: list[MatrixFactorization]) -> MatrixFactorization:
    """The models' mean prediction as one MatrixFactorization (unclamped: exact up to float32)."""
    scale = len(models) ** -0.5
    P = torch.cat([m.users[:, : m.factors] * scale for m in models], 1)
    Q = torch.cat([m.items[:, : m.factors] * scale for m in models], 1)
    width = P.shape[1]
    out = MatrixFactorization(models[0].n_users, models[0].n_items, width,
                              statistics.mean(m.global_mean.item() for m in models),
                              tuple(models[0].rating_scale.tolist()))
    with torch.no_grad():
        out.users[:, :width], out.items[:, :width] = P, Q
        out.users[:, width] = torch.stack([m.users[:, m.factors] for m in models]).mean(0)
        out.items[:, width + 1] = torch.stack([m.items[:, m.factors + 1] for m in models]).mean(0)
    return out


def _rows(part: Interactions, idx: np.ndarray) -> Interactions:
    idx = torch.from_numpy(idx)
    return Interactions(part.users[idx], part.items[idx], part.ratings[idx])


def _timed_refit(rows: Interactions, trial, dims: dict) -> tuple[MatrixFactorization, float]:
    start = time.perf_counter()
    model = refit(rows, TrainConfig(**trial.user_attrs["config"]), trial.user_attrs["best_epoch"],
                  seed=TRAIN_SEED, device="cpu", **dims).model
    return model.eval(), time.perf_counter() - start


def _scores(predicted: torch.Tensor, test: Interactions) -> tuple[float, float]:
    err = (predicted - test.ratings).double()
    return err.square().mean().sqrt().item(), err.abs().mean().item()


def one_seed(ratings, seed: int, n_trials: int | None, folds: int) -> dict:
    trials, summary, search_seconds = run_search(seed, n_trials)
    trials = sorted(trials, key=lambda t: (t.value, t.number))
    top = trials[: max(KS)]
    data = split(ratings, seed=seed)
    fit_rows, test = data.part("train+valid"), data.part("test")
    refits = [_timed_refit(fit_rows, t, data.dims) for t in top]
    models, seconds = [m for m, _ in refits], [s for _, s in refits]
    with torch.no_grad():
        clamped = torch.stack([m.predict(test.users, test.items) for m in models])
        raw = torch.stack([m(test.users, test.items) for m in models])

    best = evaluate(models[0], test)
    out = {"seed": seed, "search_seconds": search_seconds, "completed_trials": len(trials),
           "top": [{"trial": t.number, "family": t.user_attrs["config"]["family"], "valid_rmse": t.value,
                    "best_epoch": t.user_attrs["best_epoch"], "refit_seconds": s} for t, s in zip(top, seconds)],
           "a_best_valid": {"test_rmse": best.rmse, "test_mae": best.mae, "extra_seconds": 0.0,
                            "search_test_rmse": summary["test_rmse"],
                            "matches_search": abs(best.rmse - summary["test_rmse"]) < 1e-6}}
    for k in KS:
        n = min(k, len(models))
        merged = collapse(models[:n])
        with torch.no_grad():
            diff = (merged(test.users, test.items) - raw[:n].mean(0)).abs().max().item()
        rmse, mae = _scores(clamped[:n].mean(0), test)
        out[f"b_top{k}"] = {"models": n, "test_rmse": rmse, "test_mae": mae, "extra_seconds": sum(seconds[1:n]),
                            "collapsed_test_rmse": evaluate(merged, test).rmse,
                            "collapsed_max_abs_diff": diff}

    order = np.random.default_rng(seed).permutation(len(fit_rows))
    parts = np.array_split(order, folds)
    cv, cv_seconds = [], 0.0
    for t in top:
        errors = []
        for f in range(folds):
            model, s = _timed_refit(_rows(fit_rows, np.concatenate(parts[:f] + parts[f + 1:])), t, data.dims)
            held = _rows(fit_rows, parts[f])
            errors.append(evaluate(model, held).rmse)
            cv_seconds += s
        cv.append(statistics.mean(errors))
    pick = int(np.argmin(cv))
    chosen = evaluate(models[pick], test)
    out["c_kfold"] = {"cv_rmse": cv, "picked_trial": top[pick].number, "picked_rank": pick,
                      "test_rmse": chosen.rmse, "test_mae": chosen.mae,
                      "extra_seconds": cv_seconds + (seconds[pick] if pick else 0.0)}
    return out


OPTIONS = ["a_best_valid", *(f"b_top{k}" for k in KS), "c_kfold"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-trials", type=int, help="the search's trial count (default: the space's)")
    p.add_argument("--folds", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    ratings = ingest.load("ml-100k")
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(ratings, seed, args.n_trials, args.folds))
        r = runs[-1]
        print(f"seed {seed}: search {r['search_seconds']:.0f} s, {r['completed_trials']} complete, "
              f"(a) matches the search: {r['a_best_valid']['matches_search']}, "
              f"K-fold picked trial {r['c_kfold']['picked_trial']} (rank {r['c_kfold']['picked_rank']})", flush=True)
        for name in OPTIONS:
            print(f"  {name:<14} test RMSE {r[name]['test_rmse']:.4f}  +{r[name]['extra_seconds']:.0f} s"
                  + (f"  collapsed {r[name]['collapsed_test_rmse']:.4f} (max |Δ| unclamped "
                     f"{r[name]['collapsed_max_abs_diff']:.1e})" if "collapsed_test_rmse" in r[name] else ""),
                  flush=True)
    table = {name: {"rmse_mean": statistics.mean(r[name]["test_rmse"] for r in runs),
                    "mae_mean": statistics.mean(r[name]["test_mae"] for r in runs),
                    "extra_seconds_mean": statistics.mean(r[name]["extra_seconds"] for r in runs),
                    "rmse_per_seed": [r[name]["test_rmse"] for r in runs]} for name in OPTIONS}
    for k in KS:
        table[f"b_top{k}"]["collapsed_rmse_mean"] = statistics.mean(r[f"b_top{k}"]["collapsed_test_rmse"] for r in runs)
    print(f"ml-100k, split seeds {args.seeds}, mean test RMSE / MAE, extra seconds over the search's "
          f"{statistics.mean(r['search_seconds'] for r in runs):.0f} s")
    for name, t in table.items():
        print(f"{name:<14} {t['rmse_mean']:.4f}  {t['mae_mean']:.4f}  +{t['extra_seconds_mean']:.0f} s   "
              f"per seed {', '.join(f'{x:.4f}' for x in t['rmse_per_seed'])}")
    out = Path(__file__).parent / "results" / "selection.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "folds": args.folds,
                               "timing_note": "wall seconds on a shared 2-core machine under nice -n 19",
                               "table": table, "runs": runs,
                               "command": "python bench/selection.py " + " ".join(sys.argv[1:])}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
