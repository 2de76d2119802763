"""Study plots as matplotlib figures (PNG-ready, offline: no plotly, no CDN)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from pipeline.objectives import metric_names, valid_rmse  # noqa: E402

__all__ = ["IMPORTANCE_MIN_TRIALS", "study_figures"]

# fANOVA's importances from fewer complete trials of a family are noise: its forest of 64 trees
# needs several points per searched dimension (the default space searches 2-5 per family).
IMPORTANCE_MIN_TRIALS = 8


def study_figures(study: optuna.Study, best_n: int = 5) -> tuple[dict[str, plt.Figure], dict[str, str]]:
    """Figures by file name, and for each figure that could not be drawn, why (e.g. too few
    trials for importances). The objective's history (several objectives: valid RMSE's, and the
    Pareto front); per model family (mf, bayes): parallel coordinates, slices and parameter
    importances over the settings that family trains with (`TrainConfig.used`), named as in the
    trial runs, against valid RMSE whatever the objective. Caller saves and closes them."""
    figures, skipped = {}, {}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return figures, {"all plots": "no complete trial"}
    if any(t.intermediate_values for t in study.trials):
        figures["learning_curves.png"] = _learning_curves(study, best_n)
    else:  # the objective is not valid RMSE: nothing was reported per epoch (SearchSpace.prunes)
        skipped["learning_curves.png"] = "no trial reported its epochs: each trial's run has its valid_rmse curve"
    several = len(study.directions) > 1
    with warnings.catch_warnings():
        # Optuna's plots are experimental and warn about small studies; nothing a user can act on.
        warnings.simplefilter("ignore")
        figures["optimization_history.png"] = _sized(optuna.visualization.matplotlib.plot_optimization_history(
            study, target=valid_rmse if several else None,
            target_name="valid_rmse" if several else metric_names(study)[0]))
        if several:
            figures["pareto_front.png"] = _sized(optuna.visualization.matplotlib.plot_pareto_front(study))
    for family, trials in _by_family(complete).items():
        searched = _searched([t for t in trials if not t.reference])  # trial 0 is outside the space
        names = [f"{kind}-{family}.png" for kind in ("parallel_coordinate", "slice", "param_importances")]
        if not searched:
            skipped.update(dict.fromkeys(names, f"no {family} setting varies across its complete trials"))
            continue
        figures[names[0]] = _parallel_coordinates(trials, searched, family)
        figures[names[1]] = _slices(trials, searched, family)
        sampled = [t for t in trials if not t.reference]
        if len(sampled) >= IMPORTANCE_MIN_TRIALS:
            try:
                figures[names[2]] = _importances(sampled, searched, family)
            except (RuntimeError, ValueError) as exc:  # fANOVA: e.g. every trial the same valid RMSE
                skipped[names[2]] = f"{type(exc).__name__}: {exc}"
        else:
            skipped[names[2]] = (f"{len(sampled)} complete {family} trials from the space: importances need "
                                 f"{IMPORTANCE_MIN_TRIALS} to mean something")
    return figures, skipped


def _sized(axes) -> plt.Figure:
    """An Optuna matplotlib plot's figure, at least 8 x 5 inches."""
    figure = axes.get_figure()
    figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
    figure.tight_layout()
    return figure


def _learning_curves(study: optuna.Study, best_n: int) -> plt.Figure:
    """Valid RMSE per epoch: every trial faint, the best `best_n` labelled."""
    figure, ax = plt.subplots(figsize=(8, 5))
    ranked = sorted((t for t in study.trials if t.intermediate_values and valid_rmse(t) is not None),
                    key=valid_rmse)
    for t in ranked[best_n:]:
        steps = sorted(t.intermediate_values)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], color="0.8", linewidth=0.7)
    for t in ranked[:best_n]:
        steps = sorted(t.intermediate_values)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], linewidth=1.8,
                label=f"trial {t.number}: {valid_rmse(t):.4f}")
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


def _by_family(trials: list) -> dict[str, list]:
    """Trials by their config's family, each trial's config reduced to what its family uses."""
    from pipeline.training import TrainConfig

    families: dict[str, list] = {}
    for t in trials:
        config = TrainConfig(**t.user_attrs["config"])
        families.setdefault(config.family, []).append((t, config.used()))
    return {family: [_Point(t.number, valid_rmse(t), used, "reference" in t.user_attrs) for t, used in rows]
            for family, rows in families.items()}


@dataclass(frozen=True)
class _Point:
    """A complete trial as the plots read it: number, valid RMSE, its family's settings, and
    whether it is the reference configuration (trial 0, outside the space)."""

    number: int
    value: float
    config: dict
    reference: bool


def _searched(trials: list) -> list[str]:
    """Settings that take more than one value across `trials` (the family's)."""
    configs = [t.config for t in trials]
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
        return [(f(v) - f(low)) / span for v in values], [f"{low:.4g}", f"{high:.4g}"], log
    levels = sorted({_label(v) for v in values})
    step = 1 / max(len(levels) - 1, 1)
    return [levels.index(_label(v)) * step for v in values], levels, False


def _label(value) -> str:
    """A category's tick: numbers to 4 significant digits, the rest as written."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _parallel_coordinates(trials: list, keys: list[str], family: str) -> plt.Figure:
    """One vertical axis per searched field and valid RMSE last; a line per complete trial,
    coloured by valid RMSE (dark = better), the best trial drawn last and thickest."""
    trials = sorted(trials, key=lambda t: -t.value)  # worst first: the best ends on top
    values = [t.value for t in trials]
    columns = [_axis([t.config.get(k) for t in trials]) for k in keys] + [_axis(values)]
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
    ax.set_title(f"Parallel coordinates, {family}: {len(trials)} complete trials, lowest valid RMSE in red")
    figure.tight_layout()
    return figure


def _slices(trials: list, keys: list[str], family: str) -> plt.Figure:
    """Valid RMSE against each searched field, one panel each, coloured by trial number."""
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False,
                                layout="constrained")
    values = [t.value for t in trials]
    top = sorted(values)[int(0.9 * (len(values) - 1))]  # the worst tenth off the scale: it would flatten the rest
    scatter = None
    for ax, key in zip(axes.flat, keys):
        xs = [t.config.get(key) for t in trials]
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
    figure.suptitle(f"Valid RMSE against each {family} setting", fontsize=10)
    return figure


def _importances(trials: list, keys: list[str], family: str) -> plt.Figure:
    """fANOVA importances (Optuna's evaluator, seeded) of the family's searched settings for valid
    RMSE, from a study rebuilt over those settings of `trials` (the space's, not the reference):
    the names are the runs' own."""
    keys = [k for k in keys if all(k in t.config for t in trials)]  # e.g. momentum: sgd's alone
    distributions = {k: _distribution([t.config[k] for t in trials]) for k in keys}
    study = optuna.create_study()
    for t in trials:
        params = {k: t.config[k] if _numeric([t.config[k]]) else str(t.config[k]) for k in keys}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=t.value))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    figure, ax = plt.subplots(figsize=(8, 0.5 * len(importances) + 1.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    for y, name in enumerate(names):
        ax.annotate(f"{importances[name]:.2f}", (importances[name], y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlabel("importance for valid RMSE (fANOVA)")
    ax.set_title(f"Setting importances, {family}: {len(trials)} complete trials")
    figure.tight_layout()
    return figure


def _distribution(values: list) -> optuna.distributions.BaseDistribution:
    """A distribution spanning `values`: numbers as a float range, the rest as categories."""
    if _numeric(values):
        low, high = float(min(values)), float(max(values))
        return optuna.distributions.FloatDistribution(low, high, log=low > 0 and high / low > 20)
    return optuna.distributions.CategoricalDistribution(sorted({str(v) for v in values}))
