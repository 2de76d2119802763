"""The one way a trial runs: Optuna's ask/tell, a batch at a time (a batch of one where nothing
stacks).

`ask_batch` asks up to K trials (queued ones first, no more than the cap's free slots) and marks
them with this process. `run_batch` begins each (`Objective.begin`: cap check, config, its own
MLflow child run), trains those whose configs share a `stack_key` as one stack (`fit_stack`) and
the others alone (`Objective.fit`), closes each run and tells each trial exactly once with the
state `objective.ending` maps its outcome to as soon as it ends (a stack's members one by one),
then calls the per-trial callbacks with the told trial, as `study.optimize` does. Ctrl-C or an error outside a trial (the storage) closes and
tells every trial still open before it propagates; a bug in one trial is raised once the whole
batch is told. One thread beats for the batch's open trials while it runs, where the storage
has a heartbeat, so a dead process's trials go stale and are failed and retried elsewhere.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.search.objective import NO_RUN, Objective, ending
from pipeline.search.recovery import this_process
from pipeline.search.study import Cap, SharedStudy
from pipeline.training import FitResult, stack_key

__all__ = ["Watching", "ask_batch", "run_batch"]

Callback = Callable[[optuna.Study, FrozenTrial], None]


class Watching(Protocol):
    """What follows the trials as they train (`pipeline.search.progress.Progress`)."""

    def begin(self, members: Sequence[tuple[int, str, int]]) -> None:
        """(trial number, family, epochs) of each trial of a stack that starts training."""

    def epoch(self, number: int, epoch: int, valid_rmse: float) -> None:
        """Trial `number` ended `epoch` with `valid_rmse`."""


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


def run_batch(shared: SharedStudy, objective: Objective, trials: list[optuna.Trial], callbacks: list[Callback],
              watch: Watching | None = None) -> None:
    """Train and tell `trials`. Pruning and expected failures (divergence, tracking, over the cap)
    end one trial; a bug is raised once every trial of the batch is told. watch: told when each
    stack starts training and each epoch of its trials (the progress line; `Progress`)."""
    runs: dict[int, object] = {}
    closed: set[int] = set()  # runs ended
    told: set[int] = set()
    fatal: list[BaseException] = []

    def settle(trial: optuna.Trial, outcome: FitResult | BaseException) -> None:
        end, values = objective.close(trial, runs.get(trial.number, NO_RUN), outcome)
        closed.add(trial.number)
        if end.fatal:
            fatal.append(outcome)
        frozen = shared.study.tell(trial, values, state=end.state)
        told.add(trial.number)
        for callback in callbacks:
            callback(shared.study, frozen)

    try:
        with _beating(shared, trials, told):
            for members in _begin(objective, trials, runs, settle):
                _train(objective, members, settle, watch)
    except BaseException as exc:  # Ctrl-C, or a storage error: close what is still open
        for trial in trials:
            if trial.number not in told:
                run = None if trial.number in closed else runs.get(trial.number, NO_RUN)
                _abandon(shared, objective, trial, run, exc)
        raise
    if fatal:
        raise fatal[0]


def _begin(objective: Objective, trials: list[optuna.Trial], runs: dict, settle) -> list[list]:
    """Begin every trial and group them by stack key, in order; a trial that cannot begin (over
    the cap, a tracking outage) is settled here."""
    groups: dict[object, list] = defaultdict(list)
    for trial in trials:
        try:
            config, runs[trial.number] = objective.begin(trial)
        except Exception as exc:  # noqa: BLE001 - this trial's end; `ending` says whether it is fatal
            settle(trial, exc)
            continue
        key = stack_key(config)
        groups[key if key is not None else ("alone", trial.number)].append((trial, config, runs[trial.number]))
    return list(groups.values())


def _train(objective: Objective, members: list, settle: Callable[[optuna.Trial, FitResult | Exception], None],
           watch: Watching | None) -> None:
    """Record each member's stack size, then train them as one stack (a lone member: a stack of
    one), settling each member as soon as it ends."""
    for trial, _, run in members:
        trial.set_user_attr("stack_size", len(members))
        run.log(stack_size=len(members))
    if watch is not None:
        watch.begin([(trial.number, config.family, config.epochs) for trial, config, _ in members])
    objective.fit(members, lambda k, outcome: settle(members[k][0], outcome), watch.epoch if watch else None)


def _abandon(shared: SharedStudy, objective: Objective, trial: optuna.Trial, run, exc: BaseException) -> None:
    """Close (unless its run is ended already: run None) and tell a trial the batch could not
    finish; the storage may be what failed, so each step is tried on its own and `exc` stays the
    error that propagates."""
    if run is not None:
        with contextlib.suppress(Exception):
            objective.close(trial, run, exc)
    with contextlib.suppress(Exception):
        shared.study.tell(trial, state=ending(exc).state)


@contextlib.contextmanager
def _beating(shared: SharedStudy, trials: list[optuna.Trial], told: set[int]) -> Iterator[None]:
    """Record the heartbeat of the trials not yet told, every heartbeat interval while the batch
    runs (one thread per batch: what `study.optimize` does per trial), where the storage has one."""
    if not shared.heartbeat:
        yield
        return
    storage, stop = shared.storage, threading.Event()
    study_id = storage.get_study_id_from_name(shared.name)
    ids = {t.number: storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in trials}

    def beat() -> None:
        with contextlib.suppress(Exception):  # a storage gone away: the trials go stale, as they should
            while not stop.is_set():
                for number, trial_id in ids.items():
                    if number not in told:
                        storage.record_heartbeat(trial_id)
                stop.wait(storage.get_heartbeat_interval())

    thread = threading.Thread(target=beat, name="beat-trials", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
