"""The study's comparison view in `mlflow ui`, in the one place that writes MLflow's internal
format for it (`mlflow.sharedViewState.<key>`: the runs table's state as plain JSON, what the UI's
"share view" saves). An MLflow upgrade can change that format: tests/test_ui.py opens the view in
a browser. Pure: `Tracker.share_trials_view` writes the tags.
"""

from __future__ import annotations

import hashlib
import json

__all__ = ["view_link", "view_tags"]


def _view_key(study_name: str) -> str:
    return "trials-" + hashlib.sha256(study_name.encode()).hexdigest()[:16]


def view_tags(study_name: str, parent_id: str, params: list[str],
              order: tuple[str, bool] = ("best_valid_rmse", True)) -> dict[str, str]:
    """The experiment tags of the view: the study's trials only (children of `parent_id`), best
    first by `order` (a run metric, lowest first or not: the study's first objective), with the
    state, valid RMSE, the valid ranking metrics and `params` as columns; and the experiment marked
    as model training (what MLflow reads for its default view)."""
    state = {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_id}'",
        "orderByKey": f"metrics.`{order[0]}`", "orderByAsc": order[1],
        "selectedColumns": ["metrics.`best_valid_rmse`", "tags.`optuna.state`", "metrics.`best_epoch`",
                            *(f"metrics.`valid_{m}`" for m in ("ndcg_at_10", "recall_at_10", "map_at_10")),
                            *(f"params.`{p}`" for p in params), "metrics.`train_seconds`"],
    }
    return {"mlflow.experimentKind": "custom_model_development",
            f"mlflow.sharedViewState.{_view_key(study_name)}": json.dumps(state)}


def view_link(experiment_id: str, study_name: str) -> str:
    """The `mlflow ui` address (after the server's root) of the view."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={_view_key(study_name)}"
