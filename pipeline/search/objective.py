"""One trial: its config, its MLflow child run, its training (reported per epoch and prunable when
the objective is valid RMSE alone), its objective values, and
the one rule (`ending`) that maps how it ended to its Optuna state and its run's status.

Trials are asked, trained and told by `pipeline.search.batch` (ask/tell, the one way a trial
runs); this module touches a trial only through the `optuna.Trial` it is given."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from pipeline.ranking import ranking_metrics, ranking_sets
from pipeline.search.interrupt import raise_if_interrupted
from pipeline.search.study import INTERRUPTED_ATTR, Cap
from pipeline.space import SearchSpace, suggest
from pipeline.split import Interactions
from pipeline.tracking import Tracker, TrackingError, TrialRun
from pipeline.training import FitResult, TrainConfig, TrainingDiverged, fit_stack
from pipeline.training.driver import EndCallback, EpochCallback

__all__ = ["NO_RUN", "Ending", "Objective", "OverCap", "Watch", "ending", "reporter", "trial_seed", "watched"]

Watch = Callable[[int, int, float], None]  # (trial number, epoch, valid RMSE): what a progress display is told


class OverCap(RuntimeError):
    """Another worker took the study's last slot between our check and our trial's start."""


class NoObjectiveValue(RuntimeError):
    """A trained trial's objective could not be measured (its ranking failed, e.g. out of memory)."""


# A trial that fails for one of these is recorded FAIL with its reason and the study goes on;
# anything else (a bug, Ctrl-C) stops the worker, after every trial of its batch is closed.
EXPECTED_FAILURES = (TrainingDiverged, TrackingError, OverCap, NoObjectiveValue)
NOTE = "mlflow.note.content"  # the run's description in `mlflow ui`
INTERRUPTED = "Interrupted (Ctrl-C or SIGTERM); rerun the search to resume"


def trial_seed(study_seed: int, trial_number: int) -> int:
    return (study_seed * 1_000_003 + trial_number) % 2**31


@dataclass(frozen=True)
class Ending:
    """How a trial ended, as Optuna and MLflow record it.

    state: told to Optuna. status: the MLflow run's. description: the run's in `mlflow ui`.
    reason: why it failed (user attr and run tag `fail_reason`), None unless FAIL.
    fatal: a bug or an interrupt, raised once every trial of the batch is told.
    interrupted: Ctrl-C or SIGTERM, not the trial's fault: the next start runs it again (user
    attr `interrupted`; see recovery.retry_lost_trials) and it never counts as the study's failure."""

    state: TrialState
    status: str
    description: str = ""
    reason: str | None = None
    fatal: bool = False
    interrupted: bool = False

    def tags(self) -> dict[str, str]:
        tags = {"optuna.state": self.state.name}
        if self.reason is not None:
            tags["fail_reason"] = self.reason
        if self.description:
            tags[NOTE] = self.description
        return tags


def ending(outcome: BaseException | None) -> Ending:
    """The one mapping from how a trial ended (None: it completed) to what is recorded:
    complete -> COMPLETE, FINISHED; pruned -> PRUNED, FINISHED too (stopping early is the pruner
    working, not a fault); an expected failure (diverged, tracking, over the cap) -> FAIL, FAILED,
    and the study goes on; Ctrl-C or SIGTERM -> FAIL, KILLED; anything else (a bug) -> FAIL,
    FAILED. The last two are fatal: they stop the worker. So red in `mlflow ui` means something
    went wrong, and an interrupted trial is not the study's failure (a rerun runs it again)."""
    if outcome is None:
        return Ending(TrialState.COMPLETE, "FINISHED")
    if isinstance(outcome, optuna.TrialPruned):
        return Ending(TrialState.PRUNED, "FINISHED", f"Pruned: {outcome}")
    if isinstance(outcome, EXPECTED_FAILURES):
        return Ending(TrialState.FAIL, "FAILED", f"Failed: {outcome}", str(outcome))
    reason = repr(outcome)[:500]
    if isinstance(outcome, KeyboardInterrupt):
        return Ending(TrialState.FAIL, "KILLED", INTERRUPTED, reason, fatal=True, interrupted=True)
    return Ending(TrialState.FAIL, "FAILED", f"Failed: {reason}", reason, fatal=True)


class _NoRun:
    """Stands in for a TrialRun when tracking is off (benchmarks, unit tests) or not yet started."""

    run_id = None

    def epoch(self, epoch: int, **values: float) -> None:
        pass

    def log(self, **values: float) -> None:
        pass

    def end(self, status: str, tags=None) -> None:
        pass


NO_RUN = _NoRun()


class Objective:
    """Built once per process with the data on the device; a trial goes `begin` -> `fit` (or a
    stack of trials, in batch) -> `close`.

    train, valid: encoded rows (moved to `device` here, once). dims: `Split.dims`; features:
    `Split.features` (for trials whose config has `features`).
    cap: the study-wide cap (None: no cap check at the trial's start)."""

    def __init__(self, space: SearchSpace, train: Interactions, valid: Interactions, dims: dict, *,
                 device: torch.device, seed: int, tracker: Tracker | None, study_name: str,
                 cap: Cap | None = None, features: dict | None = None) -> None:
        self.space, self.train, self.valid, self.dims = space, train.to(device), valid.to(device), dims
        self.features = features
        self.device, self.seed, self.tracker, self.study_name, self.cap = device, seed, tracker, study_name, cap
        self._ranking_sets = None  # `ranking_sets` of train and valid, at the first complete trial

    def config(self, trial: optuna.Trial) -> TrainConfig:
        if trial.user_attrs.get("reference") == "d2l":
            return TrainConfig()
        return suggest(trial, self.space)

    def begin(self, trial: optuna.Trial) -> tuple[TrainConfig, TrialRun | _NoRun]:
        """Check the cap, draw the trial's config, start its run."""
        if self.cap and not self.cap.admits(trial.number, trial.study.get_trials(deepcopy=False)):
            raise OverCap("over the study's cap: another worker took the last slot")
        config = self.config(trial)
        trial.set_user_attr("config", config.to_dict())
        if self.tracker is None:
            return config, NO_RUN
        params = {**config.used(), "trial_number": trial.number}  # what its family trains with, as trained
        run = self.tracker.start_trial(trial.number, params, self.study_name)
        try:
            trial.set_user_attr("mlflow_run_id", run.run_id)
        except BaseException as exc:  # the storage failed (or Ctrl-C): the run must not stay RUNNING
            end = ending(exc)
            run.end(end.status, tags=end.tags())
            raise
        return config, run

    def fit(self, members: list[tuple[optuna.Trial, TrainConfig, TrialRun | _NoRun]], on_end: EndCallback,
            on_epoch: Watch | None = None) -> None:
        """Train the members' models together (configs of one `stack_key`, or one member alone), each
        logged epoch by epoch (and reported and prunable: `SearchSpace.prunes`); `on_end(k, outcome)` as soon as member k ends (its
        result or the exception that ended it), so Ctrl-C later in the stack loses only the others.
        on_epoch(trial number, epoch, valid RMSE): told each member's epoch (the progress line)."""
        fit_stack(self.train, [config for _, config, _ in members],
                  [trial_seed(self.seed, trial.number) for trial, _, _ in members], valid=self.valid,
                  device=self.device, callbacks=[watched(reporter(trial, run, self.space.prunes()), trial.number,
                                                         on_epoch) for trial, _, run in members],
                  on_end=on_end, features=self.features, **self.dims)

    def record(self, trial: optuna.Trial, run: TrialRun | _NoRun, result: FitResult) -> list[float]:
        """Log a trained trial's outcome; returns its objective values (the space's `objective`:
        the best valid RMSE by default). Its ranking metrics too (`valid_ranking`), as user attrs
        and final metrics of its run. Raises NoObjectiveValue when an objective's ranking failed."""
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("valid_rmse", result.best_valid_rmse)
        try:
            ranks = self.valid_ranking(result)
        except (RuntimeError, ValueError) as exc:  # e.g. out of device memory: a side metric fails no trial
            warnings.warn(f"trial {trial.number}: no ranking metrics on valid ({type(exc).__name__}: {exc})",
                          stacklevel=2)
            ranks = {}
        for key, value in ranks.items():
            trial.set_user_attr(key, value)
        run.log(best_valid_rmse=result.best_valid_rmse, best_epoch=result.best_epoch,
                epochs_run=len(result.history), train_seconds=result.train_seconds,
                examples_per_second=result.examples_per_second, **ranks)
        scores = {"valid_rmse": result.best_valid_rmse, **ranks}
        missing = [name for name in self.space.metric_names() if name not in scores]
        if missing:
            raise NoObjectiveValue(f"no {', '.join(missing)} (its ranking failed): the objective has no value")
        return [scores[name] for name in self.space.metric_names()]

    def valid_ranking(self, result: FitResult) -> dict[str, float]:
        """{valid_ndcg_at_10, valid_recall_at_10, valid_map_at_10} of the trial's model (best epoch):
        each user's items not in train ranked, valid rows rated >= 4 relevant (`ranking_metrics`, as
        the champion is scored on test). Every user, no sampling: ~0.1 s on ml-100k on one CPU core."""
        if self._ranking_sets is None:  # the split's sets, once per study: Python loops over every row
            self._ranking_sets = ranking_sets(self.train, self.valid, result.model.n_users, result.model.n_items)
        scores = ranking_metrics(result.model, self.train, self.valid, sets=self._ranking_sets)
        return {f"valid_{k}": v for k, v in scores.items()}

    def close(self, trial: optuna.Trial, run: TrialRun | _NoRun,
              outcome: FitResult | BaseException) -> tuple[Ending, list[float] | None]:
        """End the trial's run once, with the status `ending` gives its outcome (a result that
        cannot be recorded or measured fails the trial); returns the ending and the values to tell."""
        if isinstance(outcome, FitResult):
            try:
                values = self.record(trial, run, outcome)
                run.end("FINISHED", tags=ending(None).tags())
                return ending(None), values
            except (TrackingError, NoObjectiveValue) as exc:  # trained, but not recorded: a failure
                outcome = exc
        end = ending(outcome)
        if end.reason is not None:
            trial.set_user_attr("fail_reason", end.reason)
        if end.interrupted:
            trial.set_user_attr(INTERRUPTED_ATTR, True)
        try:  # a tracking error while closing must not hide how the trial ended
            run.end(end.status, tags=end.tags())
        except TrackingError as closing:
            print(f"warning: could not close MLflow run {run.run_id}: {closing}", file=sys.stderr)
        return end, None


def reporter(trial: optuna.Trial, run: TrialRun | _NoRun, prunes: bool = True):
    """The epoch callback: log the curve, report to Optuna, prune (a pruned trial's run still gets
    its best valid RMSE so far, so it sorts among the others in `mlflow ui`). prunes: False when
    the objective is not valid RMSE (`SearchSpace.prunes`): nothing is reported, only logged."""
    best = (math.inf, 0)

    def on_epoch(epoch: int, train_mse: float, valid_rmse: float) -> None:
        nonlocal best
        raise_if_interrupted()
        run.epoch(epoch, train_mse=train_mse, valid_rmse=valid_rmse)
        best = min(best, (valid_rmse, epoch))
        if not prunes:
            return
        trial.report(valid_rmse, epoch)
        if trial.should_prune():
            run.log(best_valid_rmse=best[0], best_epoch=best[1], epochs_run=epoch)
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: valid RMSE {valid_rmse:.4f}")

    return on_epoch


def watched(report: EpochCallback, number: int, on_epoch: Watch | None) -> EpochCallback:
    """Trial `number`'s epoch callback `report`, telling `on_epoch` first (so the epoch a trial is
    pruned or interrupted at is shown too); `report` itself where nothing watches."""
    if on_epoch is None:
        return report

    def telling(epoch: int, train_mse: float, valid_rmse: float):
        on_epoch(number, epoch, valid_rmse)
        return report(epoch, train_mse, valid_rmse)

    return telling
