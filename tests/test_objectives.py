"""The champion rule of single- and multi-objective studies, on hand-made trials."""

import optuna
import pytest
from optuna.trial import create_trial

from pipeline.objectives import champion, pareto_front, valid_rmse


def _trial(values, rmse=None):
    return create_trial(values=values, user_attrs={} if rmse is None else {"valid_rmse": rmse})


def test_a_multi_objective_champion_is_the_fronts_lowest_valid_rmse():
    study = optuna.create_study(directions=["minimize", "maximize"])
    for rmse, ndcg in [(0.90, 0.10), (0.88, 0.05), (0.89, 0.20), (0.91, 0.08)]:
        study.add_trial(_trial([rmse, ndcg], rmse))
    assert sorted(t.number for t in pareto_front(study)) == [1, 2]  # 0 and 3 are beaten on both
    assert champion(study).number == 1


def test_a_single_objective_champion_is_the_best_trial_whichever_its_direction():
    ndcg = optuna.create_study(direction="maximize")
    for value, rmse in [(0.10, 0.88), (0.30, 0.95)]:
        ndcg.add_trial(_trial([value], rmse))
    assert champion(ndcg).number == 1 and [t.number for t in pareto_front(ndcg)] == [1]
    assert valid_rmse(champion(ndcg)) == 0.95
    old = optuna.create_study()  # a study from before the valid_rmse attr: its value is the RMSE
    old.add_trial(_trial([0.93]))
    assert valid_rmse(champion(old)) == 0.93


def test_no_complete_trial_no_champion():
    with pytest.raises(ValueError):
        champion(optuna.create_study(directions=["minimize", "maximize"]))
    with pytest.raises(ValueError):
        champion(optuna.create_study())
