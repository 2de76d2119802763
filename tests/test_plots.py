"""The study's plots: per model family, over the settings that family trains with (no "None"
ticks, no optimizer on a Bayesian axis), numbers to 4 significant digits, and importances only
from enough complete trials."""

import matplotlib.pyplot as plt
import optuna
import pytest

from pipeline.plots import IMPORTANCE_MIN_TRIALS, study_figures
from pipeline.training import TrainConfig


def _study(bayes: int, mf: int) -> optuna.Study:
    """Complete trials of each family with varied settings; trial 0 the d2l reference."""
    study = optuna.create_study()
    configs = [(TrainConfig(), True)]
    configs += [(TrainConfig(family="bayes", factors=40 + 3 * k, burn_in=5 + k % 4, epochs=200), False)
                for k in range(bayes)]
    configs += [(TrainConfig(optimizer="sparse_sgd", weight_decay=0.0, lr=0.0021234567 * (1 + 1.1 * k), l2=0.02 + 0.01 * k,
                             batch_size=(1, 64)[k % 2]), False) for k in range(mf)]
    for k, (config, reference) in enumerate(configs):
        attrs = {"config": config.to_dict(), **({"reference": "d2l"} if reference else {})}
        study.add_trial(optuna.trial.create_trial(value=0.9 - 0.001 * k, user_attrs=attrs,
                                                  intermediate_values={1: 1.0, 2: 0.9 - 0.001 * k}))
    return study


def _texts(figure) -> set[str]:
    return {t.get_text() for ax in figure.axes for t in ax.texts + ax.get_xticklabels() + ax.get_yticklabels()}


def test_each_family_is_plotted_over_its_own_settings():
    figures, skipped = study_figures(_study(bayes=IMPORTANCE_MIN_TRIALS, mf=3))
    try:
        assert {"parallel_coordinate-bayes.png", "slice-bayes.png", "param_importances-bayes.png",
                "parallel_coordinate-mf.png", "slice-mf.png"} <= set(figures)
        bayes_axes = {t.split("\n")[0] for t in _texts(figures["parallel_coordinate-bayes.png"])}
        assert {"factors", "burn_in", "valid RMSE"} <= bayes_axes
        assert not bayes_axes & {"optimizer", "lr", "batch_size", "momentum", "None"}
        mf_axes = {t.split("\n")[0] for t in _texts(figures["parallel_coordinate-mf.png"])}
        assert {"lr", "l2", "batch_size"} <= mf_axes and not mf_axes & {"burn_in", "None"}
        assert "0.006795" in _texts(figures["parallel_coordinate-mf.png"])  # 4 significant digits
        assert {"factors", "burn_in"} <= _texts(figures["param_importances-bayes.png"])
        assert "3 complete mf trials from the space" in skipped["param_importances-mf.png"]
    finally:
        plt.close("all")


@pytest.mark.parametrize("bayes", [IMPORTANCE_MIN_TRIALS - 1, IMPORTANCE_MIN_TRIALS])
def test_importances_need_enough_complete_trials(bayes):
    figures, skipped = study_figures(_study(bayes=bayes, mf=0))
    plt.close("all")
    assert ("param_importances-bayes.png" in figures) == (bayes >= IMPORTANCE_MIN_TRIALS)
    assert ("param_importances-bayes.png" in skipped) == (bayes < IMPORTANCE_MIN_TRIALS)


def test_importances_over_settings_some_trials_lack():
    """momentum is sgd's alone: a family mixing sgd and adam still gets its importances."""
    study = optuna.create_study()
    for k in range(IMPORTANCE_MIN_TRIALS + 2):
        config = TrainConfig(optimizer="sgd" if k % 2 else "adam", lr=0.01 * (1 + k), momentum=0.5 + 0.04 * k)
        study.add_trial(optuna.trial.create_trial(value=0.9 - 0.001 * k * (k % 3), user_attrs={"config": config.to_dict()},
                                                  intermediate_values={1: 0.95}))
    figures, skipped = study_figures(study)
    plt.close("all")
    assert "param_importances-mf.png" in figures, skipped
