"""Once-only steps of a shared study (init, the MLflow parent run, the finish, a dead trial's retry)
as leases that any worker or rerun can take over, and that leave nothing behind but the user's study.

`Lease(storage, study, what, grace).once(work, done)` returns `done()`'s value once some process
has run `work()` to its end. `work` must be idempotent (safe to redo after a partial run) and
`done` monotone (once not None, never None again): exactly once comes from idempotence, the lease
only keeps two live processes from doing the work at the same time.

Primitive. Optuna's storages have no compare-and-set; the one atomic test-and-set that every backend
shares is study creation: a name is unique (a database constraint on RDB storages; the journal's
single log order, replayed the same by every reader). Attempt n of a lease is won by creating the
marker study `<study>:<what>#<n>`. Everything else lives in the user's study, as the system attr
`pipeline.lease:<what>` (the record): `{"attempt": n, "state": ..., "beat": k, "holder": host:pid}`.

States of one lease (the record; markers are the studies `<study>:<what>#<n>`):

| state          | record                       | markers       | who may take it, when                   |
|----------------|------------------------------|---------------|-----------------------------------------|
| free           | none                         | none          | anyone, at once: attempt 0              |
| held           | attempt n, "held", beating   | #0..#n        | nobody while it beats (every grace/4 s) |
| held, dead     | attempt n, "held", frozen    | #0..#n        | any waiter or rerun, after `grace` s    |
|                |                              |               | without a change: attempt n+1           |
| released       | attempt n, "released"        | #0..#n        | anyone, at once: attempt n+1 (the       |
|                |                              |               | holder's work raised, or Ctrl-C)        |
| done           | attempt n, "done"            | none          | nobody: `done()` is not None; callers   |
|                |                              |               | only read it                            |

Afterwards (done): no marker study is left; the record stays as a system attr of the user's study.
A holder killed after its work but before it wrote "done" leaves its markers until the next
caller of the same step sees `done()` and sweeps them (every start calls init's lease, looks at
the parent's and at retries left unfinished); one killed after writing "done" leaves them until
the next start of any worker (`sweep_done`, when the study is opened).

Safety. (1) Study names are unique, so at most one process wins each attempt n. (2) A marker is
deleted only by a process that has seen `done()` not None, and a winner calls `done()` again before
working; so before the step is done no attempt can be won twice, and after it a winner does nothing.
(3) Attempt n+1 is tried only once the record of attempt n says released, or has not changed for
`grace` seconds (each waiter's own monotonic clock, no clock sync): the assumption of every lease,
that a holder that cannot write for `grace` s (its beat is grace/4) is dead. A waiter that lost a
claim waits for the winner's record before trying again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

__all__ = ["Lease", "leases", "sweep_done"]

_PREFIX = "pipeline.lease:"  # a step's record: the study's system attr _PREFIX + what


@dataclass(frozen=True)
class Lease:
    """The lease on one once-only step `what` of study `study_name` in `storage`."""

    storage: optuna.storages.BaseStorage
    study_name: str
    what: str
    grace: float
    """Seconds without a beat after which the holder is taken for dead."""

    @property
    def key(self) -> str:
        return _PREFIX + self.what

    def marker(self, attempt: int) -> str:
        return f"{self.study_name}:{self.what}#{attempt}"

    @functools.cached_property
    def _study_id(self) -> int:
        return self.storage.get_study_id_from_name(self.study_name)

    def record(self) -> dict[str, Any] | None:
        return self.storage.get_study_system_attrs(self._study_id).get(self.key)

    def once(self, work: Callable[[], object], done: Callable[[], Any]) -> Any:
        """`done()`'s value, once some process has run `work()` to its end: this one if the lease
        is free, released, or its holder stopped beating for `grace` s (see the module's table)."""
        attempt, seen, since = 0, None, time.monotonic()
        while (value := done()) is None:
            record = self.record()
            if record != seen:  # the holder is alive, or was replaced: watch it afresh
                seen, since = record, time.monotonic()
                attempt = max(attempt, record["attempt"] + 1) if record else attempt
            # free: nobody claimed yet, or the attempt before ours ended (not a claim someone just won)
            free = attempt == 0 if seen is None else seen["state"] != "held" and seen["attempt"] == attempt - 1
            if free or time.monotonic() - since > self.grace:
                if self._claim(attempt):
                    self._hold(attempt, work, done)
                    continue
                attempt, since = attempt + 1, time.monotonic()  # someone else won it: give them time
            time.sleep(min(0.5, self.grace / 4))
        self._sweep(attempt)
        return value

    def _claim(self, attempt: int) -> bool:
        try:
            self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], self.marker(attempt))
            return True
        except optuna.exceptions.DuplicatedStudyError:
            return False
        except KeyError:  # created, then swept by a process that saw the step done (RDB's read-back)
            return False

    def _hold(self, attempt: int, work: Callable[[], object], done: Callable[[], Any]) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(attempt, stop), name=f"lease-{self.what}", daemon=True)
        thread.start()
        released = False
        try:
            if done() is None:  # a claim won after the step was done (a slow waiter) redoes nothing
                work()
        except BaseException:
            released = True
            raise
        finally:
            stop.set()
            thread.join()
            if released:  # let the next waiter take over now rather than after the grace period
                with contextlib.suppress(Exception):
                    self._write({"attempt": attempt, "state": "released"})

    def _beat(self, attempt: int, stop: threading.Event) -> None:
        holder, n = f"{socket.gethostname()}:{os.getpid()}", 0
        with contextlib.suppress(Exception):  # a storage gone away: the lease lapses, as it should
            while not stop.is_set():
                self._write({"attempt": attempt, "state": "held", "beat": n, "holder": holder})
                n += 1
                stop.wait(self.grace / 4)

    def _write(self, record: dict[str, Any]) -> None:
        self.storage.set_study_system_attr(self._study_id, self.key, record)

    def sweep_if(self, done: Callable[[], Any]) -> None:
        """Delete the step's markers if `done()` says the step is done (it never runs the work)."""
        if done() is not None:
            self._sweep(0)

    def _sweep(self, attempt: int) -> None:
        """The step is done: say so in the record, then delete every marker it may have left
        (attempts 0 to the highest seen, and one more: a claim whose holder died before its first
        beat). The record first: `sweep_done` finishes a sweep that a kill cut short."""
        record = self.record()
        top = max(attempt, record["attempt"] if record else 0)
        if record is None or record != {"attempt": top, "state": "done"}:
            self._write({"attempt": top, "state": "done"})
        self._delete_markers(top + 1)

    def _delete_markers(self, top: int) -> None:
        for n in range(top + 1):
            with contextlib.suppress(KeyError):  # never made, or another process swept it first
                self.storage.delete_study(self.storage.get_study_id_from_name(self.marker(n)))


def leases(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, dict[str, Any]]:
    """Every once-only step of `study_name` that was ever claimed: its name -> its record."""
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study_name))
    return {key[len(_PREFIX):]: record for key, record in attrs.items() if key.startswith(_PREFIX)}


def sweep_done(storage: optuna.storages.BaseStorage, study_name: str) -> None:
    """Delete the markers of every step of `study_name` whose record says done (a process killed
    between writing "done" and deleting them leaves them; nobody may call that step again)."""
    for what, record in leases(storage, study_name).items():
        if record.get("state") == "done":
            Lease(storage, study_name, what, grace=1.0)._delete_markers(record["attempt"] + 1)
