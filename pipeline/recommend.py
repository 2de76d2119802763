"""`python -m pipeline.recommend`: a user's top-N unseen items from a logged or registered model.

    python -m pipeline.recommend --model models:/mf-movielens@champion --user 20 --top 10
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from pipeline.bundle import load_bundle
from pipeline.predict import model_arguments
from pipeline.tracking import TrackingError, configure_mlflow

__all__ = ["main", "top_unseen"]


def top_unseen(bundle, user_id, top: int) -> list[tuple[object, float]]:
    """The `top` highest-scored items the user has not rated in training: [(item_id, rating)], ids
    as Python ints or strs (the item column's kind), best first, ties in id order."""
    seen = bundle.seen
    rated = seen.loc[seen["user_id"].eq(user_id).to_numpy(), "item_id"]
    candidates = pd.Index(seen["item_id"].unique()).difference(pd.Index(rated.unique())).tolist()  # sorted
    if not candidates:
        return []
    scores = bundle.score([user_id] * len(candidates), candidates)
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
    except (TrackingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not bundle.knows("user_id", user):
        print(f"error: user {user} does not exist in {bundle.dataset}'s training data of {args.model}",
              file=sys.stderr)
        return 2
    ranked = top_unseen(bundle, user, args.top)
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
