"""What a study optimizes: valid RMSE (the default), valid NDCG@10, or both (a multi-objective
study), and the one champion rule every step that needs "the best trial" goes through."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

__all__ = ["OBJECTIVES", "champion", "metric_names", "pareto_front", "valid_rmse"]

# A space's objective name -> (its name in Optuna and the trial's user attr, Optuna's direction,
# the metric of the trial's MLflow run that holds it).
OBJECTIVES = {"rmse": ("valid_rmse", "minimize", "best_valid_rmse"),
              "ndcg@10": ("valid_ndcg_at_10", "maximize", "valid_ndcg_at_10")}


def metric_names(study: optuna.Study) -> list[str]:
    """The study's objectives as named in Optuna (a study from before the names: valid RMSE alone)."""
    return study.metric_names or ["valid_rmse"]


def valid_rmse(trial: FrozenTrial) -> float | None:
    """The trial's best valid RMSE (user attr `valid_rmse`; a trial of a study from before the attr,
    whose only objective was valid RMSE, has it as its value); None for a trial that never completed."""
    if "valid_rmse" in trial.user_attrs:
        return trial.user_attrs["valid_rmse"]
    values = trial.values
    return values[0] if values and len(values) == 1 else None


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials no other complete trial beats on every objective (one objective: the best)."""
    return study.best_trials if len(study.directions) > 1 else [study.best_trial]


def champion(study: optuna.Study) -> FrozenTrial:
    """The trial that is refit, tested and registered: the best one; with several objectives, the
    Pareto front's trial of lowest valid RMSE (the rating error the registry's gate compares; that
    trial is always on the front, so it is the study's lowest valid RMSE and the front says what
    else was on offer). Raises ValueError when no trial is complete."""
    front = pareto_front(study)  # ValueError from Optuna when one objective has no complete trial
    if not front:
        raise ValueError("no complete trial")
    return min(front, key=lambda t: (valid_rmse(t), t.number))
