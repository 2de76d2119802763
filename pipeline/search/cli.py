"""`python -m pipeline.search`: an Optuna study of MF models, tracked in MLflow, the best registered.

ingest -> split -> [per trial: fit -> the objective (valid RMSE by default: reported per epoch,
prunable)] -> refit the champion
on train+valid -> test once -> log the model (pt2, raw ids in) -> register, move `champion` if it wins.
Rerunning the same command resumes the same study; another --experiment or --register-as than the
study was created with is refused (its runs stay in one experiment, its model under one name).
"""

from __future__ import annotations

import signal
import sys
from collections import Counter

from optuna.trial import TrialState

from pipeline.objectives import champion
from pipeline.search.interrupt import catching_sigint, received
from pipeline.search.finish import finish, log_study_inputs
from pipeline.search.options import SearchOptions
from pipeline.search.progress import Steps
from pipeline.search.report import print_summary, resume_line, start_line
from pipeline.search.session import USER_ERRORS, Session, prepare
from pipeline.search.recovery import close_orphan_runs, retry_lost_trials
from pipeline.search.study import attach_parent
from pipeline.search.workers import quiet_libraries, run_workers
from pipeline.tracking import TrackingError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    with catching_sigint():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    quiet_libraries()
    try:
        options = SearchOptions.parse(argv)
        session = prepare(options)
        created = attach_parent(session.shared, session.tracker, session.parent_tags())
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not options.quiet:
        print(start_line(session.shared.name, session.ratings, session.data, session.device, session.cap.n,
                         options.workers, session.tracker.tracking_uri), file=sys.stderr)
        if line := resume_line(session.study.get_trials(deepcopy=False), session.cap.n):
            print(line, file=sys.stderr)
    status, code = "FAILED", 1
    try:
        if created:
            log_study_inputs(session.tracker, session.space_path, session.space, session.data, session.cap.n,
                             session.shared.name)
        retry_lost_trials(session.shared, session.cap)
        close_orphan_runs(session.study, session.tracker)
        code = run_workers(session)
        if code:
            status = "KILLED" if code in (130, 143) else "FAILED"
            return code
        status, code = _finish_once(session)
        return code
    except KeyboardInterrupt:
        status, code = "KILLED", 128 + (received() or [signal.SIGINT])[0]  # 130 Ctrl-C, 143 SIGTERM
        print("\ninterrupted: the study is saved; rerun the same command to resume it", file=sys.stderr)
        return code
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _close_runs(session, status)


def _finish_once(session: Session) -> tuple[str, int]:
    """Refit, log and register the best trial, once per best trial across workers and reruns (a
    finish that died half-way is redone: every step of it is idempotent); print the summary.
    Returns (the parent run's status, exit code)."""
    study = session.study
    if not any(t.state == TrialState.COMPLETE for t in study.trials):
        states = Counter(t.state.name.lower() for t in study.trials)
        seen = ", ".join(f"{n} {state}" for state, n in states.items()) or "none ran"
        print(f"error: no trial completed ({seen}); see the trials' runs in MLflow", file=sys.stderr)
        return "FAILED", 1
    best = champion(study).number
    o = session.options
    steps = Steps(o.quiet)

    def run() -> None:
        study.set_user_attr("summary", finish(study, session.data, session.tracker, device=session.device,
                                              seed=o.seed, register_as=o.register_as,
                                              reference=session.space.reference, steps=steps))

    def summary():
        value = study.user_attrs.get("summary")
        return value if value is not None and value["best_trial"] == best else None

    try:
        done = session.shared.once(f"finish-{best}", run, summary)
    finally:
        steps.close()  # a terminal's redrawn line ends before the summary (or the error)
    print_summary(done, session.tracker.tracking_uri)
    return "FINISHED", 0


def _close_runs(session: Session, status: str) -> None:
    """Before the command exits: close the runs of trials that are over but whose own end failed
    (a store locked while the trial ended it; trials still running elsewhere are left alone), then
    the parent run with `status`. A failure here is a warning: the run's own error was printed."""
    try:
        close_orphan_runs(session.study, session.tracker)
    except Exception as exc:  # noqa: BLE001 - the tracking store or the study's storage, failing again
        print(f"warning: could not close the runs of ended trials (the next start will): {exc}", file=sys.stderr)
    try:
        session.tracker.close_parent(status)
    except TrackingError as exc:
        print(f"warning: could not close the parent run: {exc}", file=sys.stderr)
