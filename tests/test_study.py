"""Once-only steps (pipeline.search.lease): exactly once by idempotence, with leases that lapse when
their holder dies, and nothing left in the storage but the user's study."""

import threading
from types import SimpleNamespace
import time

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from pipeline.search.lease import Lease
from pipeline.search.options import SearchError, SearchOptions
from pipeline.search.study import Cap, SharedStudy


@pytest.fixture
def shared():
    storage = optuna.storages.InMemoryStorage()
    return SharedStudy(optuna.create_study(storage=storage, study_name="s"), storage, grace=30)


def _done(shared):
    return lambda: shared.study.user_attrs.get("result")


def _names(storage) -> list[str]:
    return optuna.get_all_study_names(storage)


def _dead_holder(shared, attempt: int = 0) -> Lease:
    """A holder of `attempt` that claimed, beat once, and died."""
    lease = Lease(shared.storage, shared.name, "x", grace=0.5)
    shared.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], lease.marker(attempt))
    lease._write({"attempt": attempt, "state": "held", "beat": 0, "holder": "elsewhere:1"})
    return lease


def test_work_runs_once_and_later_callers_only_read_its_result(shared):
    calls = []

    def work():
        calls.append(1)
        shared.study.set_user_attr("result", 42)

    assert shared.once("x", work, _done(shared)) == 42
    assert shared.once("x", work, _done(shared)) == 42
    assert calls == [1]
    assert _names(shared.storage) == ["s"]  # no marker study left
    assert shared.study.user_attrs == {"result": 42}  # the record is a system attr, out of the user's way


def test_a_holder_that_fails_releases_at_once(shared):
    def fail():
        raise RuntimeError("store went away")

    with pytest.raises(RuntimeError):
        shared.once("x", fail, _done(shared))
    start = time.monotonic()
    assert shared.once("x", lambda: shared.study.set_user_attr("result", 1), _done(shared)) == 1
    assert time.monotonic() - start < 10  # no 30 s wait: the failed holder said so
    assert _names(shared.storage) == ["s"]


def test_a_dead_holder_is_replaced_after_the_grace_period_and_its_marker_swept(shared):
    lease = _dead_holder(shared)
    start = time.monotonic()
    assert lease.once(lambda: shared.study.set_user_attr("result", 7), _done(shared)) == 7
    assert time.monotonic() - start >= 0.5
    assert _names(shared.storage) == ["s"]
    assert lease.record()["state"] == "done"


def test_a_holder_killed_after_its_work_is_swept_by_the_next_caller(shared):
    lease = _dead_holder(shared)
    shared.study.set_user_attr("result", 3)  # the work was done; the holder died before its sweep
    assert lease.once(lambda: pytest.fail("done: nothing to redo"), _done(shared)) == 3
    assert _names(shared.storage) == ["s"]


def test_a_claim_just_won_after_a_release_is_not_taken_over_at_once(shared):
    """Attempt 0 released, attempt 1 won by a process that has not beaten yet: a waiter waits for
    it (grace) rather than taking attempt 2 beside it."""
    lease = _dead_holder(shared, attempt=1)
    lease._write({"attempt": 0, "state": "released"})
    start = time.monotonic()
    assert lease.once(lambda: shared.study.set_user_attr("result", 5), _done(shared)) == 5
    assert time.monotonic() - start >= 0.5
    assert _names(shared.storage) == ["s"]


def test_processes_racing_on_a_journal_run_the_work_once_and_leave_only_the_study(tmp_path):
    path = str(tmp_path / "optuna.journal")
    optuna.create_study(storage=JournalStorage(JournalFileBackend(path)), study_name="s")
    calls, results = [], []

    def worker() -> None:  # each with its own storage object: its own journal worker id, as a process has
        storage = JournalStorage(JournalFileBackend(path))
        study = optuna.load_study(study_name="s", storage=storage)

        def work():
            calls.append(1)
            time.sleep(0.2)
            study.set_user_attr("result", "made")

        results.append(SharedStudy(study, storage, grace=30).once("x", work, lambda: study.user_attrs.get("result")))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["made"] * 4 and calls == [1]
    assert _names(JournalStorage(JournalFileBackend(path))) == ["s"]


def test_grace_and_heartbeat_are_options_with_defaults():
    assert (SearchOptions().grace, SearchOptions().heartbeat) == (30, 10)
    options = SearchOptions.parse(["--grace", "4", "--heartbeat", "1"])
    assert (options.grace, options.heartbeat) == (4, 1)
    with pytest.raises(SearchError, match="--grace 0"):
        SearchOptions.parse(["--grace", "0"])
    database = ["--storage", "postgresql+psycopg2://postgres@127.0.0.1/x"]
    with pytest.raises(SearchError, match="--grace 10: expected at least twice --heartbeat"):
        SearchOptions.parse([*database, "--grace", "10", "--heartbeat", "30"])
    assert SearchOptions.parse(["--grace", "1"]).grace == 1  # a journal has no heartbeat to outlast


def test_steps_cut_short_after_their_work_leave_no_marker_at_the_next_start(shared):
    """A holder killed after writing "done" (swept when the study is opened), a parent lease whose
    holder died after creating the run (swept when a worker attaches to that run)."""
    from pipeline.search.lease import sweep_done
    from pipeline.search.study import PARENT_ATTR, _sweep_parent_leases

    finished = Lease(shared.storage, shared.name, "finish-3", grace=0.5)
    shared.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], finished.marker(0))
    finished._write({"attempt": 0, "state": "done"})
    parent = Lease(shared.storage, shared.name, "mlflow-parent-after-none", grace=0.5)
    shared.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], parent.marker(0))
    parent._write({"attempt": 0, "state": "held", "beat": 0, "holder": "elsewhere:1"})
    sweep_done(shared.storage, shared.name)
    assert sorted(_names(shared.storage)) == ["s", "s:mlflow-parent-after-none#0"]  # not done: kept
    shared.study.set_user_attr(PARENT_ATTR, "run-1")
    _sweep_parent_leases(shared, "run-1")
    assert _names(shared.storage) == ["s"]


def test_a_retry_interrupted_between_its_fail_and_its_enqueue_is_finished_by_the_next_start(shared):
    from optuna.trial import TrialState

    from pipeline.search.recovery import retry_lost_trials

    trial = shared.study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    shared.study.tell(trial, state=TrialState.FAIL)  # the retry failed it, then Ctrl-C: nothing enqueued
    Lease(shared.storage, shared.name, f"retry-{trial.number}", grace=0.5)._write(
        {"attempt": 0, "state": "released"})
    assert retry_lost_trials(shared, Cap(10)) == [trial.number]
    (queued,) = shared.study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs["retry_of"] == trial.number and queued.system_attrs["fixed_params"] == trial.params
    assert retry_lost_trials(shared, Cap(10)) == [] and _names(shared.storage) == ["s"]


def test_interrupted_trials_are_queued_again_once_while_the_cap_has_room(shared):
    from optuna.trial import TrialState

    from pipeline.search.recovery import retry_lost_trials

    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    shared.study.enqueue_trial({"x": 0.5}, user_attrs={"reference": "d2l"})
    for _ in range(3):
        trial = shared.study.ask(x)
        trial.set_user_attr("interrupted", True)
        shared.study.tell(trial, state=TrialState.FAIL)
    assert retry_lost_trials(shared, Cap(2)) == [0, 1]  # room for two: the reference first
    queued = shared.study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs for t in queued] == [{"reference": "d2l", "retry_of": 0}, {"retry_of": 1}]
    assert queued[0].system_attrs["fixed_params"] == {"x": 0.5}
    assert retry_lost_trials(shared, Cap(2)) == []  # done once; the cap is full
    assert retry_lost_trials(shared, Cap(3)) == [2] and retry_lost_trials(shared, Cap(3)) == []
    assert _names(shared.storage) == ["s"]


def test_orphan_runs_are_closed_and_a_run_of_a_trial_not_yet_seen_is_left_alone(shared):
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from pipeline.search.recovery import close_orphan_runs

    for state in (TrialState.COMPLETE, TrialState.RUNNING):
        trial = shared.study.ask()
        if state == TrialState.COMPLETE:
            shared.study.tell(trial, 1.0)

    class Runs:
        failed = []

        def running_children(self):  # trial 2 is asked by another worker right after this read
            return [SimpleNamespace(info=SimpleNamespace(run_id=f"run-{n}"),
                                    data=SimpleNamespace(tags={"optuna.trial_number": str(n)})) for n in (0, 1, 2)]

        def fail_run(self, run_id, reason):
            self.failed.append(run_id)

    runs = Runs()
    assert close_orphan_runs(shared.study, runs) == 1 and runs.failed == ["run-0"]  # 1 runs, 2 is unknown yet


def test_a_new_study_names_its_objective():
    from pipeline.search.study import open_study
    from pipeline.space import load_space

    data = SimpleNamespace(fingerprint="f" * 64, features_digest="none")
    storage = optuna.storages.InMemoryStorage()
    study = open_study(storage, "named", load_space("quick"), data, seed=0).study
    assert study.metric_names == ["valid_rmse"]
    assert "value_valid_rmse" in study.trials_dataframe().columns
