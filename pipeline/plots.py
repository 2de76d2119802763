"""Study plots as matplotlib figures (PNG-ready, offline: no plotly, no CDN)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

__all__ = ["study_figures"]


def study_figures(study: optuna.Study, best_n: int = 5) -> tuple[dict[str, plt.Figure], dict[str, str]]:
    """Figures by file name, and for each figure that could not be drawn, why (e.g. too few
    trials for importances). Caller saves and closes them."""
    figures, skipped = {}, {}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return figures, {"all plots": "no complete trial"}
    figures["learning_curves.png"] = _learning_curves(study, best_n)
    vis = optuna.visualization.matplotlib
    makers = {"optimization_history.png": vis.plot_optimization_history,
              "param_importances.png": vis.plot_param_importances,
              "parallel_coordinate.png": vis.plot_parallel_coordinate,
              "slice.png": vis.plot_slice}
    with warnings.catch_warnings():
        # Optuna's plots are experimental and warn about small studies; nothing a user can act on.
        warnings.simplefilter("ignore")
        for name, make in makers.items():
            try:
                axes = make(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances of < 2 trials
                skipped[name] = f"{type(exc).__name__}: {exc}"
                continue
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
            figure.tight_layout()
            figures[name] = figure
    return figures, skipped


def _learning_curves(study: optuna.Study, best_n: int) -> plt.Figure:
    """Valid RMSE per epoch: every trial faint, the best `best_n` labelled."""
    figure, ax = plt.subplots(figsize=(8, 5))
    ranked = sorted((t for t in study.trials if t.intermediate_values and t.value is not None),
                    key=lambda t: t.value)
    for t in ranked[best_n:]:
        steps = sorted(t.intermediate_values)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], color="0.8", linewidth=0.7)
    for t in ranked[:best_n]:
        steps = sorted(t.intermediate_values)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], linewidth=1.8,
                label=f"trial {t.number}: {t.value:.4f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid RMSE")
    ax.set_title(f"Learning curves, {study.study_name}")
    if ranked:
        low = min(v for t in ranked for v in t.intermediate_values.values())
        ax.set_ylim(low - 0.01, low + 0.15)
    ax.legend()
    figure.tight_layout()
    return figure
