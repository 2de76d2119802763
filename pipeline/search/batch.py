"""Trials asked together and trained in stacks: Optuna's ask/tell around `pipeline.stack`.

Each trial of a batch is what `Objective.__call__` makes of it (worker, cap check, config, its
own MLflow child run, per-epoch reports, pruning, the same run states); trials whose configs
share a `stack_key` train as one stack, the others one by one. Every trial is told exactly once,
also when Ctrl-C or a bug stops the batch, and its trials beat while they run, so a storage with
a heartbeat can fail and retry them if this process dies.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.search.objective import EXPECTED_FAILURES, Objective, TrialLifecycle, reporter, trial_seed
from pipeline.search.study import Cap, SharedStudy, this_process
from pipeline.training import fit_stack, stack_key
from pipeline.tracking import TrackingError
from pipeline.training import FitResult

__all__ = ["ask_batch", "run_batch"]

Callback = Callable[[optuna.Study, FrozenTrial], None]


def ask_batch(shared: SharedStudy, cap: Cap, size: int) -> list[optuna.Trial]:
    """Up to `size` new trials (queued ones first), no more than the cap's free slots (at least one:
    the caller asks only when the cap says run)."""
    trials = shared.study.get_trials(deepcopy=False)
    held = sum(t.state in Cap.HOLDERS for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)  # held already, and asked first
    asked = [shared.study.ask() for _ in range(max(1, min(size, cap.n - held + waiting)))]
    for trial in asked:  # at once: a rerun on this machine can tell if this process died with them
        trial.set_user_attr("worker", this_process())
    return asked


def run_batch(shared: SharedStudy, objective: Objective, trials: list[optuna.Trial], callbacks: list[Callback]) -> None:
    """Train and tell `trials`. Expected failures (see EXPECTED_FAILURES), pruning and divergence
    end one trial; anything else is raised once every trial of the batch is told."""
    lives = {t.number: TrialLifecycle(t, objective.tracker, objective.study_name) for t in trials}
    told: set[int] = set()
    errors: list[BaseException] = []

    def settle(trial: optuna.Trial, run, outcome: FitResult | BaseException) -> None:
        life, value = lives[trial.number], None
        if isinstance(outcome, FitResult):
            try:
                value = objective.record(trial, run, outcome)
                life.end(None)
            except TrackingError as exc:  # trained, but not recorded: a failure
                outcome, value = exc, None
        if isinstance(outcome, BaseException):
            life.end(outcome)
            if not isinstance(outcome, (optuna.TrialPruned, *EXPECTED_FAILURES)):
                errors.append(outcome)
        state = (TrialState.COMPLETE if value is not None else
                 TrialState.PRUNED if isinstance(outcome, optuna.TrialPruned) else TrialState.FAIL)
        frozen = shared.study.tell(trial, value, state=state)
        told.add(trial.number)
        for callback in callbacks:
            callback(shared.study, frozen)

    try:
        with _beating(shared, trials):
            groups: dict[object, list] = defaultdict(list)
            for trial in trials:
                try:
                    config, run = objective.begin(trial, lives[trial.number])
                except Exception as exc:  # noqa: BLE001 - over the cap, a tracking outage: this trial's end
                    settle(trial, None, exc)
                    continue
                key = stack_key(config)
                groups[key if key is not None else ("alone", trial.number)].append((trial, config, run))
            for members in groups.values():
                for (trial, _, run), outcome in zip(members, _train(objective, members)):
                    settle(trial, run, outcome)
    except BaseException as exc:  # Ctrl-C, or a storage error: close what is still open
        for trial in trials:
            if trial.number not in told:
                with contextlib.suppress(Exception):  # the storage may be what failed: keep `exc`
                    lives[trial.number].end(exc)
                    shared.study.tell(trial, state=TrialState.FAIL)
        raise
    if errors:
        raise errors[0]


def _train(objective: Objective, members: list) -> list[FitResult | Exception]:
    """One stack for several members, `fit` for one; a member's exception is its outcome."""
    o = objective
    for trial, _, run in members:
        trial.set_user_attr("stack_size", len(members))
        run.log(stack_size=len(members))
    if len(members) > 1:
        return fit_stack(o.train, [c for _, c, _ in members], [trial_seed(o.seed, t.number) for t, _, _ in members],
                         valid=o.valid, device=o.device, callbacks=[reporter(t, run) for t, _, run in members],
                         **o.dims)
    try:
        return [o.fit(*members[0])]
    except Exception as exc:  # noqa: BLE001 - told as the trial's end by the caller
        return [exc]


@contextlib.contextmanager
def _beating(shared: SharedStudy, trials: list[optuna.Trial]) -> Iterator[None]:
    """Record the trials' heartbeats while the batch runs (what `study.optimize` does for its one
    trial), where the storage has a heartbeat."""
    if not shared.heartbeat:
        yield
        return
    storage, stop = shared.storage, threading.Event()
    study_id = storage.get_study_id_from_name(shared.name)
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials]

    def beat() -> None:
        with contextlib.suppress(Exception):  # a storage gone away: the trials go stale, as they should
            while not stop.is_set():
                for trial_id in ids:
                    storage.record_heartbeat(trial_id)
                stop.wait(storage.get_heartbeat_interval())

    thread = threading.Thread(target=beat, name="beat-trials", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
