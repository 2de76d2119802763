"""`python -m pipeline.train`: train one MF model and score it (the d2l tutorial's Step 5).

Defaults are the tutorial's configuration: 30 factors, Adam, lr 0.002, weight decay 1e-5,
20 epochs, batch 512. `--refit` retrains on train + valid for the best epoch count before the test,
as the search does (the usual 90/10 MovieLens protocol). The model flags are generated from
`TrainConfig`'s fields (help from their docstrings, `TrainConfig.help`), so the command and the config cannot drift.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import typing

from pipeline import ingest
from pipeline.device import device_memory, resolve_device
from pipeline.evaluate import baselines, evaluate
from pipeline.split import STRATEGIES, Split, split
from pipeline.training import OPTIMIZERS, TrainConfig, TrainingDiverged, fit, refit

__all__ = ["main", "parser"]


def _parse_as(kind: type, optional: bool):
    """An argparse `type` for a field of type `kind` (`none` is None where the field allows it)."""
    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {kind.__name__}"
                                             f"{' or none' if optional else ''}") from None
    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def _add_config_flags(group, defaults: TrainConfig) -> None:
    docs = TrainConfig.help()
    for name, field in TrainConfig.model_fields.items():
        types = typing.get_args(field.annotation) or (field.annotation,)
        kinds = [t for t in types if t is not type(None)]
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=_parse_as(kinds[0], len(kinds) < len(types)),
                           default=getattr(defaults, name), help=docs[name],
                           choices=OPTIMIZERS if name == "optimizer" else None)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="ml-100k", help="MovieLens name, 'synthetic', or a ratings file")
    data.add_argument("--data-path", default=None, help="a local copy of the MovieLens zip")
    data.add_argument("--split", default="random", choices=STRATEGIES)
    data.add_argument("--test", type=float, default=0.1, help="test fraction")
    data.add_argument("--valid", type=float, default=0.1, help="valid fraction")
    ingest.add_source_flags(p)
    _add_config_flags(p.add_argument_group("model and training (TrainConfig)"), TrainConfig())
    p.add_argument("--refit", action="store_true", help="retrain on train+valid for the best epoch count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        config = TrainConfig(**{name: getattr(args, name) for name in TrainConfig.model_fields})
        device = resolve_device(args.device)
        options = {"path": args.data_path} if args.data_path else {}
        ratings = ingest.load(args.dataset, **options, **ingest.source_options(args))
        data = split(ratings, args.split, test=args.test, valid=args.valid, seed=args.seed)
        _check_memory(config, data, device, args.refit)
    except ValueError as exc:  # IngestError, a bad config value or device, a model too large for the device
        p.error(str(exc))
    say = (lambda *a, **k: None) if args.json else print
    say(f"{ratings.describe()}; split {data.summary()}; device {device}")
    valid, test = (data.part(name).to(device) for name in ("valid", "test"))

    def report(epoch: int, loss: float, rmse: float) -> None:
        say(f"epoch {epoch:3d}  train mse {loss:.4f}  valid rmse {rmse:.4f}")

    try:
        result = fit(data.part("train"), config, valid=valid, seed=args.seed, device=device, callback=report,
                     features=data.features, **data.dims)
        final = refit(data.part("train+valid"), config, result.best_epoch, seed=args.seed, device=device,
                      features=data.features, **data.dims) if args.refit else result
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = _scores(args, data, config, device, result, final, valid, test)
    print(json.dumps(_json_safe(out), allow_nan=False) if args.json else _text(out))
    return 0


def _check_memory(config: TrainConfig, data: Split, device, refit: bool) -> None:
    """Refuse, before anything is allocated, a model whose fit (or refit on train+valid) needs
    more than the device's memory (`TrainConfig.memory_bytes` against `device_memory`, bytes)."""
    train, valid = len(data.train_rows), len(data.valid_rows)
    need = config.memory_bytes(data.n_users, data.n_items, train, valid)
    if refit:
        need = max(need, config.memory_bytes(data.n_users, data.n_items, train + valid))
    have = device_memory(device)
    if need > have:
        more = " (or --epochs, or raise --burn-in: bayes keeps every sweep after burn-in)" \
            if config.family == "bayes" else ""
        raise ValueError(f"--factors {config.factors}: a {config.family} model on {data.n_users} users x "
                         f"{data.n_items} items needs ~{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB "
                         f"of {device}; lower --factors{more}")


def _scores(args, data, config, device, result, final, valid, test) -> dict:
    valid_m, test_m = evaluate(result.model, valid), evaluate(final.model, test)
    reference = baselines(data.part("train"), data.part("test"), **data.dims)
    return {
        "dataset": data.ratings.name, "config": config.to_dict(), "seed": args.seed, "device": str(device),
        "epochs": len(result.history), "best_epoch": result.best_epoch, "refit": args.refit,
        "refit_epochs": len(final.history) if args.refit else None,
        "valid_rmse": valid_m.rmse, "valid_mae": valid_m.mae, "test_rmse": test_m.rmse, "test_mae": test_m.mae,
        "examples_per_second": result.examples_per_second, "train_seconds": result.train_seconds,
        "baselines": {name: {"test_rmse": m.rmse, "test_mae": m.mae} for name, m in reference.items()},
        "split": data.summary(),
    }


def _json_safe(value):
    """`value` with every non-finite float as None: JSON has no NaN (an empty part's score)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _text(out: dict) -> str:
    refit = f" (refit on train+valid for {out['refit_epochs']} epochs)" if out["refit"] else ""
    lines = [f"best epoch {out['best_epoch']} of {out['epochs']}{refit}",
             f"valid rmse {out['valid_rmse']:.4f}  mae {out['valid_mae']:.4f}",
             f"test  rmse {out['test_rmse']:.4f}  mae {out['test_mae']:.4f}"]
    lines += [f"  {name:<12} test rmse {m['test_rmse']:.4f}  mae {m['test_mae']:.4f}"
              for name, m in out["baselines"].items()]
    lines.append(f"{out['examples_per_second'] / 1e6:.2f} M training examples/s on {out['device']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
