"""What the search prints (pipeline/search/report.py, and progress.py's line per told trial): the
start line, one progress line per trial, the closing summary; no study run, no store touched
(the live line inside trials and the finish's steps: tests/test_progress.py)."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from pipeline.search.progress import Progress
from pipeline.search.report import print_summary, start_line


class _Ratings:
    name = "ml-100k"

    def __len__(self):
        return 100_000

    def describe(self):
        return "ml-100k: 100,000 ratings; 3 duplicate (user, item) pair(s) dropped"


class _Split:
    def summary(self):
        return {"train": 80_000, "valid": 10_000, "test": 10_000}


def test_the_start_line_names_study_data_device_cap_and_store_without_its_password():
    line = start_line("ml-100k-default", _Ratings(), _Split(), "cpu", 60, 2, "postgresql://me:secret@db/mlflow")
    assert line.startswith("study ml-100k-default: ml-100k: 100,000 ratings; 3 duplicate (user, item) pair(s) "
                           "dropped, split {'train': 80000")
    assert "device cpu, cap 60 trials, 2 worker(s); MLflow postgresql://me:***@db/mlflow" in line
    assert "secret" not in line


def _study(*trials) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for state, value, attrs in trials:
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.01},
                                     distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)}, user_attrs=attrs))
    return study


def test_one_progress_line_per_trial_with_the_best_so_far_and_why_a_trial_failed(capsys):
    study = _study((TrialState.COMPLETE, 0.91, {}), (TrialState.PRUNED, None, {}),
                   (TrialState.FAIL, None, {"fail_reason": "diverged at epoch 3"}))
    progress = Progress(total=4, done=0, quiet=False)
    for trial in study.trials:
        progress(study, trial)
    progress.close()
    lines = capsys.readouterr().err.splitlines()  # not a terminal: plain lines, no redrawn bar
    assert len(lines) == 3
    assert lines[0].startswith("[############............] 2/4 trials | best valid RMSE 0.9100 (trial 0) | ")
    assert lines[0].endswith("| trial 0 complete") and lines[1].endswith("| trial 1 pruned")
    assert lines[2].endswith("| trial 2 fail: diverged at epoch 3")
    assert "elapsed, ETA ?" in lines[0]  # no epoch measured: no number


def test_progress_before_any_complete_trial_and_when_quiet(capsys):
    study = _study((TrialState.PRUNED, None, {}))
    Progress(total=2, done=0, quiet=False)(study, study.trials[0])
    assert "1/2 trials | no complete trial yet |" in capsys.readouterr().err
    Progress(total=2, done=0, quiet=True)(study, study.trials[0])
    assert capsys.readouterr().err == ""


SUMMARY = {
    "study": "ml-100k-default", "best_trial": 7, "best_epoch": 12, "best_valid_rmse": 0.91234,
    "best_params": {"optimizer": "sparse_sgd", "factors": 64, "lr": 0.0123456, "implicit": None},
    "test_rmse": 0.87491, "test_mae": 0.6871, "ndcg_at_10": 0.05, "recall_at_10": 0.06, "map_at_10": 0.02,
    "reference": {"d2l_config": {"test_rmse": 0.911, "test_mae": 0.72}, "biases_only": {"test_rmse": 0.94, "test_mae": 0.74},
                  "popularity": {"ndcg_at_10": 0.12, "recall_at_10": 0.14, "map_at_10": 0.06}},
    "trials": {"complete": 40, "pruned": 20, "fail": 0},
    "plots_skipped": {"importance": "needs two complete trials"},
    "registered": "models:/mf-movielens/3", "alias": "champion", "alias_uri": "models:/mf-movielens@champion",
    "compare_link": "#/experiments/1/runs?viewStateShareKey=trials-abc",
}


def test_the_summary_table_and_where_to_look(capsys):
    print_summary(SUMMARY, "sqlite:///mlflow.db")
    out = capsys.readouterr().out
    assert "study ml-100k-default: trials 40 complete, 20 pruned\n" in out  # zero counts left out
    assert "best trial 7: valid RMSE 0.9123 at epoch 12\n" in out
    assert "  optimizer=sparse_sgd, factors=64, lr=0.01235\n" in out  # None values left out
    assert f"{'model':<34} test RMSE  test MAE   NDCG@10 Recall@10    MAP@10\n" in out
    assert f"{'best (refit on train+valid)':<34}    0.8749    0.6871    0.0500    0.0600    0.0200\n" in out
    assert f"{'reference: d2l config':<34}    0.9110    0.7200         -         -         -\n" in out
    assert f"{'reference: popularity':<34}         -         -    0.1200    0.1400    0.0600\n" in out
    assert "registered models:/mf-movielens/3 as champion: load it with models:/mf-movielens@champion" in out
    assert "plot importance skipped: needs two complete trials" in out
    assert out.rstrip().endswith("compare the trials, best first: mlflow ui, then open "
                                 "http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=trials-abc")


@pytest.mark.parametrize("uri,how", [
    ("sqlite:////data/runs.db", "mlflow ui --backend-store-uri sqlite:////data/runs.db, then open http://127.0.0.1:5000/#"),
    ("http://me:secret@mlflow.example:5000/", "open http://me:***@mlflow.example:5000/#/experiments/1"),
])
def test_the_summary_says_how_to_open_the_comparison_for_the_store_used(capsys, uri, how):
    print_summary(SUMMARY, uri)
    out = capsys.readouterr().out
    assert how in out and "secret" not in out


@pytest.mark.parametrize("families,label", [
    (["mf"], "epoch"), (["bayes"], "Gibbs sweep"), (["mf", "bayes"], "epoch (mf) or Gibbs sweep (bayes)")])
def test_the_learning_curves_axis_says_epoch_or_sweep(families, label):
    import matplotlib

    matplotlib.use("Agg")
    from pipeline.plots import _learning_curves

    study = optuna.create_study()
    for n, family in enumerate(families):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.9 + n / 100, params={}, distributions={},
                                     intermediate_values={1: 1.0, 2: 0.9}, user_attrs={"config": {"family": family}}))
    assert _learning_curves(study, best_n=1).axes[0].get_xlabel() == label


def test_a_resumed_study_says_so():
    from pipeline.search.report import resume_line

    assert resume_line([], 4) is None
    fresh = optuna.create_study()
    fresh.enqueue_trial({})  # a new study's trial 0, queued
    assert resume_line(fresh.trials, 4) is None
    trials = _study((TrialState.COMPLETE, 0.9, {}), (TrialState.PRUNED, None, {}),
                    (TrialState.FAIL, None, {"interrupted": True}), (TrialState.FAIL, None, {})).trials
    assert resume_line(trials, 4) == "resuming: 2 of 4 trials complete (1 interrupted: run again first)"
    assert resume_line(trials[:2], 4) == "resuming: 2 of 4 trials complete"
