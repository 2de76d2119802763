"""Everything a search needs, checked and opened in an order that leaves no trace on a bad input."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from pipeline import ingest
from pipeline.device import device_memory, device_name, resolve_device
from pipeline.ratings import IngestError, Ratings
from pipeline.search.objective import Objective
from pipeline.search.options import SearchError, SearchOptions, check_study_name
from pipeline.search.recovery import CloseStaleRuns
from pipeline.search.study import Cap, SharedStudy, check_storage, open_storage, open_study
from pipeline.space import SearchSpace, SpaceError, default_space, default_stack, load_space, space_corners, space_file
from pipeline.split import Split, split
from pipeline.tracking import Tracker, TrackingError, configure_mlflow
from pipeline.training import TrainConfig, stack_key

__all__ = ["USER_ERRORS", "Session", "prepare"]

# Bad input or an unreachable store: one clear line (exit 2 before any work, 1 after), never a traceback.
USER_ERRORS = (SpaceError, IngestError, TrackingError, SearchError, ValueError)


@dataclass(frozen=True)
class Session:
    """One process's view of the search: the space, the data, the shared study, MLflow, the device."""

    options: SearchOptions
    space: SearchSpace
    ratings: Ratings
    data: Split
    shared: SharedStudy
    tracker: Tracker
    device: torch.device
    cap: Cap
    space_path: Path

    @property
    def study(self) -> optuna.Study:
        return self.shared.study

    @property
    def stack(self) -> int:
        """Trials asked together and trained in stacks where they can be (1: one at a time)."""
        return _stack(self.options, self.space, self.device)

    def objective(self) -> Objective:
        """The trial function, with this process's copy of train and valid on the device."""
        return Objective(self.space, self.data.part("train"), self.data.part("valid"), self.data.dims,
                         device=self.device, seed=self.options.seed, tracker=self.tracker,
                         study_name=self.shared.name, cap=self.cap, features=self.data.features)

    def parent_tags(self) -> dict[str, str]:
        """What the parent run records about where and on what the study ran."""
        import mlflow

        return {
            "optuna.study_name": self.shared.name, "data.name": self.ratings.name,
            "data.fingerprint": self.ratings.fingerprint, "split.fingerprint": self.data.fingerprint,
            "data.duplicates_dropped": str(self.ratings.duplicates_dropped),
            "space.digest": self.space.digest(), "device": str(self.device), "device.name": device_name(self.device),
            "git.commit": _git_commit(), "version.torch": torch.__version__, "version.optuna": optuna.__version__,
            "version.mlflow": mlflow.__version__, "version.python": platform.python_version(),
        }


def prepare(options: SearchOptions, tracker_wait: float = 0.0) -> Session:
    """Check everything that can be checked before touching MLflow or the study, in that order,
    so that a bad flag, file or server leaves no trace anywhere. `tracker_wait`: seconds to wait
    for a tracking server that does not answer (a worker joining a study under way)."""
    try:
        device = resolve_device(options.device)
    except ValueError as exc:
        raise SearchError(f"--{exc}") from None
    space_path = space_file(options.config or default_space(device))
    space = load_space(space_path)
    options = options.resolved(space)  # the space's register_as unless --register-as names one
    database = check_storage(options.storage, options.heartbeat, options.grace)
    # --dataset replaces the space's dataset, its options with it; the source flags apply to either.
    declared = {} if options.dataset else space.dataset.options()
    ratings = ingest.load(options.dataset or space.dataset.name, **{**declared, **ingest.source_options(options)})
    s = space.split
    data = split(ratings, s.strategy, test=s.test, valid=s.valid, k=s.k, seed=s.seed, cold=s.cold)
    cap = Cap(options.n_trials or space.trials)
    _check_memory(space, data, device, min(_stack(options, space, device), cap.n))  # never more than the cap trains
    _check_features(space, data)
    name = _study_name(options, ratings, space)
    storage = database or _existing_journal(options)
    _check_recorded(storage, name, options)
    tracker = Tracker.connect(configure_mlflow(options.tracking_uri), options.experiment, wait=tracker_wait)
    storage = storage or open_storage(options.storage, options.heartbeat, options.grace)
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
        storage.heartbeat_stale_trial_callback = CloseStaleRuns(tracker)
    shared = open_study(storage, name, space, data, options.seed, grace=options.grace)
    _record(shared.study, options)
    _check_recorded(storage, name, options)  # another process created it with other values meanwhile
    return Session(options, space, ratings, data, shared, tracker, device, cap, space_path)


# What a study remembers of the flags it was created with (user attrs), and refuses to resume
# with others: its trials would split across two experiments, its model go under another name.
_RECORDED = {"mlflow_experiment": ("--experiment", "experiment"), "registered_model": ("--register-as", "register_as")}


def _study_name(options: SearchOptions, ratings: Ratings, space: SearchSpace) -> str:
    if options.study_name:
        return options.study_name  # checked by SearchOptions
    name = f"{ratings.name}-{space.name}"
    check_study_name(name, flag="study name (<dataset>-<space>; pass a shorter --study-name)")
    return name


def _existing_journal(options: SearchOptions) -> optuna.storages.BaseStorage | None:
    """The journal storage if its file exists (a study may be resumed), else None: opening it
    would create the file, a trace this early."""
    if "://" in options.storage or not Path(options.storage.removeprefix("journal:")).exists():
        return None
    return open_storage(options.storage, options.heartbeat, options.grace)


def _check_recorded(storage: optuna.storages.BaseStorage | None, name: str, options: SearchOptions) -> None:
    """Refuse to resume study `name` with another --experiment or --register-as than it was
    created with (_RECORDED); a study not yet in `storage` (or no storage yet) passes."""
    try:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name)) if storage else {}
    except KeyError:
        return
    for key, (flag, field) in _RECORDED.items():
        value = getattr(options, field)
        if key in attrs and attrs[key] != value:
            raise SearchError(
                f"{flag} {value!r}: expected {attrs[key]!r}, what study {name!r} was created with (a study "
                f"keeps one experiment and one registered model); pass {flag} {attrs[key]!r} to resume it, "
                "or a new --study-name for a new study")


def _record(study: optuna.Study, options: SearchOptions) -> None:
    """Remember _RECORDED in a new study (or one made before it was recorded)."""
    attrs = study.user_attrs
    for key, (_, field) in _RECORDED.items():
        if key not in attrs:
            study.set_user_attr(key, getattr(options, field))


def _check_features(space: SearchSpace, data: Split) -> None:
    """Refuse a space that can choose side features the data does not have, before any work."""
    have = {side for side, blocks in data.features.items() if blocks}
    for config in space_corners(space):
        missing = [side for side in ("user", "item") if config.features in (side, "both") and side not in have]
        if missing:
            raise SearchError(
                f"params.features: the space can choose {config.features!r}, but {data.ratings.name} has no "
                f"{' or '.join(missing)} features: pass --{missing[0]}-features FILE, or remove that choice")


def _check_memory(space: SearchSpace, data: Split, device: torch.device, stack: int) -> None:
    """Refuse a space whose largest model (or stack of `stack` models: at most the cap's, since
    no batch asks more trials than the cap has slots) cannot fit on the device, before any training."""

    def need(c: TrainConfig) -> int:
        one = c.memory_bytes(data.n_users, data.n_items, len(data.train_rows), len(data.valid_rows))
        return one if stack_key(c) is None else stack * one  # a stack: K models' tables, rows and state

    largest = max(space_corners(space), key=need)
    have = device_memory(device)
    if need(largest) > have:
        stacked = stack_key(largest) is not None and stack > 1
        what = f"a stack of {stack} {largest.family} models" if stacked else f"a {largest.family} model"
        raise SearchError(
            f"params.factors: {what} with {largest.factors} factors on {data.n_users} users x {data.n_items} items "
            f"needs ~{need(largest) / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB of {device}; "
            "lower the space's factors (or epochs, for bayes; or --stack)")


def _stack(options: SearchOptions, space: SearchSpace, device: torch.device) -> int:
    return options.stack or space.stack or default_stack(device)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"
