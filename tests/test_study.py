"""SharedStudy.once: exactly once by idempotence, with leases that lapse when their holder dies."""

import time

import optuna
import pytest

from pipeline.search.study import SharedStudy


@pytest.fixture
def shared():
    storage = optuna.storages.InMemoryStorage()
    return SharedStudy(optuna.create_study(storage=storage, study_name="s"), storage)


def _done(shared):
    return lambda: shared.study.user_attrs.get("result")


def test_work_runs_once_and_later_callers_only_read_its_result(shared):
    calls = []

    def work():
        calls.append(1)
        shared.study.set_user_attr("result", 42)

    assert shared.once("x", work, _done(shared), grace=5) == 42
    assert shared.once("x", work, _done(shared), grace=5) == 42
    assert calls == [1]


def test_a_holder_that_fails_releases_at_once(shared):
    def fail():
        raise RuntimeError("store went away")

    with pytest.raises(RuntimeError):
        shared.once("x", fail, _done(shared), grace=30)
    start = time.monotonic()
    assert shared.once("x", lambda: shared.study.set_user_attr("result", 1), _done(shared), grace=30) == 1
    assert time.monotonic() - start < 10  # no 30 s wait: the failed holder said so


def test_a_dead_holder_is_replaced_after_the_grace_period(shared):
    assert shared.claim("x#0")  # a holder that claimed, beat once, and died
    shared.study.set_user_attr("lease:x", {"attempt": 0, "beat": 0, "released": False})
    start = time.monotonic()
    assert shared.once("x", lambda: shared.study.set_user_attr("result", 7), _done(shared), grace=0.5) == 7
    assert time.monotonic() - start >= 0.5
