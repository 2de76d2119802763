"""The command's options: parsed once into a frozen `SearchOptions`, checked, and passed down (to
spawned workers too) instead of the raw `argparse` result."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pipeline import ingest
from pipeline.space.schema import DEFAULT_MODEL_NAME, MLFLOW_NAME, model_name_problem
from pipeline.urls import masked

if TYPE_CHECKING:
    from pipeline.space import SearchSpace

__all__ = ["DEFAULT_STORAGE", "MAX_STUDY_NAME", "SearchError", "SearchOptions", "check_study_name", "parser"]

DEFAULT_STORAGE = "optuna.journal"

# The longest names the stores keep (longer ones fail half-way, leaving an empty study behind):
OPTUNA_STUDY_NAME = 512  # optuna's studies.study_name column
MARKER_SUFFIX = 64  # the longest lease marker's tail ":mlflow-parent-after-<run id>#<attempt>" (lease.py)
MLFLOW_RUN_NAME = 250  # MLflow's runs.name: the study's parent run is named after it
MAX_STUDY_NAME = min(MLFLOW_RUN_NAME, OPTUNA_STUDY_NAME - MARKER_SUFFIX)


class SearchError(RuntimeError):
    """Refused before any work: bad flags or storage, a study that belongs to another space or split."""


@dataclass(frozen=True)
class SearchOptions:
    """What one `python -m pipeline.search` command asked for (see `parser` for each flag)."""

    config: str | None = None
    """The search space; None: `default_space(device)`."""
    dataset: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    study_name: str | None = None
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = None
    experiment: str = "pipeline"
    register_as: str | None = None
    """The registered model's name; None: the space's `register_as` (`resolved`)."""
    device: str | None = None
    seed: int = 0
    workers: int = 1
    stack: int | None = None
    """Trials trained together (pipeline.training.fit_stack); None: the space's `stack`, else by device."""
    quiet: bool = False
    heartbeat: int = 10
    """Seconds between a running trial's heartbeats (database storages)."""
    grace: int = 30
    """Seconds without a beat after which a worker is taken for dead: its trials (database storages)
    are failed and retried, its once-only steps (pipeline.search.lease) taken over."""
    rating_scale: tuple[float, float] | None = None
    columns: dict[str, str] | None = None
    sep: str | None = None
    header: bool | None = None
    user_features: str | None = None
    item_features: str | None = None
    """The ratings source's flags (`ingest.add_source_flags`), over the space's dataset options."""

    def __post_init__(self) -> None:
        if self.n_trials is not None and self.n_trials < 1:
            raise SearchError(f"--n-trials {self.n_trials}: expected >= 1")
        if self.timeout is not None and not self.timeout > 0:
            raise SearchError(f"--timeout {self.timeout:g}: expected > 0 seconds (leave it out for no limit)")
        if self.workers < 1:
            raise SearchError(f"--workers {self.workers}: expected >= 1")
        if self.stack is not None and self.stack < 1:
            raise SearchError(f"--stack {self.stack}: expected >= 1 (1: train every trial alone)")
        for flag, seconds in (("heartbeat", self.heartbeat), ("grace", self.grace)):
            if seconds < 1:
                raise SearchError(f"--{flag} {seconds}: expected >= 1 second")
        heartbeats = "://" in self.storage and not self.storage.startswith("sqlite")  # as study.open_storage
        if heartbeats and self.grace < 2 * self.heartbeat:  # else a live trial is taken for dead
            raise SearchError(f"--grace {self.grace}: expected at least twice --heartbeat ({self.heartbeat} s), so "
                              "that a live worker is never taken for dead between two heartbeats")
        if self.study_name:
            check_study_name(self.study_name)
        _check_experiment(self.experiment)
        _check_model_name(self.register_as)
        if self.tracking_uri and _database(self.tracking_uri) == _database(self.storage) != "":
            raise SearchError(f"--tracking-uri {masked(self.tracking_uri)}: expected another database than "
                              "--storage's (MLflow and Optuna each migrate their own schema, both in alembic_version)")

    def resolved(self, space: SearchSpace) -> SearchOptions:
        """These options with the space's `register_as` where the command named none: the
        command's --register-as wins over the space's."""
        return self if self.register_as is not None else replace(self, register_as=space.register_as)

    @classmethod
    def parse(cls, argv: list[str] | None = None) -> SearchOptions:
        """Parse a command line (argparse exits 2 on a malformed flag); raises SearchError on a bad value."""
        return cls(**vars(parser().parse_args(argv)))


def _database(url: str) -> str:
    """The database a URL names, whatever its driver (postgresql+psycopg2:// is postgresql://); "" for
    a path (a journal) or a server."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.split("+", 1)[0].lower()
    return f"{scheme}://{rest}" if rest and scheme not in ("http", "https") else ""


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 60 else f"{name[:40]!r}… ({len(name)} characters)"


def check_study_name(name: str, flag: str = "--study-name") -> None:
    """A study name the stores keep whole: Optuna's studies with room for the lease markers named
    after it, and MLflow's parent run, named after it too."""
    if len(name) > MAX_STUDY_NAME:
        raise SearchError(f"{flag} {_shown(name)}: expected at most {MAX_STUDY_NAME} characters "
                          "(the study's MLflow parent run is named after it)")


def _check_experiment(name: str) -> None:
    if not name.strip():
        raise SearchError(f"--experiment {name!r}: expected an MLflow experiment name (not empty)")
    if len(name) > MLFLOW_NAME:
        raise SearchError(f"--experiment {_shown(name)}: expected at most {MLFLOW_NAME} characters")


def _check_model_name(name: str | None) -> None:
    if name is not None and (why := model_name_problem(name)):
        raise SearchError(f"--register-as {_shown(name)}: expected {why}")


def parser() -> argparse.ArgumentParser:
    d = SearchOptions()
    p = argparse.ArgumentParser(prog="python -m pipeline.search",
                                description="An Optuna study of MF models, tracked in MLflow, the best registered.")
    p.add_argument("--config", help="search-space YAML, or the name of one in pipeline/search_spaces/ "
                                    "(default: mf, or mf-cuda on a GPU)")
    p.add_argument("--dataset", help="override the space's dataset (MovieLens name, synthetic, or a file)")
    p.add_argument("--n-trials", type=int, help="study-wide cap on finished trials (default: the space's)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--study-name", help="default: <dataset>-<space>; rerunning resumes it")
    p.add_argument("--storage", default=d.storage,
                   help="Optuna storage: a journal file path (default optuna.journal) or a database URL")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's)")
    p.add_argument("--experiment", default=d.experiment, help="MLflow experiment name")
    p.add_argument("--register-as", help="registered model name (default: the space's register_as, "
                                          f"{DEFAULT_MODEL_NAME} where it names none)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--seed", type=int, default=d.seed, help="sampler and training seed")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes on this machine, sharing the study")
    p.add_argument("--stack", type=int, help="trials trained together where their configs allow "
                                             "(default: the space's, else 8 on cuda and 1 on a CPU)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--heartbeat", type=int, default=d.heartbeat, metavar="SECONDS",
                   help=f"seconds between a running trial's heartbeats, database storages (default {d.heartbeat})")
    p.add_argument("--grace", type=int, default=d.grace, metavar="SECONDS",
                   help="seconds without a heartbeat after which a worker is taken for dead: its trials are "
                        f"retried, its once-only steps taken over (default {d.grace})")
    ingest.add_source_flags(p)
    return p
