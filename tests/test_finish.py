"""The finish's pure rules: how many chains a champion is refit as, and the champion's valid scores
on the parent run."""

import optuna
from optuna.trial import create_trial

from pipeline.search.finish import _champion_valid, refit_chains
from pipeline.training import TrainConfig


def test_a_champion_is_refit_as_more_chains_where_its_noise_precision_is_drawn():
    assert refit_chains(TrainConfig()) == 1  # mf: one fit
    assert refit_chains(TrainConfig(family="bayes")) == 4  # drawn: short chains that overfit, averaged
    assert refit_chains(TrainConfig(family="bayes", noise_precision=1.4)) == 2


def test_the_parent_run_names_the_champions_valid_scores_by_the_objective():
    rmse = optuna.create_study()
    rmse.add_trial(create_trial(value=0.9, user_attrs={"valid_rmse": 0.9}))
    assert _champion_valid(rmse, rmse.best_trial) == {"study_best_valid_rmse": 0.9}
    ndcg = optuna.create_study(direction="maximize")
    ndcg.set_metric_names(["valid_ndcg_at_10"])
    ndcg.add_trial(create_trial(value=0.2, user_attrs={"valid_rmse": 0.95}))
    # the champion is the best NDCG, not the study's best RMSE: named for what it is
    assert _champion_valid(ndcg, ndcg.best_trial) == {"champion_valid_rmse": 0.95, "champion_valid_ndcg_at_10": 0.2}
