"""What the command prints before and after the trials: the start line, the resume line, the closing
summary (the progress while it works: pipeline.search.progress)."""

from __future__ import annotations

from pipeline.urls import masked

__all__ = ["print_summary", "resume_line", "start_line"]


def start_line(study_name: str, ratings, data, device, cap: int, workers: int, tracking_uri: str) -> str:
    return (f"study {study_name}: {ratings.describe()}, split {data.summary()}, "
            f"device {device}, cap {cap} trials, {workers} worker(s); MLflow {masked(tracking_uri)}")


def resume_line(trials: list, cap: int) -> str | None:
    """"resuming: 3 of 4 trials complete (1 interrupted, run again)" for a study under way; None
    for a new one (nothing ended yet: its queued trial 0 is not a start)."""
    if not any(t.state.is_finished() for t in trials):
        return None
    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    again = sum(bool(t.user_attrs.get("interrupted")) for t in trials if t.state.name == "FAIL")
    line = f"resuming: {done} of {cap} trials complete"
    if again:
        line += f" ({again} interrupted: run again first)"
    return line


# The summary's columns: the test scores of the champion and of each reference (items rated >= 4 relevant).
_COLUMNS = {"test_rmse": "test RMSE", "test_mae": "test MAE", "ndcg_at_10": "NDCG@10", "recall_at_10": "Recall@10",
            "map_at_10": "MAP@10"}


def print_summary(s: dict, tracking_uri: str) -> None:
    """The study's outcome (see `finish.finish` for the keys) and how to look at it."""
    rows = [("best (refit on train+valid)", s)]
    rows += [(f"reference: {k.replace('_', ' ')}", v) for k, v in s["reference"].items()]
    print(f"\nstudy {s['study']}: trials {', '.join(f'{n} {k}' for k, n in s['trials'].items() if n)}")
    ranks = "".join(f", valid {_COLUMNS[k.removeprefix('valid_')]} {v:.4f}" for k, v in s.get("best_valid_ranking", {}).items())
    objective = s.get("objective") or ["valid_rmse"]
    if len(objective) > 1:  # the champion rule: pipeline.objectives.champion
        print(f"objectives {', '.join(objective)}: Pareto front trials {', '.join(map(str, s['pareto_front']))}; "
              "the champion is the front's lowest valid RMSE")
    elif objective != ["valid_rmse"]:
        print(f"objective {objective[0]}")
    print(f"best trial {s['best_trial']}: valid RMSE {s['best_valid_rmse']:.4f} at epoch {s['best_epoch']}{ranks}")
    print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in s["best_params"].items() if v is not None))
    print(f"\n{'model':<34}" + "".join(f"{title:>10}" for title in _COLUMNS.values()))
    for name, scores in rows:  # a metric a model has no value for (popularity has no ratings): "-"
        print(f"{name:<34}" + "".join(f"{scores[key]:>10.4f}" if key in scores else f"{'-':>10}" for key in _COLUMNS))
    print(f"\nregistered {s['registered']} as {s['alias']}: load it with {s['alias_uri']}")
    for name, why in s["plots_skipped"].items():
        print(f"plot {name} skipped: {why}")
    link = s.get("compare_link", "")
    if tracking_uri.startswith("http"):
        print(f"compare the trials, best first: open {masked(tracking_uri).rstrip('/')}/{link}")
    else:
        ui = "mlflow ui" + ("" if tracking_uri == "sqlite:///mlflow.db" else f" --backend-store-uri {masked(tracking_uri)}")
        print(f"compare the trials, best first: {ui}, then open http://127.0.0.1:5000/{link}")
