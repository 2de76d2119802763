"""`python -m pipeline.recommend`: a user's top-N unseen items from a logged or registered model.

    python -m pipeline.recommend --model models:/mf-movielens@champion --user 20 --top 10
    python -m pipeline.recommend --model ... --user 5000 --user-features age=25,gender=F,occupation=writer,zip=9

A user unseen in training is ranked from its feature values (`--user-features`) when the model was
trained with user features; every item the model was fitted on is a candidate.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from pipeline.bundle import load_bundle
from pipeline.predict import model_arguments, parse_features, refusal
from pipeline.tracking import TrackingError, configure_mlflow

__all__ = ["main", "top_unseen"]


def top_unseen(bundle, user_id, top: int, user_features: dict | None = None) -> list[tuple[object, float]]:
    """The `top` highest-scored items the user has not rated in training: [(item_id, rating)], ids
    as Python ints or strs (the item column's kind), best first, ties in id order. user_features:
    {group: value}, scoring a user unseen in training from them."""
    seen = bundle.seen
    rated = seen.loc[seen["user_id"].eq(user_id).to_numpy(), "item_id"]
    candidates = pd.Index(seen["item_id"].unique()).difference(pd.Index(rated.unique())).tolist()  # sorted
    if not candidates:
        return []
    scores = bundle.score([user_id] * len(candidates), candidates, user_features)
    best = np.argsort(-scores, kind="stable")[:top]
    return [(candidates[i], float(scores[i])) for i in best]


def main(argv: list[str] | None = None) -> int:
    p = model_arguments(__doc__.splitlines()[0], "python -m pipeline.recommend")
    p.add_argument("--top", type=int, default=10, help="how many items")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top {args.top}: expected >= 1")
    configure_mlflow(args.tracking_uri)  # the command's one MLflow set-up
    try:
        bundle = load_bundle(args.model)
        user = bundle.parse_id("user_id", args.user, "--user")
        features = parse_features(bundle, args)
        refused = refusal(bundle, {"user_id": user}, features, args.model)
        ranked = [] if refused else top_unseen(bundle, user, args.top, features.get("user"))
    except (TrackingError, ValueError) as exc:
        refused = str(exc)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": args.model, "user_id": user, "items": [
            {"item_id": i, "rating": r, "title": bundle.titles.get(i)} for i, r in ranked]}))
    else:
        print(f"top {len(ranked)} unseen items for user {user} ({args.model}):")
        print(f"{'rank':>4}  {'rating':>6}  {'item_id':>7}  title")
        for rank, (item, rating) in enumerate(ranked, 1):
            print(f"{rank:>4}  {rating:>6.3f}  {item:>7}  {bundle.titles.get(item, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
