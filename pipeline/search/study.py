"""The shared study: Optuna storage, the study and its once-only steps (leases, see
pipeline.search.lease: init, the parent run, a dead trial's retry; cli.py's finish), the trial cap,
and the MLflow parent run every worker attaches to (with the sweeps that close runs dead workers left).

Only Optuna's public API is used: the leases go through the storage this module opened (not the
study's private `_storage`), and the heartbeat is read from that same object.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.search.journal import open_journal
from pipeline.search.lease import Lease, leases, sweep_done
from pipeline.search.options import SearchError, SearchOptions
from pipeline.space import SearchSpace
from pipeline.split import Split
from pipeline.tracking import Tracker
from pipeline.urls import masked

__all__ = ["INTERRUPTED_ATTR", "Cap", "SharedStudy", "attach_parent", "check_storage", "failures", "open_storage",
           "open_study", "retried"]

PARENT_ATTR = "mlflow_parent_run_id"
INTERRUPTED_ATTR = "interrupted"  # user attr of a trial ended by Ctrl-C or SIGTERM (objective.ending)


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
        return open_journal(_journal_path(url))
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
    if path.is_dir():
        raise SearchError(f"--storage {url}: a folder; expected a journal file (e.g. {path / 'optuna.journal'}) "
                          "or a database URL")
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


_WHAT = {"space_digest": "space", "split_fingerprint": "split", "features_digest": "set of side features"}


def open_study(storage, name: str, space: SearchSpace, data: Split, seed: int,
               grace: float = SearchOptions.grace) -> SharedStudy:
    """Create or resume `name`; refuse it if it was made for another search space or split.
    grace: seconds after which a silent holder of a once-only step is replaced."""
    study = optuna.create_study(storage=storage, study_name=name, directions=space.directions(), load_if_exists=True,
                                sampler=space.make_sampler(seed), pruner=space.make_pruner())
    shared = SharedStudy(study, storage, grace)
    expected = {"space_digest": space.digest(), "split_fingerprint": data.fingerprint,
                "features_digest": data.features_digest}
    attrs = study.user_attrs
    for key, value in expected.items():
        if key in attrs and attrs[key] != value:
            raise SearchError(
                f"study {name!r} was created for another {_WHAT[key]} ({key} {attrs[key][:12]}…, "
                f"this run's {value[:12]}…): pass a new --study-name, or the original search space and data")

    def init() -> None:
        trials = study.get_trials(deepcopy=False)
        if space.reference and not any(t.user_attrs.get("reference") == "d2l" for t in trials):
            # trial 0: the d2l tutorial's configuration, the study's reference point
            study.enqueue_trial({}, user_attrs={"reference": "d2l"})
        for key, value in expected.items():
            study.set_user_attr(key, value)
        with warnings.catch_warnings():  # experimental in Optuna: names the objective in dashboards, dataframes
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(space.metric_names())

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
        """"stop" (cap reached, or a slot's worth of trials failed by their own fault), "wait"
        (running trials fill it and a heartbeat may yet fail a dead one), or "run" one more trial.
        Trials interrupted or retried (see `failures`) are not failures: a rerun reaches the cap."""
        states = Counter(t.state for t in trials)
        finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
        if finished >= self.n or failures(trials) >= self.n:
            return "stop"
        if finished + states[TrialState.RUNNING] >= self.n and not states[TrialState.WAITING]:
            # Without a heartbeat nobody can fail a dead worker's trial: waiting could be forever.
            return "wait" if heartbeat else "stop"
        return "run"

    def finished(self, trials: list[FrozenTrial]) -> int:
        return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def retried(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of trials that another trial retries (ours: user attr `retry_of`; Optuna's
    heartbeat retry: system attr `retry_history`, every trial of a chain of retries)."""
    ours = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return ours.union(*(t.system_attrs.get("retry_history", ()) for t in trials))


def failures(trials: list[FrozenTrial]) -> int:
    """FAIL trials that failed by their own fault: not interrupted (Ctrl-C, SIGTERM), not retried
    (a dead worker's)."""
    again = retried(trials)
    return sum(t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR) and t.number not in again
               for t in trials)


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
