"""`python -m pipeline.recommend`: a user's top-N unseen items from a logged or registered model.

    python -m pipeline.recommend --model models:/mf-movielens@champion --user 20 --top 10
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from pipeline.bundle import load_bundle
from pipeline.predict import model_arguments
from pipeline.tracking import TrackingError

__all__ = ["main", "top_unseen"]


def top_unseen(bundle, user_id: int, top: int) -> list[tuple[int, float]]:
    """The `top` highest-scored items the user has not rated in training: [(item_id, rating)]."""
    seen = bundle.seen
    items = np.unique(seen["item_id"].to_numpy())
    rated = seen["item_id"].to_numpy()[seen["user_id"].to_numpy() == user_id]
    candidates = np.setdiff1d(items, rated)
    pairs = torch.from_numpy(np.stack([np.full(len(candidates), user_id), candidates], 1).astype(np.int64))
    with torch.no_grad():
        scores = bundle.scorer(pairs)
    best = torch.topk(scores, min(top, len(candidates)))
    return [(int(candidates[i]), float(s)) for s, i in zip(best.values, best.indices)]


def main(argv: list[str] | None = None) -> int:
    p = model_arguments(__doc__.splitlines()[0], "python -m pipeline.recommend")
    p.add_argument("--top", type=int, default=10, help="how many items")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top {args.top}: expected >= 1")
    try:
        bundle = load_bundle(args.model, args.tracking_uri)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not bundle.knows_user(args.user):
        print(f"error: user {args.user} does not exist in {bundle.dataset}'s training data of {args.model}",
              file=sys.stderr)
        return 2
    ranked = top_unseen(bundle, args.user, args.top)
    if args.json:
        print(json.dumps({"model": args.model, "user_id": args.user, "items": [
            {"item_id": i, "rating": r, "title": bundle.titles.get(i)} for i, r in ranked]}))
    else:
        print(f"top {len(ranked)} unseen items for user {args.user} ({args.model}):")
        for rank, (item, rating) in enumerate(ranked, 1):
            print(f"{rank:3d}. {rating:.3f}  {item:>7}  {bundle.titles.get(item, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
