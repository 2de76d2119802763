"""`python -m pipeline.predict`: one predicted rating from a logged or registered model.

    python -m pipeline.predict --model models:/mf-movielens@champion --user 20 --item 30
    python -m pipeline.predict --model ... --user 5000 --user-features age=25,gender=F,occupation=writer,zip=9 --item 30

A user (or item) unseen in training is scored from its feature values when the model was trained
with that side's features (`--user-features` / `--item-features`: group=value pairs, a multi
group's labels joined by `|`); a known one is scored from its learned row, its features ignored.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.bundle import load_bundle
from pipeline.tracking import TrackingError, configure_mlflow

__all__ = ["main"]


def model_arguments(description: str, prog: str) -> argparse.ArgumentParser:
    """The flags `predict` and `recommend` share."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--model", default="models:/mf-movielens@champion",
                   help="a model URI: models:/<name>@<alias>, models:/<name>/<version>, runs:/...")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's)")
    p.add_argument("--user", required=True, help="raw user id, as in the ratings file")
    p.add_argument("--user-features", metavar="GROUP=VALUE,...",
                   help="a user unseen in training: its feature values, e.g. age=25,gender=F,occupation=writer,zip=9")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def parse_features(bundle, args) -> dict[str, dict[str, str]]:
    """{side: {group: value}} from --user-features / --item-features (given ones only); ValueError."""
    texts = {"user": args.user_features, "item": getattr(args, "item_features", None)}
    return {side: bundle.parse_features(side, text, f"--{side}-features") for side, text in texts.items()
            if text is not None}


def refusal(bundle, ids: dict, features: dict, model_uri: str) -> str | None:
    """Why these raw ids cannot be scored (an unseen id without feature values), or None; prints a
    note to stderr for a known id given feature values (its learned row wins)."""
    for column, value in ids.items():
        side = column.split("_")[0]
        if bundle.knows(column, value):
            if side in features:
                print(f"note: {side} {value} is in the training data of {model_uri}: it is scored from its own "
                      f"row, --{side}-features is ignored", file=sys.stderr)
        elif side not in features:
            hint = f" (give --{side}-features to score it from its features)" if bundle.features.get(side) else ""
            return f"{side} {value} does not exist in {bundle.dataset}'s training data of {model_uri}{hint}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = model_arguments(__doc__.splitlines()[0], "python -m pipeline.predict")
    p.add_argument("--item", required=True, help="raw item id")
    p.add_argument("--item-features", metavar="GROUP=VALUE,...",
                   help="an item unseen in training: its feature values, e.g. genre=Comedy|Drama,release_year=1999")
    args = p.parse_args(argv)
    configure_mlflow(args.tracking_uri)  # the command's one MLflow set-up
    try:
        bundle = load_bundle(args.model)
        user = bundle.parse_id("user_id", args.user, "--user")
        item = bundle.parse_id("item_id", args.item, "--item")
        features = parse_features(bundle, args)
        refused = refusal(bundle, {"user_id": user, "item_id": item}, features, args.model)
        rating = None if refused else float(bundle.score([user], [item], features.get("user"), features.get("item"))[0])
    except (TrackingError, ValueError) as exc:
        refused = str(exc)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    new = [s for s, c, v in (("user", "user_id", user), ("item", "item_id", item)) if not bundle.knows(c, v)]
    title = bundle.titles.get(item)
    if args.json:
        print(json.dumps({"model": args.model, "user_id": user, "item_id": item, "rating": rating, "title": title,
                          "from_features": new}))
    else:
        how = f" (new {' and '.join(new)}: from features)" if new else ""
        print(f"user {user}, item {item}{f' ({title})' if title else ''}: predicted rating {rating:.3f}{how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
