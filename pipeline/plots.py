"""Study plots as matplotlib figures (PNG-ready, offline: no plotly, no CDN)."""

from __future__ import annotations

import math
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
    searched = _searched([t for t in complete if "reference" not in t.user_attrs])  # trial 0 is outside the space
    if searched:
        figures["parallel_coordinate.png"] = _parallel_coordinates(complete, searched)
        figures["slice.png"] = _slices(complete, searched)
    else:
        skipped["parallel_coordinate.png"] = skipped["slice.png"] = "no parameter varies across complete trials"
    vis = optuna.visualization.matplotlib
    makers = {"optimization_history.png": vis.plot_optimization_history,
              "param_importances.png": vis.plot_param_importances}
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
    families = {t.user_attrs.get("config", {}).get("family", "mf") for t in ranked}
    ax.set_xlabel({frozenset({"mf"}): "epoch", frozenset({"bayes"}): "Gibbs sweep"}.get(
        frozenset(families), "epoch (mf) or Gibbs sweep (bayes)"))
    ax.set_ylabel("valid RMSE")
    ax.set_title(f"Learning curves, {study.study_name}")
    if ranked:
        low = min(v for t in ranked for v in t.intermediate_values.values())
        ax.set_ylim(low - 0.01, low + 0.15)
    ax.legend()
    figure.tight_layout()
    return figure


# --- parameters against valid RMSE, read from each trial's TrainConfig ---------------------------
# (not Optuna's parameters: a conditional space names them per case, `lr.mf`, and leaves the rest
# None, which Optuna's own plots draw as "None" ticks; trial 0's configuration is not suggested.)


def _searched(trials: list) -> list[str]:
    """TrainConfig fields that take more than one value across `trials`."""
    configs = [t.user_attrs.get("config", {}) for t in trials]
    keys = dict.fromkeys(k for c in configs for k in c)
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _axis(values: list) -> tuple[list[float], list[str], bool]:
    """Values placed on [0, 1]: numbers (log-spaced when they span > 20x and are positive) or
    categories (evenly, in sorted order). Returns (positions, tick labels low..high, log)."""
    if _numeric(values):
        low, high = min(values), max(values)
        log = low > 0 and high / low > 20
        f = (lambda v: math.log(v)) if log else (lambda v: v)
        span = (f(high) - f(low)) or 1.0
        return [(f(v) - f(low)) / span for v in values], [f"{low:.3g}", f"{high:.3g}"], log
    levels = sorted({str(v) for v in values})
    step = 1 / max(len(levels) - 1, 1)
    return [levels.index(str(v)) * step for v in values], levels, False


def _parallel_coordinates(trials: list, keys: list[str]) -> plt.Figure:
    """One vertical axis per searched field and valid RMSE last; a line per complete trial,
    coloured by valid RMSE (dark = better), the best trial drawn last and thickest."""
    trials = sorted(trials, key=lambda t: -t.value)  # worst first: the best ends on top
    values = [t.value for t in trials]
    columns = [_axis([t.user_attrs["config"].get(k) for t in trials]) for k in keys] + [_axis(values)]
    names = keys + ["valid RMSE"]
    figure, ax = plt.subplots(figsize=(max(8, 1.3 * len(names)), 5.5))
    colour = plt.get_cmap("viridis_r")
    low, high = min(values), max(values)
    for row, t in enumerate(trials):
        shade = (t.value - low) / ((high - low) or 1.0)
        best = row == len(trials) - 1
        ax.plot(range(len(names)), [c[0][row] for c in columns], color=colour(1 - shade) if not best else "crimson",
                linewidth=2.5 if best else 0.9, alpha=1.0 if best else 0.6, zorder=3 if best else 2)
    for x, (name, (_, labels, log)) in enumerate(zip(names, columns)):
        ax.axvline(x, color="0.3", linewidth=0.8)
        ticks = [i / max(len(labels) - 1, 1) for i in range(len(labels))]
        for y, label in zip(ticks, labels):
            ax.annotate(label, (x, y), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center")
        names[x] = f"{name}\n(log)" if log else name
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(names) - 0.5)
    ax.set_title(f"Parallel coordinates: {len(trials)} complete trials, best in red")
    figure.tight_layout()
    return figure


def _slices(trials: list, keys: list[str]) -> plt.Figure:
    """Valid RMSE against each searched field, one panel each, coloured by trial number."""
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False,
                                layout="constrained")
    values = [t.value for t in trials]
    top = sorted(values)[int(0.9 * (len(values) - 1))]  # the worst tenth off the scale: it would flatten the rest
    scatter = None
    for ax, key in zip(axes.flat, keys):
        xs = [t.user_attrs["config"].get(key) for t in trials]
        positions, labels, log = _axis(xs)
        numeric = _numeric(xs)
        scatter = ax.scatter(xs if numeric else positions, values, c=[t.number for t in trials], cmap="viridis", s=14)
        if numeric and log:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks([i / max(len(labels) - 1, 1) for i in range(len(labels))], labels, fontsize=8)
        ax.set_ylim(min(values) - 0.005, max(top, min(values) + 0.01) + 0.005)
        ax.set_title(key, fontsize=9)
        ax.set_ylabel("valid RMSE", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    figure.colorbar(scatter, ax=axes, label="trial number", shrink=0.8)
    return figure
