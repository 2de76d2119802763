"""New users scored from their side features on ml-100k (issue 19 item 4).

    python bench/new_users.py [--seeds 0 1 2] [--optimizer sparse_sgd] [--factors 100] [--lr 0.01] ...
    python bench/new_users.py --family bayes [--factors 30] [--epochs 150] [--chains 2] ...

Per seed: 10 % of the users are held out entirely (all their ratings); the other users' ratings are
split 80/10/10 (same seed), a model is fitted on train with early stopping on valid, then refit on
train+valid for its best epoch count (bayes: its sweeps, `--chains` chains averaged), once with
`features=user` and once with `features=none` (the control). Each held-out rating is then scored
from its user's features only (`MatrixFactorization.feature_rows`: the fallback row, the known
users' mean, + Σ_g k_g^-1/2 Σ_v W_g[v] over tables centred on the known users: what the served
model computes for an unseen id given `user.<group>` columns) and compared with what an unseen
user gets without features (the features=none model's fallback row: the average known user), the
damped item-bias baseline μ + b_i (`evaluate.biases_only`) and the global mean. The known users'
test rows are scored too (features must not cost them). Prints a table and writes
bench/results/new_users.json (bayes: new_users-bayes.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import ingest
from pipeline.evaluate import biases_only, evaluate
from pipeline.ratings import canonical
from pipeline.split import split
from pipeline.training import TrainConfig, fit, refit

RESULTS = Path(__file__).parent / "results"


def hold_out(ratings, seed: int, fraction: float = 0.1):
    """(the ratings of the other users, with the side features; the held-out users' rating rows)."""
    users = np.unique(ratings.frame["user_id"].to_numpy())
    held = np.random.default_rng(seed).choice(users, round(fraction * len(users)), replace=False)
    out = ratings.frame["user_id"].isin(held).to_numpy()
    rest = canonical(ratings.frame[~out].reset_index(drop=True), name=f"{ratings.name}-rest",
                     rating_scale=ratings.rating_scale, source=ratings.source)
    return rest.replace(user_features=ratings.user_features, item_features=ratings.item_features), \
        ratings.frame[out].reset_index(drop=True)


def trained(data, config: TrainConfig, seed: int, chains: int):
    """`config` early-stopped on valid, then refit on train+valid for its best epoch count (as the
    search's finish does: a bayes refit averages `chains` chains)."""
    options = dict(features=data.features, seed=seed, **data.dims)
    first = fit(data.part("train"), config, valid=data.part("valid"), **options)
    final = refit(data.part("train+valid"), config, first.best_epoch, chains=chains, **options)
    return final.model, first.best_epoch


def held_out_scores(model, data, held: pd.DataFrame, from_features: bool) -> np.ndarray:
    """Clamped scores (N,) of the held-out rows: each user's row from its features (or the fallback
    row), each item's learned row (an item only they rated: the fallback row)."""
    items = pd.Index(data.item_ids).get_indexer(held["item_id"])
    items = torch.from_numpy(np.where(items < 0, len(data.item_ids), items))
    users, at = np.unique(held["user_id"].to_numpy(), return_inverse=True)
    features = data.ratings.user_features
    codes = []
    for user in users:
        entity = int(np.searchsorted(features.ids, user))
        codes.append([g.codes[g.offsets[entity]:g.offsets[entity + 1]] if from_features else g.codes[:0]
                      for g in features.groups])
    rows = model.feature_rows("user", codes) if model.side_tables else model.users[-1:].detach().expand(len(users), -1)
    with torch.no_grad():
        return model.score_rows(rows[torch.from_numpy(at)], model.items[items]).numpy()


def rmse(scores: np.ndarray, held: pd.DataFrame) -> float:
    return float(np.sqrt(np.mean((scores - held["rating"].to_numpy(np.float64)) ** 2)))


def one_seed(ratings, seed: int, config: TrainConfig, chains: int) -> dict:
    rest, held = hold_out(ratings, seed)
    data = split(rest, seed=seed)
    result = {"held_out_users": int(held["user_id"].nunique()), "held_out_ratings": len(held)}
    fit_rows = data.part("train+valid")
    bias = biases_only(fit_rows, **data.dims)
    result["item_bias_baseline"] = rmse(held_out_scores(bias, data, held, False), held)
    mean = float(fit_rows.ratings.double().mean())
    result["global_mean"] = rmse(np.clip(np.full(len(held), mean), *data.ratings.rating_scale), held)
    for mode in ("user", "none"):
        started = time.perf_counter()
        model, epochs = trained(data, config.replace(features=mode), seed, chains)
        result[f"features={mode}"] = {
            "held_out_rmse": rmse(held_out_scores(model, data, held, mode == "user"), held),
            "known_users_test_rmse": evaluate(model, data.part("test")).rmse, "best_epoch": epochs,
            "seconds": round(time.perf_counter() - started, 1)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--family", choices=["mf", "bayes"], default="mf")
    # mf's defaults: README's sparse_sgd example (100 factors), early-stopped (patience 3). bayes':
    # a default search's champion (split seeds 0-2: rank 30-32, burn-in 3-5, α 1.3-1.7, 150 sweeps,
    # both implicit blocks, a 2-chain refit).
    p.add_argument("--factors", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--optimizer", default="sparse_sgd")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--l2", type=float, default=0.1)
    p.add_argument("--l2-bias", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--init-std", type=float, default=0.1)
    p.add_argument("--implicit", default="both", help="bayes only")
    p.add_argument("--burn-in", type=int, default=4)
    p.add_argument("--noise-precision", type=float, default=1.4)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.family == "mf":
        config = TrainConfig(optimizer=args.optimizer, factors=args.factors or 100, lr=args.lr,
                             weight_decay=args.weight_decay, l2=args.l2, l2_bias=args.l2_bias,
                             batch_size=args.batch_size, init_std=args.init_std, epochs=args.epochs or 60,
                             patience=3)
    else:
        config = TrainConfig(family="bayes", implicit=args.implicit, factors=args.factors or 30,
                             epochs=args.epochs or 150, burn_in=args.burn_in,
                             noise_precision=args.noise_precision, init_std=args.init_std)
    ratings = ingest.load("ml-100k")
    seeds = {seed: one_seed(ratings, seed, config, args.chains) for seed in args.seeds}
    summary = _summary(seeds)
    for name, (mean, sd, each) in summary.items():
        print(f"{name:<40} {mean:.4f} ± {sd:.4f}   ({', '.join(f'{x:.4f}' for x in each)})")
    record = {"date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv),
              "config": config.to_dict(), "chains": args.chains if args.family == "bayes" else 1,
              "protocol": __doc__.split("\n\n")[2].replace("\n", " "), "seeds": seeds,
              "summary": {k: {"mean": m, "sd": s, "per_seed": e} for k, (m, s, e) in summary.items()},
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    if not args.no_write:
        name = "new_users.json" if args.family == "mf" else f"new_users-{args.family}.json"
        (RESULTS / name).write_text(json.dumps(record, indent=2) + "\n")


def _summary(seeds: dict) -> dict[str, tuple[float, float, list[float]]]:
    """Held-out users' RMSE per model: (mean, sd, per seed), and the known users' test RMSE."""
    rows = {"held-out users: features=user (from features)": ("features=user", "held_out_rmse"),
            "held-out users: features=none (the average user)": ("features=none", "held_out_rmse"),
            "held-out users: item-bias baseline μ+b_i": ("item_bias_baseline", None),
            "held-out users: global mean": ("global_mean", None),
            "known users' test rows: features=user": ("features=user", "known_users_test_rmse"),
            "known users' test rows: features=none": ("features=none", "known_users_test_rmse")}
    summary = {}
    for name, (key, inner) in rows.items():
        each = [s[key][inner] if inner else s[key] for s in seeds.values()]
        summary[name] = (statistics.mean(each), statistics.stdev(each) if len(each) > 1 else 0.0, each)
    return summary


if __name__ == "__main__":
    main()
