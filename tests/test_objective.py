"""One trial's steps (begin, fit, close) and its rules without storage or MLflow: a FixedTrial, a
recording tracker, the one outcome mapping, and the study cap on hand-made trials."""

import math
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import FixedTrial, TrialState, create_trial

from pipeline.evaluate import baselines
from pipeline.model import ITEM_BIAS, MatrixFactorization
from pipeline.ranking import VALID_RANKING, ranking_metrics
from pipeline.search.batch import ask_batch, run_batch
from pipeline.search.objective import Objective, OverCap, ending
from pipeline.search.study import Cap
from pipeline.space import load_space
from pipeline.tracking import TrackingError
from pipeline.training import FitResult, TrainConfig, TrainingDiverged

PARAMS = {"optimizer": "sparse_sgd", "factors": 8, "lr.sparse_sgd": 0.02, "l2": 0.05, "batch_size": 256}


class RecordingRun:
    def __init__(self, fail_on_end: bool = False) -> None:
        self.run_id, self.epochs, self.final, self.ended, self.fail_on_end = "run-1", [], {}, [], fail_on_end

    def epoch(self, epoch, **values):
        self.epochs.append((epoch, values))

    def log(self, **values):
        self.final.update(values)

    def end(self, status, tags=None):
        self.ended.append((status, tags))
        if self.fail_on_end and len(self.ended) == 1:
            raise TrackingError("store went away")


class RecordingTracker:
    def __init__(self, **run_options) -> None:
        self.run, self.started = RecordingRun(**run_options), []

    def start_trial(self, number, params, study_name):
        self.started.append((number, params, study_name))
        return self.run


def _objective(split, tracker=None, cap=None, space=None):
    return Objective(space or load_space("quick"), split.part("train"), split.part("valid"), split.dims,
                     device=torch.device("cpu"), seed=0, tracker=tracker, study_name="s", cap=cap)


def _space(**changes):
    from pipeline.space import SearchSpace

    return SearchSpace(**{**load_space("quick").model_dump(exclude={"pruner"}), **changes})


def _run(objective, trial):
    """One trial alone, begin -> fit -> close, as a batch of one runs it; returns its ending and value."""
    config, run = objective.begin(trial)
    outcomes = []
    objective.fit([(trial, config, run)], lambda k, outcome: outcomes.append(outcome))
    return objective.close(trial, run, *outcomes)


def test_a_fixed_trial_trains_reports_and_records_its_config(small_split):
    trial = FixedTrial(PARAMS)
    end, values = _run(_objective(small_split), trial)
    assert end.state == TrialState.COMPLETE
    biases = baselines(small_split.part("train"), small_split.part("valid"), **small_split.dims)["biases_only"]
    assert values == [trial.user_attrs["valid_rmse"]] and values[0] < biases.rmse - 0.1
    assert trial.user_attrs["config"]["factors"] == 8 and trial.user_attrs["config"]["optimizer"] == "sparse_sgd"
    assert 1 <= trial.user_attrs["best_epoch"] <= 8
    assert _run(_objective(small_split), FixedTrial(PARAMS))[1] == values  # same trial number, same seed, same value
    assert _run(_objective(small_split), FixedTrial(PARAMS, number=1))[1] != values


def test_the_reference_trial_is_the_d2l_configuration(small_split):
    trial = FixedTrial({})
    trial.set_user_attr("reference", "d2l")
    tracker = RecordingTracker()
    assert math.isfinite(*_run(_objective(small_split, tracker), trial)[1])
    number, params, _ = tracker.started[0]
    assert (params["factors"], params["optimizer"], params["lr"], params["batch_size"], params["epochs"]) == (
        30, "adam", 0.002, 512, 20)  # the tutorial's, whatever the space
    run = tracker.run
    assert run.ended == [("FINISHED", {"optuna.state": "COMPLETE"})]
    assert [e for e, _ in run.epochs] == list(range(1, len(run.epochs) + 1))
    assert run.final["best_valid_rmse"] == pytest.approx(min(v["valid_rmse"] for _, v in run.epochs))


def test_a_complete_trial_records_its_ranking_on_valid(small_split):
    trial, tracker = FixedTrial(PARAMS), RecordingTracker()
    objective = _objective(small_split, tracker)
    assert _run(objective, trial)[0].state == TrialState.COMPLETE
    ranks = {key: trial.user_attrs[key] for key in VALID_RANKING}
    assert ranks == {key: tracker.run.final[key] for key in VALID_RANKING}  # user attrs and the run's metrics
    assert all(0 < value <= 1 for value in ranks.values()), ranks
    # the same function the champion is scored with on test: train's items excluded, valid >= 4 relevant
    model = ranked_by_item(small_split.dims["n_users"], small_split.dims["n_items"])
    expected = ranking_metrics(model, small_split.part("train"), small_split.part("valid"))
    assert objective.valid_ranking(FitResult(model=model)) == {f"valid_{k}": v for k, v in expected.items()}


def test_a_ranking_that_fails_leaves_the_trial_complete(small_split, monkeypatch):
    """The ranking metrics are a side measurement: their failure (e.g. out of device memory) warns
    and records none; the trained trial still completes with its valid RMSE."""
    trial, tracker = FixedTrial(PARAMS), RecordingTracker()
    objective = _objective(small_split, tracker)

    def fail(result):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(objective, "valid_ranking", fail)
    with pytest.warns(UserWarning, match="no ranking metrics on valid .RuntimeError: CUDA out of memory"):
        assert _run(objective, trial)[0].state == TrialState.COMPLETE
    assert not set(VALID_RANKING) & set(trial.user_attrs) and "best_valid_rmse" in tracker.run.final


@pytest.mark.parametrize("objective", [["ndcg@10"], ["rmse", "ndcg@10"]])
def test_an_ndcg_objective_tells_the_trials_valid_ndcg_and_reports_no_epoch(small_split, objective):
    """A study on NDCG (or on both) is told the trial's ranking on valid; no epoch is reported to
    Optuna (a pruner compares valid RMSE per epoch; a multi-objective trial cannot report)."""
    space = _space(objective=objective)
    study = optuna.create_study(directions=space.directions(), pruner=space.make_pruner())
    trial, tracker = study.ask(), RecordingTracker()
    end, values = _run(_objective(small_split, tracker, space=space), trial)
    study.tell(trial, values, state=end.state)
    (told,) = study.trials
    expected = {"rmse": told.user_attrs["valid_rmse"], "ndcg@10": told.user_attrs["valid_ndcg_at_10"]}
    assert told.state == TrialState.COMPLETE and told.values == [expected[name] for name in objective]
    assert told.intermediate_values == {} and len(tracker.run.epochs) == 8  # the curve is still logged


def test_an_ndcg_objective_whose_ranking_fails_fails_the_trial(small_split, monkeypatch):
    trial, tracker = FixedTrial(PARAMS), RecordingTracker()
    objective = _objective(small_split, tracker, space=_space(objective="ndcg@10"))
    monkeypatch.setattr(objective, "valid_ranking", lambda result: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.warns(UserWarning, match="no ranking metrics on valid"):
        end, values = _run(objective, trial)
    assert (end.state, end.status, values) == (TrialState.FAIL, "FAILED", None) and not end.fatal
    assert "no valid_ndcg_at_10 (its ranking failed)" in trial.user_attrs["fail_reason"]


def ranked_by_item(n_users, n_items):
    """A model that ranks items by their row, the same for every user."""
    model = MatrixFactorization(n_users, n_items, 0, 3.0)
    with torch.no_grad():
        model.items[:-1, ITEM_BIAS] = -torch.arange(n_items, dtype=torch.float32)
    return model


@pytest.mark.parametrize("outcome,state,status,note,fatal", [
    (None, TrialState.COMPLETE, "FINISHED", "", False),
    (optuna.TrialPruned("pruned at epoch 3"), TrialState.PRUNED, "FINISHED", "Pruned: pruned at epoch 3", False),
    (TrainingDiverged(2, float("nan")), TrialState.FAIL, "FAILED", "Failed: training diverged at epoch 2", False),
    (TrackingError("store went away"), TrialState.FAIL, "FAILED", "Failed: store went away", False),
    (OverCap("over the study's cap"), TrialState.FAIL, "FAILED", "Failed: over the study's cap", False),
    (KeyboardInterrupt(), TrialState.FAIL, "KILLED", "Interrupted (Ctrl-C or SIGTERM)", True),
    (ZeroDivisionError("a bug"), TrialState.FAIL, "FAILED", "Failed: ZeroDivisionError('a bug')", True),
])
def test_the_one_mapping_from_how_a_trial_ended_to_what_is_recorded(outcome, state, status, note, fatal):
    end = ending(outcome)
    assert (end.state, end.status, end.fatal) == (state, status, fatal)
    assert end.description.startswith(note) and bool(end.description) == bool(note)
    assert (end.reason is None) == (state != TrialState.FAIL)  # only a failure has a reason
    tags = end.tags()
    assert tags["optuna.state"] == state.name and tags.get("fail_reason") == end.reason
    assert tags.get("mlflow.note.content", "") == end.description  # the run's description in mlflow ui says why


@pytest.mark.parametrize("error", [optuna.TrialPruned("pruned at epoch 3"), TrainingDiverged(2, float("nan")),
                                   KeyboardInterrupt(), ZeroDivisionError("a bug")])
def test_the_run_ends_once_with_the_status_of_how_the_trial_ended(error):
    trial, tracker = FixedTrial(PARAMS), RecordingTracker()
    objective = Objective(load_space("quick"), _NoData(), _NoData(), {}, device=torch.device("cpu"), seed=0,
                          tracker=tracker, study_name="s")
    config, run = objective.begin(trial)
    end, value = objective.close(trial, run, error)
    assert value is None and end == ending(error)
    assert tracker.run.ended == [(end.status, end.tags())]
    assert trial.user_attrs.get("fail_reason") == end.reason


def test_a_result_that_cannot_be_recorded_fails_the_trial(small_split):
    trial, tracker = FixedTrial(PARAMS), RecordingTracker(fail_on_end=True)
    end, value = _run(_objective(small_split, tracker), trial)
    assert (end.state, end.status, value) == (TrialState.FAIL, "FAILED", None)
    assert [s for s, _ in tracker.run.ended] == ["FINISHED", "FAILED"]
    assert "store went away" in trial.user_attrs["fail_reason"]


class _NoData:
    def to(self, device):
        return self


def _trials(*states, attrs=None):
    """Trials of these states; attrs: {number: user attrs}."""
    study = optuna.create_study()
    for number, state in enumerate(states):
        study.add_trial(create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                     params={}, distributions={}, user_attrs=(attrs or {}).get(number, {})))
    return study.get_trials(deepcopy=False)


def test_the_cap_rule():
    C, P, R, W, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL
    cap = Cap(3)
    trials = _trials(C, F, R, P, R)  # numbers 0-4; the failed trial 1 gave its slot back
    assert cap.admits(3, trials) and not cap.admits(4, trials)
    assert cap.next_step(_trials(C, P, C), heartbeat=True) == "stop"
    assert cap.next_step(_trials(F, F, F), heartbeat=False) == "stop"
    assert cap.next_step(_trials(C, R, R), heartbeat=True) == "wait"
    assert cap.next_step(_trials(C, R, R), heartbeat=False) == "stop"
    assert cap.next_step(_trials(C, R, R, W), heartbeat=False) == "run"  # a retried trial waits its turn
    assert cap.next_step(_trials(C, F), heartbeat=False) == "run"
    assert cap.finished(trials) == 2
    # interrupted trials (Ctrl-C, SIGTERM) and retried ones (a dead worker's) are not the study's failures
    interrupted = {n: {"interrupted": True} for n in range(3)}
    assert cap.next_step(_trials(F, F, F, attrs=interrupted), heartbeat=False) == "run"
    assert cap.next_step(_trials(F, F, F, W, attrs={3: {"retry_of": 0}}), heartbeat=False) == "run"
    assert cap.next_step(_trials(F, F, F, attrs={0: {"interrupted": True}, 2: {"retry_of": 1}}),
                         heartbeat=False) == "run"


def test_an_over_cap_trial_fails_before_any_run_starts(small_split):
    study = optuna.create_study()
    for _ in range(2):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, params={}, distributions={}))
    tracker, shared = RecordingTracker(), SimpleNamespace(study=study, heartbeat=False)
    trials = ask_batch(shared, Cap(2), 4)  # the caller asks only when the cap says run: at least one
    assert len(trials) == 1
    run_batch(shared, _objective(small_split, tracker, cap=Cap(2)), trials, [])
    last = study.trials[-1]
    assert last.state == TrialState.FAIL and "over the study's cap" in last.user_attrs["fail_reason"]
    assert tracker.started == []


def test_a_first_ctrl_c_in_the_trial_loop_waits_for_a_safe_point():
    import os
    import signal
    import time

    from pipeline.search.interrupt import catching_sigint, deferring, raise_if_interrupted

    reached = False
    with catching_sigint():
        with pytest.raises(KeyboardInterrupt):
            with deferring():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler has run: recorded, not raised
                reached = True
                raise_if_interrupted()
        assert reached
        with pytest.raises(KeyboardInterrupt):  # outside the loop it raises at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)


def test_a_trial_logs_only_the_settings_its_family_trains_with():
    bayes = TrainConfig(family="bayes", factors=12, epochs=30, burn_in=5, implicit="both").used()
    assert set(bayes) == {"family", "implicit", "features", "burn_in", "output", "factors", "epochs", "init_std"}
    adam = TrainConfig(l2=0.05).used()
    assert "burn_in" not in adam and "momentum" not in adam and "patience" not in adam and "output" not in adam
    assert adam["optimizer"] == "adam" and adam["l2_bias"] == 0.05  # resolved: None means "as l2"
    assert TrainConfig(optimizer="sgd", lr=0.1).used()["momentum"] == 0.9
