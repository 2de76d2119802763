"""ask/tell, the one way a trial runs (pipeline.search.batch), on in-memory studies with a recording
tracker: the cap's free slots, every trial told exactly once whatever its end (complete, pruned,
diverged, a bug, Ctrl-C, a storage error), callbacks after each tell, one heartbeat thread."""

import threading
import time
from collections import Counter

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from conftest import interrupt_at
from pipeline.search.batch import ask_batch, run_batch
from pipeline.search.objective import Objective
from pipeline.search.recovery import this_process
from pipeline.search.study import Cap
from pipeline.space import load_space
from pipeline.training import TrainConfig, TrainingDiverged

C, P, R, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL


def sgd(batch_size: int) -> TrainConfig:
    """A small, quick model; configs with one batch size share a stack."""
    return TrainConfig(optimizer="sparse_sgd", weight_decay=0.0, init_std=0.1, epochs=3, factors=4, lr=0.02,
                       l2=0.05, batch_size=batch_size)


class Run:
    def __init__(self, number: int) -> None:
        self.run_id, self.ended, self.final, self.epochs = f"run-{number}", [], {}, 0

    def epoch(self, epoch, **values):
        self.epochs += 1

    def log(self, **values):
        self.final.update(values)

    def end(self, status, tags=None):
        self.ended.append((status, tags))


class Tracker:
    def __init__(self) -> None:
        self.runs: dict[int, Run] = {}

    def start_trial(self, number, params, study_name):
        self.runs[number] = Run(number)
        return self.runs[number]

    def ended(self) -> dict[int, list[str]]:
        return {n: [status for status, _ in r.ended] for n, r in sorted(self.runs.items())}


class Scripted(Objective):
    """Configs by trial number; a lone trial's fit may first call `during(trial)`, then raise its error."""

    def __init__(self, split, configs, errors=None, during=None) -> None:
        super().__init__(load_space("quick"), split.part("train"), split.part("valid"), split.dims,
                         device=torch.device("cpu"), seed=0, tracker=Tracker(), study_name="s")
        self.configs, self.errors, self.during = configs, errors or {}, during

    def config(self, trial):
        return self.configs[trial.number]

    def fit(self, members, on_end, on_epoch=None):
        if len(members) == 1 and self.during:
            self.during(members[0][0])
        if len(members) == 1 and members[0][0].number in self.errors:
            error = self.errors[members[0][0].number]
            if not isinstance(error, Exception):
                raise error  # Ctrl-C stops the batch, as in training
            return on_end(0, error)
        return super().fit(members, on_end, on_epoch)


class Study:
    """An in-memory study as `SharedStudy` shows it to the batch, counting tells and callbacks."""

    def __init__(self, storage=None, heartbeat: bool = False, fail_tell: int | None = None) -> None:
        self.study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
        self.storage, self.name, self.heartbeat = storage, self.study.study_name, heartbeat
        self.tells, self.called = Counter(), []
        tell = self.study.tell

        def counting(trial, *args, **kwargs):
            self.tells[trial.number] += 1
            if trial.number == fail_tell and self.tells[trial.number] == 1:
                raise RuntimeError("the storage went away")
            return tell(trial, *args, **kwargs)

        self.study.tell = counting

    def callback(self, study, frozen) -> None:
        self.called.append((frozen.number, frozen.state))

    def states(self) -> list[TrialState]:
        return [t.state for t in self.study.trials]


def _add(study: optuna.Study, *states: TrialState) -> None:
    for state in states:
        study.add_trial(create_trial(state=state, value=1.0 if state == C else None, params={}, distributions={}))


def test_ask_batch_asks_no_more_than_the_cap_s_free_slots():
    s = Study()
    _add(s.study, C, C, F)  # the failed trial gave its slot back
    s.study.ask()  # running elsewhere: it holds a slot
    asked = ask_batch(s, Cap(5), 8)
    assert len(asked) == 2 and [t.number for t in asked] == [4, 5]
    assert all(t.user_attrs["worker"] == this_process() for t in asked)  # a rerun can tell if we died
    assert len(ask_batch(Study(), Cap(5), 3)) == 3  # no more than asked for


def test_ask_batch_asks_queued_trials_first_and_they_hold_their_slot_already():
    s = Study()
    _add(s.study, C, C)
    s.study.enqueue_trial({}, user_attrs={"reference": "d2l"})
    asked = ask_batch(s, Cap(6), 8)  # 6 - 3 held (the queued one too) + the queued one
    assert len(asked) == 4 and asked[0].user_attrs.get("reference") == "d2l"
    full = Study()
    _add(full.study, C, C)
    assert len(ask_batch(full, Cap(2), 4)) == 1  # the caller asks only when the cap says run: at least one


def test_run_batch_tells_each_trial_once_and_stacks_those_that_share_a_key(small_split):
    s = Study()
    objective = Scripted(small_split, {0: sgd(512), 1: sgd(256), 2: sgd(256), 3: sgd(256)})
    run_batch(s, objective, ask_batch(s, Cap(10), 4), [s.callback])
    assert s.states() == [C, C, C, C] and s.tells == {0: 1, 1: 1, 2: 1, 3: 1}
    assert s.called == [(0, C), (1, C), (2, C), (3, C)]  # after each tell, with the told trial
    assert [t.user_attrs["stack_size"] for t in s.study.trials] == [1, 3, 3, 3]
    runs = objective.tracker.runs
    assert objective.tracker.ended() == {n: ["FINISHED"] for n in range(4)}
    for t in s.study.trials:
        assert t.value == runs[t.number].final["best_valid_rmse"] and runs[t.number].epochs == 3
        assert t.user_attrs["mlflow_run_id"] == runs[t.number].run_id


def test_each_end_is_told_and_a_bug_is_raised_once_the_whole_batch_is_told(small_split):
    s = Study()
    errors = {0: TrainingDiverged(2, float("nan")), 1: ZeroDivisionError("a bug"), 2: optuna.TrialPruned("pruned")}
    objective = Scripted(small_split, {n: sgd(64 * 2**n) for n in range(4)}, errors)  # four keys: four alone
    with pytest.raises(ZeroDivisionError):
        run_batch(s, objective, ask_batch(s, Cap(10), 4), [s.callback])
    assert s.states() == [F, F, P, C] and s.tells == {0: 1, 1: 1, 2: 1, 3: 1}
    assert s.called == [(0, F), (1, F), (2, P), (3, C)]
    assert objective.tracker.ended() == {0: ["FAILED"], 1: ["FAILED"], 2: ["FINISHED"], 3: ["FINISHED"]}
    reasons = [t.user_attrs.get("fail_reason", "") for t in s.study.trials]
    assert "diverged at epoch 2" in reasons[0] and reasons[1] == "ZeroDivisionError('a bug')" and not reasons[2]


def test_ctrl_c_in_a_stack_closes_and_tells_every_open_trial_of_the_batch(small_split, monkeypatch):
    interrupt_at(monkeypatch, 2, 2)  # while trials 1-3 train as one stack
    s = Study()
    objective = Scripted(small_split, {0: sgd(512), 1: sgd(256), 2: sgd(256), 3: sgd(256)})
    with pytest.raises(KeyboardInterrupt):
        run_batch(s, objective, ask_batch(s, Cap(10), 4), [s.callback])
    assert s.states() == [C, F, F, F] and s.tells == {0: 1, 1: 1, 2: 1, 3: 1}
    assert s.called == [(0, C)]  # as optimize: an interrupted trial gets no callback
    assert objective.tracker.ended() == {0: ["FINISHED"], 1: ["KILLED"], 2: ["KILLED"], 3: ["KILLED"]}
    note = objective.tracker.runs[2].ended[0][1]["mlflow.note.content"]
    assert note.startswith("Interrupted (Ctrl-C or SIGTERM)")


def test_ctrl_c_late_in_a_stack_keeps_the_members_that_had_ended_and_marks_the_others_interrupted(
        small_split, monkeypatch):
    # Ctrl-C in trial 3's epoch 3: trial 0 ended at epoch 2 (told then), trial 1 at epoch 3 before the
    # interrupt (told as it propagates); trials 2 and 3 are interrupted.
    interrupt_at(monkeypatch, 3, 3)
    s = Study()
    configs = {0: sgd(256).replace(epochs=2), 1: sgd(256), 2: sgd(256).replace(epochs=5), 3: sgd(256).replace(epochs=5)}
    objective = Scripted(small_split, configs)
    with pytest.raises(KeyboardInterrupt):
        run_batch(s, objective, ask_batch(s, Cap(10), 4), [s.callback])
    assert s.states() == [C, C, F, F] and s.called == [(0, C), (1, C)]
    assert objective.tracker.ended() == {0: ["FINISHED"], 1: ["FINISHED"], 2: ["KILLED"], 3: ["KILLED"]}
    assert [t.user_attrs.get("interrupted") for t in s.study.trials] == [None, None, True, True]


def test_a_storage_error_while_telling_closes_every_run_once_and_propagates(small_split):
    s = Study(fail_tell=1)
    errors = {n: TrainingDiverged(1, float("inf")) for n in range(3)}  # quick ends, no training
    objective = Scripted(small_split, {n: sgd(64 * 2**n) for n in range(3)}, errors)
    with pytest.raises(RuntimeError, match="the storage went away"):
        run_batch(s, objective, ask_batch(s, Cap(10), 3), [s.callback])
    assert s.states() == [F, F, F] and s.called == [(0, F)]
    assert objective.tracker.ended() == {0: ["FAILED"], 1: ["FAILED"], 2: ["FAILED"]}  # trial 1's once
    assert objective.tracker.runs[2].ended[0][1]["fail_reason"] == "RuntimeError('the storage went away')"


class Beating(optuna.storages.InMemoryStorage):
    """An in-memory storage with a heartbeat every 10 ms, recording each beat."""

    def __init__(self) -> None:
        super().__init__()
        self.beats: list[int] = []

    def get_heartbeat_interval(self):
        return 0.01

    def record_heartbeat(self, trial_id: int) -> None:
        self.beats.append(trial_id)


def _beat_threads() -> int:
    return sum(t.name == "beat-trials" for t in threading.enumerate())


def test_one_thread_beats_for_the_batch_s_open_trials_while_it_runs(small_split):
    storage = Beating()
    s = Study(storage, heartbeat=True)
    seen = {}

    def during(trial):  # trials 0-2 are asked; those before `trial` are told
        ids = {t.number: t._trial_id for t in s.study.get_trials(deepcopy=False)}

        def beating():
            return {n for n, i in ids.items() if i in storage.beats}

        storage.beats.clear()
        time.sleep(0.05)  # a beat begun before the last tell has landed
        storage.beats.clear()
        deadline = time.monotonic() + 5
        while beating() != set(range(trial.number, 3)) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen[trial.number] = (beating(), _beat_threads())

    objective = Scripted(small_split, {n: sgd(64 * 2**n) for n in range(3)},
                         {n: optuna.TrialPruned() for n in range(3)}, during)
    run_batch(s, objective, ask_batch(s, Cap(10), 3), [])
    assert seen == {0: ({0, 1, 2}, 1), 1: ({1, 2}, 1), 2: ({2}, 1)}  # a told trial beats no more
    assert _beat_threads() == 0 and s.states() == [P, P, P]
