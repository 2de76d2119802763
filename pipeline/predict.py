"""`python -m pipeline.predict`: one predicted rating from a logged or registered model.

    python -m pipeline.predict --model models:/mf-movielens@champion --user 20 --item 30
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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    p = model_arguments(__doc__.splitlines()[0], "python -m pipeline.predict")
    p.add_argument("--item", required=True, help="raw item id")
    args = p.parse_args(argv)
    configure_mlflow(args.tracking_uri)  # the command's one MLflow set-up
    try:
        bundle = load_bundle(args.model)
        user = bundle.parse_id("user_id", args.user, "--user")
        item = bundle.parse_id("item_id", args.item, "--item")
    except (TrackingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for column, value in (("user_id", user), ("item_id", item)):
        if not bundle.knows(column, value):
            print(f"error: {column.split('_')[0]} {value} does not exist in {bundle.dataset}'s training data of "
                  f"{args.model}", file=sys.stderr)
            return 2
    rating = float(bundle.score([user], [item])[0])
    if args.json:
        print(json.dumps({"model": args.model, "user_id": user, "item_id": item, "rating": rating,
                          "title": bundle.titles.get(item)}))
    else:
        title = bundle.titles.get(item)
        print(f"user {user}, item {item}{f' ({title})' if title else ''}: predicted rating {rating:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
