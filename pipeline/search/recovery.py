"""Recovery from interrupted and dead workers: who they were (host, pid, start time), their
trials re-queued once (a lease per trial; a dead one's failed first where no heartbeat does it),
and the MLflow runs they left RUNNING closed."""

from __future__ import annotations

import os
import socket

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.search.study import INTERRUPTED_ATTR, Cap, SharedStudy, retried
from pipeline.tracking import Tracker

__all__ = ["CloseStaleRuns", "close_orphan_runs", "retry_lost_trials", "this_process"]


def this_process() -> str:
    """host:pid:start of this process (start: its start time since boot where /proc has it, so a
    recycled pid is not mistaken for it). Recorded on each trial as user attr `worker`."""
    return f"{socket.gethostname()}:{os.getpid()}:{_started(os.getpid())}"


def _started(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), "-" where /proc is missing but
    the process exists, None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return "-"
    except ProcessLookupError:
        return None
    except PermissionError:  # exists, another user's
        return "-"


def _gone(worker: str | None) -> bool:
    """Whether the process `worker` (see this_process) is known to be dead: only a process of this
    machine can be checked."""
    if worker is None:
        return False
    host, pid, started = worker.rsplit(":", 2)
    return host == socket.gethostname() and _started(int(pid)) != started


def retry_lost_trials(shared: SharedStudy, cap: Cap) -> list[int]:
    """Enqueue again, with the same parameters, the trials the study lost: those interrupted
    (Ctrl-C, SIGTERM) and, where no heartbeat does it (CloseStaleRuns), those a process of this
    machine left RUNNING when it died (SIGKILL, a crash: failed first). So a rerun reaches the cap
    with trials that ran to their end, and trial 0 is still the d2l reference. Interrupted trials
    only while the cap has room (other workers may have filled it). Once per trial, whoever else
    finds it (a lease). Returns their numbers."""
    trials = shared.study.get_trials(deepcopy=False)
    done, unfinished = retried(trials), set(shared.unfinished("retry-"))
    room = cap.n - sum(t.state in Cap.HOLDERS for t in trials)
    lost = []
    for trial in trials:
        if trial.number in done:
            continue
        if trial.state == TrialState.FAIL:
            # interrupted, or failed by a retry that was cut short before its enqueue
            if f"retry-{trial.number}" not in unfinished and not (trial.user_attrs.get(INTERRUPTED_ATTR) and room > 0):
                continue
        elif trial.state != TrialState.RUNNING or shared.heartbeat or not _gone(trial.user_attrs.get("worker")):
            continue
        room -= trial.state == TrialState.FAIL
        shared.once(f"retry-{trial.number}", lambda t=trial: _retry(shared, t),
                    lambda n=trial.number: _retry_of(shared.study, n))
        lost.append(trial.number)
    return lost


def _retry(shared: SharedStudy, trial: FrozenTrial) -> None:
    """Fail `trial` if it is still RUNNING (its worker died) and enqueue its parameters again."""
    storage = shared.storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(shared.name),
                                                               trial.number)
    if storage.get_trial(trial_id).state == TrialState.RUNNING:
        storage.set_trial_user_attr(trial_id, "fail_reason", f"its worker {trial.user_attrs['worker']} died")
        shared.study.tell(trial.number, state=TrialState.FAIL)
    kept = {k: v for k, v in trial.user_attrs.items() if k == "reference"}
    shared.study.enqueue_trial(trial.params, user_attrs={**kept, "retry_of": trial.number})


def _retry_of(study: optuna.Study, number: int) -> int | None:
    """The trial that retries trial `number`, if one was enqueued."""
    trials = study.get_trials(deepcopy=False)
    return next((t.number for t in trials if t.user_attrs.get("retry_of") == number), None)


def close_orphan_runs(study: optuna.Study, tracker: Tracker) -> int:
    """Close child runs left RUNNING by a trial that is over (a worker killed or interrupted at a
    bad moment); returns how many. Runs of trials still running elsewhere are left alone."""
    running = tracker.running_children()  # first: a trial asked after this read is not in it
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    closed = 0
    for run in running:
        number = int(run.data.tags.get("optuna.trial_number", -1))
        if states.get(number, TrialState.RUNNING) not in (TrialState.RUNNING, TrialState.WAITING):
            tracker.fail_run(run.info.run_id, f"trial {number} ended without closing its run")
            closed += 1
    return closed


class CloseStaleRuns:
    """Heartbeat callback: a trial whose worker died is failed by Optuna and retried
    (RetryHeartbeatStaleTrialCallback); its MLflow child run, left RUNNING, is closed as FAILED."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            self.tracker.fail_run(run_id, f"worker died: no heartbeat for trial {trial.number}; retried")
