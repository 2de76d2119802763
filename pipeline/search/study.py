"""The shared study: Optuna storage, the study and its once-only steps (leases, see
pipeline.search.lease: init, the parent run, a dead trial's retry; cli.py's finish), the trial cap,
and the MLflow parent run every worker attaches to (with the sweeps that close runs dead workers left).

Only Optuna's public API is used: the leases go through the storage this module opened (not the
study's private `_storage`), and the heartbeat is read from that same object.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.search.lease import Lease, leases, sweep_done
from pipeline.search.options import SearchError, SearchOptions
from pipeline.space import SearchSpace
from pipeline.split import Split
from pipeline.tracking import Tracker
from pipeline.urls import masked

__all__ = ["Cap", "CloseStaleRuns", "SharedStudy", "attach_parent", "check_storage", "close_orphan_runs",
           "open_storage", "open_study", "retry_dead_trials", "this_process"]

PARENT_ATTR = "mlflow_parent_run_id"


def check_storage(url: str, heartbeat: int = SearchOptions.heartbeat,
                  grace: int = SearchOptions.grace) -> optuna.storages.BaseStorage | None:
    """Fail early on a storage that cannot work: a database is opened (returned, to be reused); a
    journal's folder is only checked, because opening a journal creates its file."""
    if "://" in url:
        return open_storage(url, heartbeat, grace)
    _journal_path(url)
    return None


def open_storage(url: str, heartbeat: int = SearchOptions.heartbeat,
                 grace: int = SearchOptions.grace) -> optuna.storages.BaseStorage:
    """A database URL (postgresql+psycopg2://, sqlite:///...) or a journal file path (the default:
    safe for several local processes, which SQLite is not). heartbeat, grace: seconds (see
    SearchOptions), for database storages other than SQLite."""
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(_journal_path(url))))
    import sqlalchemy.exc

    kwargs = {}
    if not url.startswith("sqlite"):
        # Stale trials of dead workers are failed after the grace period (and retried: CloseStaleRuns).
        kwargs = dict(heartbeat_interval=heartbeat, grace_period=grace,
                      engine_kwargs={"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2})
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers starting together race to create the tables; the loser finds them next time.
            time.sleep(0.5 + attempt)
        except Exception as exc:  # noqa: BLE001 - driver errors share no base worth naming
            raise SearchError(f"--storage {masked(url)}: cannot open ({type(exc).__name__}: {masked(exc)})") from None
    raise SearchError(f"--storage {masked(url)}: could not create Optuna's tables (another process keeps racing)")


def _journal_path(url: str) -> Path:
    path = Path(url.removeprefix("journal:"))
    if not path.parent.is_dir():
        raise SearchError(f"--storage {url}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SearchError(f"--storage {url}: {path if path.exists() else path.parent} is not writable; "
                          "run from a writable folder or pass --storage")
    return path


@dataclass(frozen=True)
class SharedStudy:
    """A study and the storage it lives in, shared by every worker of every machine."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    grace: float = SearchOptions.grace
    """Seconds without a beat after which a once-only step's holder is taken for dead."""

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def heartbeat(self) -> bool:
        """Whether dead workers' trials are failed by a heartbeat (RDB storages with an interval)."""
        return isinstance(self.storage, optuna.storages.RDBStorage) and bool(self.storage.get_heartbeat_interval())

    def lease(self, what: str) -> Lease:
        return Lease(self.storage, self.name, what, self.grace)

    def once(self, what: str, work: Callable[[], object], done: Callable[[], Any]) -> Any:
        """`done()`'s value, once some process has run `work()` to its end (see pipeline.search.lease):
        `work` must be safe to redo after a partial run; nothing is left in the storage but this study."""
        return self.lease(what).once(work, done)

    def unfinished(self, prefix: str) -> list[str]:
        """The once-only steps named `prefix`… that were claimed and are not recorded done."""
        return [what for what, record in leases(self.storage, self.name).items()
                if what.startswith(prefix) and record.get("state") != "done"]


def open_study(storage, name: str, space: SearchSpace, data: Split, seed: int,
               grace: float = SearchOptions.grace) -> SharedStudy:
    """Create or resume `name`; refuse it if it was made for another search space or split.
    grace: seconds after which a silent holder of a once-only step is replaced."""
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True,
                                sampler=space.make_sampler(seed), pruner=space.make_pruner())
    shared = SharedStudy(study, storage, grace)
    expected = {"space_digest": space.digest(), "split_fingerprint": data.fingerprint}
    attrs = study.user_attrs
    for key, value in expected.items():
        if key in attrs and attrs[key] != value:
            raise SearchError(
                f"study {name!r} was created for another {key.split('_')[0]} ({key} {attrs[key][:12]}…, "
                f"this run's {value[:12]}…): pass a new --study-name, or the original search space and data")

    def init() -> None:
        trials = study.get_trials(deepcopy=False)
        if space.reference and not any(t.user_attrs.get("reference") == "d2l" for t in trials):
            # trial 0: the d2l tutorial's configuration, the study's reference point
            study.enqueue_trial({}, user_attrs={"reference": "d2l"})
        for key, value in expected.items():
            study.set_user_attr(key, value)

    # Once, however many workers start together; when done, this only sweeps a killed holder's marker.
    shared.once("init", init, lambda: study.user_attrs.get("split_fingerprint"))
    sweep_done(storage, name)
    return shared


@dataclass(frozen=True)
class Cap:
    """The study-wide trial cap, one rule for every worker: a trial holds a slot while it is
    complete, pruned, running or waiting (a failed trial gives its slot back), and slots go to
    the lowest trial numbers, so workers racing for the last one agree on who got it."""

    n: int

    HOLDERS = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

    def admits(self, trial_number: int, trials: list[FrozenTrial]) -> bool:
        return sum(t.number < trial_number and t.state in self.HOLDERS for t in trials) < self.n

    def next_step(self, trials: list[FrozenTrial], heartbeat: bool) -> str:
        """"stop" (cap reached, or every slot's worth of trials failed), "wait" (running trials
        fill it and a heartbeat may yet fail a dead one), or "run" one more trial."""
        states = Counter(t.state for t in trials)
        finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        if finished >= self.n or states[TrialState.FAIL] >= self.n:
            return "stop"
        if finished + states[TrialState.RUNNING] >= self.n and not states[TrialState.WAITING]:
            # Without a heartbeat nobody can fail a dead worker's trial: waiting could be forever.
            return "wait" if heartbeat else "stop"
        return "run"

    def finished(self, trials: list[FrozenTrial]) -> int:
        return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def attach_parent(shared: SharedStudy, tracker: Tracker, tags: dict[str, str]) -> bool:
    """Attach to the study's one MLflow parent run, creating it if this process wins the claim.
    Returns True when this process created it (and so logs the study's inputs)."""
    previous = shared.study.user_attrs.get(PARENT_ATTR)
    if previous is not None and tracker.reopen_parent(previous, tags):
        _sweep_parent_leases(shared, previous)
        return False
    created = []

    def create() -> None:
        shared.study.set_user_attr(PARENT_ATTR, tracker.create_parent(shared.name, tags))
        created.append(True)

    def current():
        run_id = shared.study.user_attrs.get(PARENT_ATTR)
        return run_id if run_id != previous else None

    # Keyed by the run it replaces: a tracking store that lost the old parent gets one new one.
    run_id = shared.once(f"mlflow-parent-after-{previous or 'none'}", create, current)
    if created:
        return True
    if not tracker.reopen_parent(run_id, tags):
        raise SearchError(f"MLflow parent run {run_id} of study {shared.name!r} is not in {masked(tracker.tracking_uri)}")
    return False


def _sweep_parent_leases(shared: SharedStudy, parent: str) -> None:
    """The markers of parent leases whose holder was killed after creating its run: the lease
    `mlflow-parent-after-X` is done once the parent is a run other than X."""
    prefix = "mlflow-parent-after-"
    for what in shared.unfinished(prefix):
        replaced = what[len(prefix):]
        shared.lease(what).sweep_if(lambda: parent if parent != replaced else None)


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


def _gone(worker: str) -> bool:
    """Whether the process `worker` (see this_process) is known to be dead: only a process of this
    machine can be checked."""
    host, pid, started = worker.rsplit(":", 2)
    return host == socket.gethostname() and _started(int(pid)) != started


def retry_dead_trials(shared: SharedStudy) -> list[int]:
    """Fail the trials a process of this machine left RUNNING when it died (SIGKILL, a crash) and
    enqueue each again with the same parameters, so the study still reaches its cap; returns their
    numbers. Once per dead trial, whoever else finds it (a lease). Storages with a heartbeat do this
    for every machine (CloseStaleRuns)."""
    if shared.heartbeat:
        return []
    retried, unfinished = [], set(shared.unfinished("retry-"))
    for trial in shared.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        worker = trial.user_attrs.get("worker")
        if trial.state == TrialState.FAIL:  # failed by a retry that was cut short before its enqueue
            if f"retry-{trial.number}" not in unfinished:
                continue
        elif worker is None or not _gone(worker):
            continue
        shared.once(f"retry-{trial.number}", lambda t=trial, w=worker: _retry(shared, t, w),
                    lambda n=trial.number: _retry_of(shared.study, n))
        retried.append(trial.number)
    return retried


def _retry(shared: SharedStudy, trial: FrozenTrial, worker: str) -> None:
    """Fail `trial` (unless a holder that died did already) and enqueue its parameters again."""
    storage = shared.storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(shared.name),
                                                               trial.number)
    if storage.get_trial(trial_id).state == TrialState.RUNNING:
        storage.set_trial_user_attr(trial_id, "fail_reason", f"its worker {worker} died")
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
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    closed = 0
    for run in tracker.running_children():
        number = int(run.data.tags.get("optuna.trial_number", -1))
        if states.get(number, TrialState.FAIL) not in (TrialState.RUNNING, TrialState.WAITING):
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
