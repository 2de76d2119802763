"""The one translator: a SearchSpace's parameters -> `trial.suggest_*` -> TrainConfig, and the
corners of a space (every categorical combination at the numeric bounds) through the same path."""

from __future__ import annotations

import itertools
from typing import Any

import optuna

from pipeline.space.schema import (CategoricalParam, ConditionalParam, Distribution, FloatParam, IntParam,
                                   SearchSpace)
from pipeline.training import TrainConfig

__all__ = ["space_corners", "suggest"]


def space_corners(space: SearchSpace):
    """A TrainConfig for every combination of categorical choices, with every numeric parameter
    at its low end and then at its high end: the configs that bound the space (sizes, memory)."""
    plain = [(k, v) for k, v in _ordered(space) if isinstance(v, CategoricalParam)]
    for choices in itertools.product(*(spec.choices for _, spec in plain)):
        for end in ("low", "high"):
            yield suggest(optuna.trial.FixedTrial(_corner(space, end, dict(zip([k for k, _ in plain], choices)))),
                          space)


def _corner(space: SearchSpace, end: str, chosen: dict) -> dict:
    """Optuna values for FixedTrial: numeric parameters at `end`, categoricals from `chosen` (the
    plain ones, by key) or their first choice (conditional ones)."""
    values, keys = {}, {}
    for key, spec in _ordered(space):
        name = key
        if isinstance(spec, ConditionalParam):
            name, spec = _case(key, spec, keys)
        if isinstance(spec, (IntParam, FloatParam)):
            values[name] = keys[key] = getattr(spec, end)
        elif isinstance(spec, CategoricalParam):
            values[name] = keys[key] = chosen.get(key, spec.choices[0])
        else:
            keys[key] = spec.value
    return values


def _ordered(space: SearchSpace):
    """Plain parameters first, so a conditional one finds the value it depends on."""
    return sorted(space.params.items(), key=lambda kv: isinstance(kv[1], ConditionalParam))


def _case(key: str, spec: ConditionalParam, values: dict) -> tuple[str, Distribution]:
    # Each case has its own Optuna name (`lr.adam`): one name, one distribution, per study.
    choice = str(values[spec.by])
    return f"{key}.{choice}", spec.cases[choice]


def suggest(trial: optuna.Trial, space: SearchSpace) -> TrainConfig:
    """The one translator: ask the trial for every parameter of the space; return the config."""
    values: dict[str, Any] = {}
    for key, spec in _ordered(space):
        name = key
        if isinstance(spec, ConditionalParam):
            name, spec = _case(key, spec, values)
        if isinstance(spec, IntParam):
            values[key] = trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif isinstance(spec, FloatParam):
            values[key] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif isinstance(spec, CategoricalParam):
            values[key] = trial.suggest_categorical(name, spec.choices)
        else:
            values[key] = spec.value
    return TrainConfig(**values, epochs=space.epochs, patience=space.patience)
