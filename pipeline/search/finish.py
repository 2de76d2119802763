"""The study's last step, done once per best trial: refit the best on train+valid, score it on
test once, log the figures, the trials and the references, log the model and register it."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from pipeline.bundle import save_model
from pipeline.evaluate import Metrics, baselines, biases_only, evaluate
from pipeline.objectives import champion, metric_names, pareto_front, valid_rmse
from pipeline.ranking import VALID_RANKING, popularity_model, ranking_metrics, ranking_sets
from pipeline.split import Split
from pipeline.tracking import Tracker
from pipeline.training import TrainConfig, refit, refit_epochs
from pipeline.training.driver import EpochCallback

__all__ = ["Steps", "finish", "log_study_inputs", "refit_chains"]

def refit_chains(config: TrainConfig) -> int:
    """How many chains a champion is refit as, their posterior means averaged (1 for mf). With the
    noise precision drawn, a chain overfits after ~40 sweeps and averaging 4 paid 0.004 (default
    search's champions, split seeds 0-2: 0.8761, 0.8790, 0.8703 -> 0.8715, 0.8755, 0.8637); held,
    each chain improves to its last sweep and averaging pays less (split 1, rank 22, α 1.3, side
    features, 200 sweeps: 1 chain 0.8710, 2 averaged 0.8708, 4 averaged 0.8706;
    bench/noise_precision.py), so 2: a third chain costs what many more sweeps do."""
    if config.family != "bayes":
        return 1
    return 4 if config.noise_precision is None else 2


class Steps(Protocol):
    """What is told the finish's steps as they start (`pipeline.search.progress.Steps`)."""

    def __call__(self, text: str) -> None:
        """A step starts."""

    def epochs(self, what: str, n: int, family: str) -> EpochCallback | None:
        """A refit of n epochs (or sweeps) starts; its epoch callback."""


class _Silent:
    def __call__(self, text: str) -> None:
        pass

    def epochs(self, what: str, n: int, family: str) -> None:
        return None


_SILENT = _Silent()


def finish(study: optuna.Study, data: Split, tracker: Tracker, *, device: torch.device, seed: int,
           register_as: str, reference: bool, steps: Steps | None = None) -> dict:
    """Refit, test, log and register the best trial; returns the summary (JSON-ready).
    reference: also refit the d2l configuration (trial 0) and report its test scores.
    steps: told each step as it starts (`pipeline.search.progress.Steps`; default: nothing said)."""
    steps = steps or _SILENT
    best = champion(study)
    model, test, ranks, references = _score(study, best, data, device, seed, reference, steps)
    steps("figures")
    figures, skipped = _log_figures(study, tracker)
    steps("logging the trials and scores")
    tracker.log_text(_trials_csv(study), "trials.csv")
    tracker.log_parent(  # the champion's own scores go with its model (_log_and_register)
        params={f"best.{k}": v for k, v in best.user_attrs["config"].items()},
        metrics={**_champion_valid(study, best),
                 **{f"reference.{k}_{m}": v for k, scores in references.items() for m, v in scores.items()}},
        tags={"best_trial": best.number})
    key = {"optuna.study_name": study.study_name, "optuna.best_trial": str(best.number)}
    scores = {"test_rmse": test.rmse, "test_mae": test.mae, **ranks}
    uri, version, alias = _log_and_register(model, data, tracker, scores, register_as, key, steps)
    return {
        "study": study.study_name, "best_trial": best.number, "best_params": best.user_attrs["config"],
        "best_epoch": best.user_attrs["best_epoch"], "best_valid_rmse": valid_rmse(best),
        "objective": metric_names(study), "pareto_front": [t.number for t in pareto_front(study)],
        "best_valid_ranking": {key: best.user_attrs[key] for key in VALID_RANKING if key in best.user_attrs},
        "test_rmse": test.rmse, "test_mae": test.mae, **ranks, "reference": references,
        "trials": {s.name.lower(): sum(t.state == s for t in study.trials) for s in TrialState},
        "plots": figures, "plots_skipped": skipped, "model_uri": uri,
        "registered": f"models:/{register_as}/{version}" if version else None, "alias": alias,
        "alias_uri": f"models:/{register_as}@{alias}" if alias else None,
        "compare_link": tracker.trials_view_link(study.study_name),
    }


def _champion_valid(study: optuna.Study, best) -> dict[str, float]:
    """The champion's valid scores for the parent run: `study_best_valid_rmse` where valid RMSE is
    the only objective (the study's best); otherwise `champion_<objective>` for valid RMSE and each
    objective (the champion is not the best of each)."""
    names = metric_names(study)
    if names == ["valid_rmse"]:
        return {"study_best_valid_rmse": valid_rmse(best)}
    return {"champion_valid_rmse": valid_rmse(best), **{f"champion_{n}": v for n, v in zip(names, best.values)}}


def _trials_csv(study: optuna.Study) -> str:
    """One row per trial: number, state, valid RMSE, best epoch, seconds, the valid ranking metrics
    (complete trials; `Objective.valid_ranking`), and every TrainConfig field as trained (trial 0's
    too: the reference configuration is not Optuna's to suggest)."""
    import pandas as pd

    return pd.DataFrame([{
        "number": t.number, "state": t.state.name, "valid_rmse": valid_rmse(t), "best_epoch": t.user_attrs.get("best_epoch"),
        **{key: t.user_attrs.get(key) for key in VALID_RANKING},
        "seconds": t.duration.total_seconds() if t.duration else None, **t.user_attrs.get("config", {}),
    } for t in study.trials]).to_csv(index=False)


def _score(study: optuna.Study, best, data: Split, device: torch.device, seed: int, reference: bool, steps: Steps):
    """The champion `best` refit and tested, and the references' test scores: (model, Metrics, ranking
    metrics, {name: scores})."""
    fit_rows, test_rows = data.part("train+valid"), data.part("test")  # encoded once, used thrice
    test_on_device = test_rows.to(device)

    def refit_and_test(config: dict, epochs: int, name: str) -> tuple:
        config = TrainConfig(**config)
        chains = refit_chains(config)
        shown = steps.epochs(f"refit {name}" + (f", {chains} chains" if chains > 1 else ""),
                             refit_epochs(config, epochs) * chains, config.family)
        counted = itertools.count(1)  # the chains' sweeps one after the other
        callback = shown and (lambda epoch, *scores: shown(next(counted), *scores))
        result = refit(fit_rows, config, epochs, seed=seed, device=device, features=data.features, chains=chains,
                       callback=callback, **data.dims)
        steps(f"scoring {name} on test")
        return result.model, evaluate(result.model, test_on_device)

    sets = ranking_sets(fit_rows, test_rows, data.n_users, data.n_items)  # once, for every model ranked below

    def ranked(model) -> dict:
        return ranking_metrics(model, fit_rows, test_rows, sets=sets)

    model, test = refit_and_test(best.user_attrs["config"], best.user_attrs["best_epoch"], f"trial {best.number}")
    steps(f"ranking metrics of trial {best.number}")
    ranks = ranked(model)
    steps("the baselines: biases only, popularity")
    scores = {k: _scores(m) for k, m in baselines(fit_rows, test_rows, **data.dims).items()}
    scores["biases_only"].update(ranked(biases_only(fit_rows, **data.dims)))
    scores["popularity"] = ranked(popularity_model(fit_rows, **data.dims))  # ranks only: no ratings
    if reference:
        d2l = next((t for t in study.trials if t.user_attrs.get("reference") == "d2l"), None)
        epochs = d2l.user_attrs.get("best_epoch", 20) if d2l else 20
        scores = {"d2l_config": _scores(refit_and_test(TrainConfig().to_dict(), epochs, "the d2l reference")[1]),
                  **scores}
    return model, test, ranks, scores


def _scores(m: Metrics) -> dict:
    return {"test_rmse": m.rmse, "test_mae": m.mae}


def _log_figures(study: optuna.Study, tracker: Tracker) -> tuple[list[str], dict[str, str]]:
    import matplotlib.pyplot as plt

    from pipeline.plots import study_figures

    figures, skipped = study_figures(study)
    for name, figure in figures.items():
        tracker.log_figure(figure, f"plots/{name}")
        plt.close(figure)
    return sorted(figures), skipped


def _log_and_register(model, data: Split, tracker: Tracker, scores: dict, register_as: str, key: dict,
                      steps: Steps):
    """Log the model (the raw-id scorer and its files, see bundle.py) as `trial-<n>`, the parent
    run's output, with its test `scores` (logged to the parent run too), and register it, once per
    `key` (study, best trial) however often a finish is retried: (model uri, version, alias)."""
    steps("logging the model")
    seen = data.ratings.frame.iloc[np.concatenate([data.train_rows, data.valid_rows])]
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp) / "model", model, user_ids=data.user_ids, item_ids=data.item_ids, seen=seen,
                   titles=data.ratings.item_titles, dataset=data.ratings.name,
                   metadata={"split_fingerprint": data.fingerprint, "dataset": data.ratings.name},
                   features={"user": data.ratings.user_features, "item": data.ratings.item_features})
        uri = tracker.log_model(Path(tmp) / "model", key, name=f"trial-{key['optuna.best_trial']}", metrics=scores)
    steps(f"registering as {register_as}")
    version, alias = tracker.register(uri, register_as, scores["test_rmse"], data.fingerprint, key, scores)
    return uri, version, alias


def log_study_inputs(tracker: Tracker, space_path: Path, space, data: Split, cap: int, study_name: str) -> None:
    """The parent run's inputs, logged once by the process that created it: the search space, the
    resolved configuration, and the three parts as `mlflow.data` datasets (a 10,000-row preview)."""
    tracker.share_trials_view(study_name, space.searched(), space.view_order())
    tracker.log_text(space_path.read_text(), "search_space.yaml")
    tracker.log_text(json.dumps({"space": space.model_dump(), "split": data.settings, "split_summary": data.summary(),
                                 "trials_cap": cap, "study_name": study_name}, indent=2, default=str),
                     "resolved_config.json")
    ratings = data.ratings
    for part in ("train", "valid", "test"):
        rows = getattr(data, f"{part}_rows")
        tracker.log_dataset(ratings.frame.iloc[rows[:10_000]], name=f"{ratings.name}-{part}",
                            digest=f"{data.fingerprint[:16]}-{part}", source=ratings.source, context=part)
