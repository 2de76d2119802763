"""The trial loop, run here and in the `--workers N` - 1 processes beside it, all sharing the
study's cap through the storage."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import warnings

import optuna

from pipeline.search.batch import ask_batch, run_batch
from pipeline.search.interrupt import catching_sigint, deferring, raise_if_interrupted, received
from pipeline.search.options import SearchOptions
from pipeline.search.progress import Plan, Progress
from pipeline.search.session import USER_ERRORS, Session, prepare
from pipeline.search.study import attach_parent

__all__ = ["quiet_libraries", "run_trials", "run_workers"]


def quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress line reports each trial


def run_trials(session: Session, *, quiet: bool) -> int:
    """Run trials until the study's cap says stop, counting every worker's; returns how many this
    process ran. One batch of up to `session.stack` trials at a time, asked together (a batch of
    one on a CPU by default), so the cap is checked before each, and a worker that finds the
    others' running trials fill the cap waits for them where a heartbeat can still fail them
    (stale trials are failed, and retried by the storage's callback, before each batch, as
    `study.optimize` does before each trial)."""
    study, cap, shared = session.study, session.cap, session.shared
    objective = session.objective()
    progress = Progress(cap.n, cap.finished(study.get_trials(deepcopy=False)), quiet, _plan(session))
    timeout = session.options.timeout or session.space.timeout
    deadline = time.monotonic() + timeout if timeout else None
    ran = 0
    try:
        with deferring():  # Ctrl-C lands between trials or epochs, never inside a storage write
            while deadline is None or time.monotonic() < deadline:
                raise_if_interrupted()
                if shared.heartbeat:
                    with warnings.catch_warnings():  # experimental in Optuna, and what optimize calls
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.storages.fail_stale_trials(study)
                step = cap.next_step(study.get_trials(deepcopy=False), shared.heartbeat)
                if step == "stop":
                    break
                if step == "wait":
                    time.sleep(1.0)
                    continue
                batch = ask_batch(shared, cap, session.stack)  # trained in stacks where they can be
                run_batch(shared, objective, batch, [progress], watch=progress)
                ran += len(batch)
    finally:
        progress.close()
    return ran


def _plan(session: Session) -> Plan:
    """The trials to come, for the ETA: the space's families (its `family` parameter's choices or
    fixed value; mf without one) and epochs, and the processes that share them."""
    spec = session.space.params.get("family")
    families = getattr(spec, "choices", None) or [getattr(spec, "value", "mf")]
    return Plan(tuple(str(f) for f in families), session.space.epochs, session.options.workers)


def run_workers(session: Session) -> int:
    """Run the trial loop here and, for `--workers N`, in N - 1 more processes, each with its own
    copy of the data on its device. Returns 0, or the first failing worker's exit code (130 for
    Ctrl-C)."""
    context = multiprocessing.get_context("spawn")  # no forked torch/MLflow state
    helpers = [context.Process(target=_worker, args=(session.options,), name=f"worker-{i}")
               for i in range(1, session.options.workers)]
    for w in helpers:
        w.start()  # their start-up (imports, data) overlaps with this process's first trials
    try:
        run_trials(session, quiet=session.options.quiet)
    except KeyboardInterrupt:
        # Ctrl-C reached the whole process group; a SIGTERM only this process: pass it on.
        for w in helpers:
            if signal.SIGTERM in received() and w.is_alive():
                os.kill(w.pid, signal.SIGTERM)
        raise
    finally:  # let the helpers close their trials
        for w in helpers:
            w.join()
    codes = [w.exitcode for w in helpers]
    return next((130 if c in (130, -2) else c for c in codes if c), 0)


def _worker(options: SearchOptions) -> None:
    """One helper process: the trial loop only; the parent run exists and the caller finishes."""
    quiet_libraries()
    try:
        with catching_sigint():
            session = prepare(options, tracker_wait=60.0)  # the study is under way: ride out a short outage
            attach_parent(session.shared, session.tracker, {})
            run_trials(session, quiet=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except USER_ERRORS as exc:  # e.g. the tracking server went away: one line, not a traceback
        print(f"error: worker {os.getpid()}: {exc}", file=sys.stderr)
        sys.exit(1)
