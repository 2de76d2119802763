"""The search space's schema: strict pydantic models of a YAML file (data, parameters, budget,
sampler, pruner, registered model name), checked when loaded; a typo fails before any training,
naming the key."""

from __future__ import annotations

import hashlib
import json
import posixpath
import warnings
from typing import Annotated, Any, Literal

import optuna
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from pipeline.objectives import OBJECTIVES
from pipeline.ratings import check_scale
from pipeline.split import STRATEGIES
from pipeline.training import TrainConfig

__all__ = ["DEFAULT_MODEL_NAME", "MLFLOW_NAME", "SEARCHABLE", "CategoricalParam", "ConditionalParam", "Distribution",
           "FixedParam", "FloatParam", "IntParam", "SearchSpace", "SpaceError", "default_space", "default_stack",
           "model_name_problem"]

# TrainConfig fields a space may set; epochs and patience are set at the top level.
SEARCHABLE = tuple(name for name in TrainConfig.model_fields if name not in ("epochs", "patience"))

DEFAULT_MODEL_NAME = "mf-movielens"
"""What a study registers as when neither its space (`register_as:`) nor --register-as names one."""
MLFLOW_NAME = 256  # MLflow's experiments.name and registered_models.name columns


def model_name_problem(name: str) -> str | None:
    """What is wrong with `name` as a registered model name ("expected ..."'s tail), or None.

    MLflow's rule (mlflow.utils.validation._validate_model_name, private, so restated here;
    tests/test_names.py holds the two together), the registry's column length, and what MLflow's
    search filters can quote (registry.filter_literal)."""
    normal = posixpath.normpath(name)
    if not name.strip():
        return "a registered model name (not empty)"
    if "/" in name or ":" in name:
        return "a registered model name without '/' or ':' (MLflow's rule)"
    if normal != name or normal == "." or normal.startswith(".."):
        return "a registered model name other than '.' and not starting with '..' (MLflow's rule)"
    if len(name) > MLFLOW_NAME:
        return f"at most {MLFLOW_NAME} characters"
    if "'" in name and '"' in name:
        return "a name without both ' and \" (MLflow's search filters cannot quote it)"
    if name.endswith("\\"):
        return "a name not ending in a backslash (MLflow's search filters cannot quote it)"
    return None


class SpaceError(ValueError):
    """A search-space file is invalid; the message names the file and the key."""


class _Strict(BaseModel):
    # strict: YAML gives native types, so `epochs: true` or `low: "3"` is a mistake, not a 1 or a 3
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _bounds(self):
        _check_bounds(self.low, self.high, self.log)
        if self.step < 1 or (self.log and self.step != 1):
            raise ValueError(f"step {self.step}: expected >= 1, and 1 when log is true")
        return self


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _bounds(self):
        _check_bounds(self.low, self.high, self.log)
        if self.step is not None and (self.step <= 0 or self.log):
            raise ValueError(f"step {self.step}: expected > 0, and no step when log is true")
        return self


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[bool | int | float | str] = Field(min_length=1)


class FixedParam(_Strict):
    type: Literal["fixed"]
    value: bool | int | float | str | None


Distribution = Annotated[IntParam | FloatParam | CategoricalParam | FixedParam, Field(discriminator="type")]


class ConditionalParam(_Strict):
    """A parameter whose distribution depends on another (categorical) parameter's value."""

    by: str
    cases: dict[str, Distribution] = Field(min_length=1)


def _check_bounds(low, high, log) -> None:
    if low > high:
        raise ValueError(f"low {low} > high {high}: expected low <= high")
    if log and low <= 0:
        raise ValueError(f"log scale needs positive bounds, got low {low}")


class DatasetSpec(_Strict):
    """`dataset:` a name (MovieLens, synthetic[:...], a ratings file), or a mapping of that `name`
    and `ingest.load`'s options, e.g. `{name: ml-100k, rating_scale: [1, 5]}`."""

    name: str
    rating_scale: list[float] | None = Field(None, min_length=2, max_length=2)
    columns: dict[str, str] | list[str] | None = None
    sep: str | None = None
    header: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("rating_scale")
    @classmethod
    def _scale(cls, value):
        return value if value is None else list(check_scale(value))

    @model_serializer
    def _dump(self) -> dict | str:
        # A bare name dumps as the string it was, so the digest of a space written that way is unchanged.
        return {"name": self.name, **self.options()} if self.options() else self.name

    def options(self) -> dict:
        """The `ingest.load` keywords given here."""
        options = {k: v for k in ("rating_scale", "columns", "sep", "header") if (v := getattr(self, k)) is not None}
        return {**options, "rating_scale": tuple(self.rating_scale)} if self.rating_scale else options

    def __str__(self) -> str:
        return self.name


class SplitSpec(_Strict):
    strategy: Literal[STRATEGIES] = "random"  # type: ignore[valid-type]
    test: float = Field(0.1, ge=0, lt=1)
    valid: float = Field(0.1, gt=0, lt=1)
    k: int = Field(1, ge=1)
    seed: int = 0
    cold: Literal["keep", "drop"] = "keep"


class SamplerSpec(_Strict):
    type: Literal["tpe", "random", "gp", "grid"] = "tpe"
    options: dict[str, Any] = {}


class PrunerSpec(_Strict):
    type: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    options: dict[str, Any] = {}


class SearchSpace(_Strict):
    """One search: the data, the parameters, the training budget, the sampler and the pruner."""

    dataset: DatasetSpec = DatasetSpec(name="ml-100k")
    split: SplitSpec = SplitSpec()
    params: dict[str, Distribution | ConditionalParam]
    epochs: int = Field(20, ge=1)
    patience: int | None = Field(None, ge=1)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    objective: list[str] = ["rmse"]
    """What the study optimizes on valid: rmse (the default), ndcg@10, or both as a list
    (`[rmse, ndcg@10]`: a multi-objective study, its Pareto front shown, its champion the front's
    trial of lowest valid RMSE: `pipeline.objectives.champion`). Pruning compares each epoch's
    valid RMSE, so it needs the objective rmse alone; otherwise the pruner is none."""
    trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0)
    reference: bool = True
    """Enqueue the d2l tutorial's configuration as trial 0 (and refit it for the summary). Its 20
    epochs can dominate a short study of a large dataset: turn it off there."""
    stack: int | None = Field(None, ge=1)
    """Trials trained together where their configs can share a stack (pipeline.training); None: by
    device (`default_stack`). How trials run, not what is searched: not part of the digest."""
    register_as: str = DEFAULT_MODEL_NAME
    """The registered model's name (MLflow's rule; --register-as wins over it). Where the study's
    model goes, not what is searched: not part of the digest (the study records the name it was
    created with and refuses another)."""
    name: str = "custom"
    """The file's stem: part of the default study name."""

    @field_validator("register_as")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if why := model_name_problem(value):
            raise ValueError(f"expected {why}")
        return value

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_list(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("objective")
    @classmethod
    def _objective_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in OBJECTIVES:
                raise ValueError(f"{name!r}: expected one of {', '.join(OBJECTIVES)}, or a list of them")
        if not value or len(set(value)) != len(value):
            raise ValueError(f"{value}: expected one objective or a list of different ones")
        return value

    @model_validator(mode="after")
    def _prunes_rmse_only(self):
        if not self.prunes() and "pruner" in self.model_fields_set and self.pruner.type != "none":
            raise ValueError(f"pruner {self.pruner.type!r} with objective {self.objective}: a pruner compares each "
                             "epoch's valid RMSE, so it needs `objective: rmse`; use `pruner: {type: none}`")
        return self

    @model_validator(mode="after")
    def _params(self):
        for key, spec in self.params.items():
            if key not in SEARCHABLE:
                raise ValueError(f"params.{key}: unknown parameter: expected one of {', '.join(SEARCHABLE)}")
            if isinstance(spec, ConditionalParam):
                parent = self.params.get(spec.by)
                if not isinstance(parent, CategoricalParam):
                    raise ValueError(f"params.{key}.by: {spec.by!r} must be a categorical parameter of this space")
                missing = {str(c) for c in parent.choices} - set(spec.cases)
                if missing:
                    raise ValueError(f"params.{key}.cases: no case for {sorted(missing)} (choices of {spec.by})")
            if self.sampler.type == "grid" and isinstance(spec, (IntParam, FloatParam, ConditionalParam)):
                raise ValueError(f"params.{key}: the grid sampler takes categorical or fixed parameters only")
        return self

    def searched(self) -> list[str]:
        """The parameters this space searches (not fixed in every case), in file order."""
        cases = lambda spec: spec.cases.values() if isinstance(spec, ConditionalParam) else [spec]  # noqa: E731
        return [k for k, spec in self.params.items() if any(not isinstance(c, FixedParam) for c in cases(spec))]

    def directions(self) -> list[str]:
        """Optuna's direction per objective."""
        return [OBJECTIVES[name][1] for name in self.objective]

    def metric_names(self) -> list[str]:
        """Each objective's name in Optuna (dashboards, `trials_dataframe`) and the trials' user attrs."""
        return [OBJECTIVES[name][0] for name in self.objective]

    def view_order(self) -> tuple[str, bool]:
        """The trials' run metric that the comparison view sorts by (the first objective's), and
        whether lowest first."""
        _, direction, metric = OBJECTIVES[self.objective[0]]
        return metric, direction == "minimize"

    def prunes(self) -> bool:
        """Whether trials report each epoch's valid RMSE to Optuna (and may be pruned on it)."""
        return self.objective == ["rmse"]

    def digest(self) -> str:
        """sha256 of the space's content (not its file name): a study is tied to one digest. The
        default objective is left out, so spaces written before it existed keep their digest."""
        exclude = {"name", "stack", "register_as"} | ({"objective"} if self.prunes() else set())
        blob = json.dumps(self.model_dump(exclude=exclude), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        options = dict(self.sampler.options)
        kind = self.sampler.type
        if kind == "grid":  # the grid is the categorical parameters' choices
            grid = {k: v.choices for k, v in self.params.items() if isinstance(v, CategoricalParam)}
            return optuna.samplers.GridSampler(grid, seed=seed, **options)
        cls = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
               "gp": optuna.samplers.GPSampler}[kind]
        with warnings.catch_warnings():  # e.g. TPE's `group` is "experimental": nothing to act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(seed=seed, **options)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        if not self.prunes():
            return optuna.pruners.NopPruner()
        cls = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "none": optuna.pruners.NopPruner}[self.pruner.type]
        return cls(**self.pruner.options)


def default_space(device: torch.device) -> str:
    """The default search space's name: mf, or mf-cuda on a GPU (no batch-1 SGD arms there: a
    step is a dozen kernel launches whatever its size)."""
    return "mf-cuda" if device.type == "cuda" else "mf"


def default_stack(device: torch.device) -> int:
    """Trials per stack when neither the command nor the space says: 8 on cuda; 1 (off) on a CPU,
    where one trial at a time through the compiled loop is faster (bench/stack.py)."""
    return 8 if device.type == "cuda" else 1
