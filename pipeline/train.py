"""`python -m pipeline.train`: train one MF model and score it (the d2l tutorial's Step 5).

Defaults are the tutorial's configuration: 30 factors, Adam, lr 0.002, weight decay 1e-5,
20 epochs, batch 512. `--refit` retrains on train + valid for the best epoch count before the test,
as the search does (the usual 90/10 MovieLens protocol).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from pipeline import ingest
from pipeline.evaluate import baselines, evaluate
from pipeline.split import STRATEGIES, split
from pipeline.trainer import OPTIMIZERS, TrainConfig, TrainingDiverged, default_device, fit

__all__ = ["main", "parser"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected an integer >= 1")
    return value


def parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="ml-100k", help="MovieLens name, 'synthetic', or a ratings file")
    data.add_argument("--data-path", default=None, help="a local copy of the MovieLens zip")
    data.add_argument("--split", default="random", choices=STRATEGIES)
    data.add_argument("--test", type=float, default=0.1, help="test fraction")
    data.add_argument("--valid", type=float, default=0.1, help="valid fraction")
    model = p.add_argument_group("model and training")
    model.add_argument("--factors", type=_positive_int, default=d.factors)
    model.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    model.add_argument("--lr", type=float, default=d.lr)
    model.add_argument("--weight-decay", type=float, default=d.weight_decay)
    model.add_argument("--l2", type=float, default=d.l2, help="per-example L2 on the factors")
    model.add_argument("--l2-bias", type=float, default=d.l2_bias, help="per-example L2 on the biases (default: --l2)")
    model.add_argument("--momentum", type=float, default=d.momentum, help="sgd only")
    model.add_argument("--epochs", type=_positive_int, default=d.epochs)
    model.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    model.add_argument("--init-std", type=float, default=d.init_std)
    model.add_argument("--patience", type=_positive_int, default=d.patience, help="early-stopping patience")
    p.add_argument("--refit", action="store_true", help="retrain on train+valid for the best epoch count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        config = TrainConfig(factors=args.factors, optimizer=args.optimizer, lr=args.lr,
                             weight_decay=args.weight_decay, l2=args.l2, l2_bias=args.l2_bias,
                             momentum=args.momentum, epochs=args.epochs, batch_size=args.batch_size,
                             init_std=args.init_std, patience=args.patience)
        device = torch.device(args.device) if args.device else default_device()
        options = {"path": args.data_path} if args.data_path else {}
        ratings = ingest.load(args.dataset, **options)
        data = split(ratings, args.split, test=args.test, valid=args.valid, seed=args.seed)
    except (ValueError, RuntimeError) as exc:  # IngestError is a ValueError; bad --device a RuntimeError
        p.error(str(exc))

    say = (lambda *a, **k: None) if args.json else print
    say(f"{ratings.name}: {len(ratings):,} ratings, {ratings.n_users:,} users, {ratings.n_items:,} items; "
        f"split {data.summary()}; device {device}")
    dims = {"n_users": data.n_users, "n_items": data.n_items, "rating_scale": ratings.rating_scale}
    train, valid, test = (data.part(name).to(device) for name in ("train", "valid", "test"))

    def report(epoch: int, loss: float, rmse: float) -> None:
        say(f"epoch {epoch:3d}  train mse {loss:.4f}  valid rmse {rmse:.4f}")

    try:
        result = fit(train, config, valid=valid, seed=args.seed, device=device, callback=report, **dims)
        model, speed = result.model, result.examples_per_second
        if args.refit:
            refit = fit(data.part("train+valid"), dataclasses.replace(config, epochs=result.best_epoch),
                        seed=args.seed, device=device, **dims)
            model = refit.model
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    valid_m, test_m = evaluate(result.model, valid), evaluate(model, test)
    reference = baselines(data.part("train"), data.part("test"), **dims)
    out = {
        "dataset": ratings.name, "config": config.to_dict(), "seed": args.seed, "device": str(device),
        "epochs": len(result.history), "best_epoch": result.best_epoch, "refit": args.refit,
        "valid_rmse": valid_m.rmse, "valid_mae": valid_m.mae, "test_rmse": test_m.rmse, "test_mae": test_m.mae,
        "examples_per_second": speed, "train_seconds": result.train_seconds,
        "baselines": {name: {"test_rmse": m.rmse, "test_mae": m.mae} for name, m in reference.items()},
        "split": data.summary(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"best epoch {result.best_epoch} of {len(result.history)}"
              f"{' (refit on train+valid)' if args.refit else ''}")
        print(f"valid rmse {valid_m.rmse:.4f}  mae {valid_m.mae:.4f}")
        print(f"test  rmse {test_m.rmse:.4f}  mae {test_m.mae:.4f}")
        for name, m in reference.items():
            print(f"  {name:<12} test rmse {m.rmse:.4f}  mae {m.mae:.4f}")
        print(f"{speed / 1e6:.2f} M training examples/s on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
