"""`python -m pipeline.search`: an Optuna study of MF models, tracked in MLflow, the best registered.

ingest -> split -> [per trial: fit -> valid RMSE, reported per epoch, prunable] -> refit the best
on train+valid -> test once -> log the model (pt2, raw ids in) -> register, move `champion` if it wins.
Rerunning the same command resumes the same study.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from pipeline import ingest
from pipeline.evaluate import baselines, evaluate
from pipeline.model import RawIdScorer
from pipeline.space import SEARCH_SPACES, SearchSpace, SpaceError, load_space, suggest
from pipeline.split import Interactions, Split, split
from pipeline.tracking import Tracker, TrackingError, TrialRun, resolve_tracking_uri
from pipeline.trainer import TrainConfig, TrainingDiverged, default_device, fit

__all__ = ["Objective", "SearchError", "main", "open_storage"]

DEFAULT_STORAGE = "optuna.journal"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SearchError(RuntimeError):
    """Refused before any work: bad storage, a study that belongs to another space or split."""


# --- storage and study ---------------------------------------------------------------------


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A database URL (postgresql+psycopg2://, sqlite:///...) or a journal file path (the default:
    safe for several local processes, which SQLite is not)."""
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(_journal_path(url))))
    import sqlalchemy.exc

    kwargs = {}
    if not url.startswith("sqlite"):
        # Stale trials of dead workers are failed after the grace period (and retried: see prepare).
        kwargs = dict(heartbeat_interval=int(os.environ.get("PIPELINE_HEARTBEAT", 10)),
                      grace_period=int(os.environ.get("PIPELINE_GRACE", 30)),
                      engine_kwargs={"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2})
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers starting together race to create the tables; the loser finds them next time.
            time.sleep(0.5 + attempt)
        except Exception as exc:  # noqa: BLE001 - driver errors share no base worth naming
            raise SearchError(f"--storage {url}: cannot open ({type(exc).__name__}: {exc})") from None
    raise SearchError(f"--storage {url}: could not create Optuna's tables (another process keeps racing)")


def _journal_path(url: str) -> Path:
    path = Path(url.removeprefix("journal:"))
    if not path.parent.is_dir():
        raise SearchError(f"--storage {url}: folder {path.parent} does not exist")
    return path


def open_study(storage, name: str, space: SearchSpace, data: Split, seed: int) -> optuna.Study:
    """Create or resume `name`; refuse it if it was made for another search space or split."""
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True,
                                sampler=space.make_sampler(seed), pruner=space.make_pruner())
    expected = {"space_digest": space.digest(), "split_fingerprint": data.fingerprint}
    attrs = study.user_attrs
    for key, value in expected.items():
        if key in attrs and attrs[key] != value:
            raise SearchError(
                f"study {name!r} was created for another {key.split('_')[0]} ({key} {attrs[key][:12]}…, "
                f"this run's {value[:12]}…): pass a new --study-name, or the original search space and data")
    if not attrs and claim(study, "init"):  # once, however many workers start together
        if space.reference:  # trial 0: the d2l tutorial's configuration, the study's reference point
            study.enqueue_trial({}, user_attrs={"reference": "d2l"})
        for key, value in expected.items():
            study.set_user_attr(key, value)
    return study


def claim(study: optuna.Study, what: str) -> bool:
    """True for exactly one caller per (study, what), across processes and machines.

    Optuna's storages have one atomic primitive that every backend shares: a study name is unique
    (a database constraint; the journal's log order). A marker study named after the claim is it."""
    try:
        study._storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], f"{study.study_name}:{what}")
        return True
    except optuna.exceptions.DuplicatedStudyError:
        return False


def wait_for_attr(study: optuna.Study, key: str, timeout: float = 600.0, check=lambda value: True):
    """The study user attr `key`, once another worker has set it (and `check` accepts it)."""
    deadline = time.monotonic() + timeout
    while (value := study.user_attrs.get(key)) is None or not check(value):
        if time.monotonic() > deadline:
            raise SearchError(f"study {study.study_name!r}: waited {timeout:.0f} s for another worker to set {key!r}")
        time.sleep(0.5)
    return value


PARENT_ATTR = "mlflow_parent_run_id"


def attach_parent(p: Prepared, tags: dict[str, str]) -> bool:
    """Attach to the study's one MLflow parent run, creating it if this process wins the claim.
    Returns True when this process created it (and so logs the study's inputs)."""
    previous = p.study.user_attrs.get(PARENT_ATTR)
    if previous is not None and p.tracker.reopen_parent(previous, tags):
        return False
    # Claim keyed by the run it replaces: a tracking store that lost the old parent gets one new one.
    if claim(p.study, f"mlflow-parent-after-{previous or 'none'}"):
        p.study.set_user_attr(PARENT_ATTR, p.tracker.create_parent(p.study.study_name, tags))
        return True
    run_id = wait_for_attr(p.study, PARENT_ATTR, check=lambda value: value != previous)
    if not p.tracker.reopen_parent(run_id, tags):
        raise SearchError(f"MLflow parent run {run_id} of study {p.study.study_name!r} is not in {p.tracker.tracking_uri}")
    return False


def close_orphan_runs(p: Prepared) -> int:
    """Close child runs left RUNNING by a trial that is over (a worker killed or interrupted at a
    bad moment); returns how many. Runs of trials still running elsewhere are left alone."""
    states = {t.number: t.state for t in p.study.get_trials(deepcopy=False)}
    closed = 0
    for run in p.tracker.running_children():
        number = int(run.data.tags.get("optuna.trial_number", -1))
        if states.get(number, TrialState.FAIL) not in (TrialState.RUNNING, TrialState.WAITING):
            p.tracker.fail_run(run.info.run_id, f"trial {number} ended without closing its run")
            closed += 1
    return closed


class CloseStaleRuns:
    """Heartbeat callback: a trial whose worker died is failed by Optuna and retried
    (RetryHeartbeatStaleTrialCallback); its MLflow child run, left RUNNING, is closed as FAILED."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            self.tracker.fail_run(run_id, f"worker died: no heartbeat for trial {trial.number}; retried")


# --- the objective -------------------------------------------------------------------------


def trial_seed(study_seed: int, trial_number: int) -> int:
    return (study_seed * 1_000_003 + trial_number) % 2**31


class _NoRun:
    """Stands in for a TrialRun when tracking is off (benchmarks)."""

    run_id = None

    def epoch(self, epoch: int, **values: float) -> None:
        pass

    def end(self, status: str, metrics=None, tags=None) -> None:
        pass


class OverCap(RuntimeError):
    """Another worker took the study's last slot between our check and our trial's start."""


class Objective:
    """Built once with the data on the device; called by Optuna once per trial."""

    def __init__(self, space: SearchSpace, train: Interactions, valid: Interactions, dims: dict, *,
                 device: torch.device, seed: int, tracker: Tracker | None, study_name: str,
                 cap: int | None = None) -> None:
        self.space, self.train, self.valid, self.dims = space, train.to(device), valid.to(device), dims
        self.device, self.seed, self.tracker, self.study_name, self.cap = device, seed, tracker, study_name, cap

    def _over_cap(self, trial: optuna.Trial) -> bool:
        """Trial numbers are unique and ordered: the cap's slots go to the lowest non-failed numbers."""
        if self.cap is None:
            return False
        earlier = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING))
        return sum(t.number < trial.number for t in earlier) >= self.cap

    def config(self, trial: optuna.Trial) -> TrainConfig:
        if trial.user_attrs.get("reference") == "d2l":
            return TrainConfig()
        return suggest(trial, self.space)

    def __call__(self, trial: optuna.Trial) -> float:
        if self._over_cap(trial):
            trial.set_user_attr("fail_reason", "over the study's cap: another worker took the last slot")
            raise OverCap(trial.user_attrs["fail_reason"])
        config = self.config(trial)
        trial.set_user_attr("config", config.to_dict())
        try:
            run: TrialRun | _NoRun = (self.tracker.start_trial(
                trial.number, {**config.to_dict(), "trial_number": trial.number}, self.study_name)
                if self.tracker else _NoRun())
        except TrackingError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise

        def on_epoch(epoch: int, train_mse: float, valid_rmse: float) -> None:
            run.epoch(epoch, train_mse=train_mse, valid_rmse=valid_rmse)
            trial.report(valid_rmse, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: valid RMSE {valid_rmse:.4f}")

        try:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            result = fit(self.train, config, valid=self.valid, seed=trial_seed(self.seed, trial.number),
                         device=self.device, callback=on_epoch, **self.dims)
        except optuna.TrialPruned:
            run.end("KILLED", tags={"optuna.state": "PRUNED"})
            raise
        except (TrainingDiverged, TrackingError) as exc:
            trial.set_user_attr("fail_reason", str(exc))
            _end_quietly(run, "FAILED", {"optuna.state": "FAIL", "fail_reason": str(exc)})
            raise
        except BaseException as exc:  # Ctrl-C, a bug: never leave the run RUNNING
            _end_quietly(run, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                         {"optuna.state": "FAIL", "fail_reason": repr(exc)[:500]})
            raise
        trial.set_user_attr("best_epoch", result.best_epoch)
        try:
            run.end("FINISHED", tags={"optuna.state": "COMPLETE"}, metrics={
                "best_valid_rmse": result.best_valid_rmse, "best_epoch": result.best_epoch,
                "epochs_run": len(result.history), "train_seconds": result.train_seconds,
                "examples_per_second": result.examples_per_second})
        except TrackingError as exc:
            trial.set_user_attr("fail_reason", str(exc))
            raise
        return result.best_valid_rmse


def _end_quietly(run, status: str, tags: dict) -> None:
    """Close the run on the way out of a failure; a tracking error here must not hide the first one."""
    try:
        run.end(status, tags=tags)
    except TrackingError as exc:
        print(f"warning: could not close MLflow run {run.run_id}: {exc}", file=sys.stderr)


# --- progress ------------------------------------------------------------------------------


class Progress:
    """One line per trial (a redrawn bar on a terminal): done/total, best so far, elapsed, ETA."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        self.total, self.start_done, self.quiet = total, done, quiet
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.quiet:
            return
        done = _count(study, FINISHED)
        elapsed = time.monotonic() - self.start
        rate = elapsed / max(done - self.start_done, 1)
        eta = rate * max(self.total - done, 0)
        try:
            best = f"best valid RMSE {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        width = 24
        filled = int(width * min(done, self.total) / self.total)
        state = trial.state.name.lower()
        if trial.state == TrialState.FAIL:
            state += f": {trial.user_attrs.get('fail_reason', 'see the log')}"
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} trials | {best} | "
                f"{_clock(elapsed)} elapsed, ETA {_clock(eta)} | trial {trial.number} {state}")
        print(("\r" + line.ljust(150)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


# --- the command ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(SEARCH_SPACES / "mf.yaml"),
                   help="search-space YAML, or the name of one in search_spaces/ (default: mf)")
    p.add_argument("--dataset", help="override the space's dataset (MovieLens name, synthetic, or a file)")
    p.add_argument("--n-trials", type=int, help="study-wide cap on finished trials (default: the space's)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--study-name", help="default: <dataset>-<space>; rerunning resumes it")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="Optuna storage: a journal file path (default optuna.journal) or a database URL")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's)")
    p.add_argument("--experiment", default="pipeline", help="MLflow experiment name")
    p.add_argument("--register-as", default="mf-movielens", help="registered model name")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine, sharing the study")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


@dataclass
class Prepared:
    """Everything checked before any training starts."""

    space: SearchSpace
    space_path: Path
    ratings: ingest.Ratings
    data: Split
    study: optuna.Study
    tracker: Tracker
    device: torch.device
    cap: int


def prepare(args: argparse.Namespace, tracker_wait: float = 0.0) -> Prepared:
    """Check everything that can be checked before touching MLflow or the study, in that order,
    so that a bad flag, file or server leaves no trace anywhere."""
    space_path = Path(args.config)
    space = load_space(space_path)
    space_path = space_path if space_path.suffix else SEARCH_SPACES / f"{space_path}.yaml"
    if args.n_trials is not None and args.n_trials < 1:
        raise SearchError(f"--n-trials {args.n_trials}: expected >= 1")
    if args.workers < 1:
        raise SearchError(f"--workers {args.workers}: expected >= 1")
    try:
        device = torch.device(args.device) if args.device else default_device()
        torch.empty(0, device=device)
    except RuntimeError as exc:
        raise SearchError(f"--device {args.device}: {exc}") from None
    database = None
    if "://" in args.storage:
        database = open_storage(args.storage)  # connects: a bad URL fails here
    else:
        _journal_path(args.storage)  # only checked: opening a journal creates the file
    ratings = ingest.load(args.dataset or space.dataset)
    s = space.split
    data = split(ratings, s.strategy, test=s.test, valid=s.valid, k=s.k, seed=s.seed, cold=s.cold)
    tracker = Tracker.connect(resolve_tracking_uri(args.tracking_uri), args.experiment, wait=tracker_wait)
    storage = database or open_storage(args.storage)
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
        storage.heartbeat_stale_trial_callback = CloseStaleRuns(tracker)
    name = args.study_name or f"{ratings.name}-{space.name}"
    study = open_study(storage, name, space, data, args.seed)
    return Prepared(space, space_path, ratings, data, study, tracker, device, args.n_trials or space.trials)


def run_trials(p: Prepared, objective: Objective, *, timeout: float | None, quiet: bool) -> int:
    """Run trials until the study holds `cap` finished (complete or pruned) trials, counting every
    worker's; returns how many this process ran. One trial per `optimize` call, so the cap is
    checked before each trial, and a worker that finds the others' running trials fill the cap
    waits for them where a heartbeat can still fail them (a dead worker's trial is then retried)."""
    study = p.study
    # Private module, public function: Optuna wraps the storage (a cache), so ask it, not isinstance.
    from optuna.storages._heartbeat import is_heartbeat_enabled

    heartbeat = is_heartbeat_enabled(study._storage)
    progress = Progress(p.cap, _count(study, FINISHED), quiet)
    deadline = time.monotonic() + timeout if timeout else None
    ran = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            if heartbeat:
                optuna.storages.fail_stale_trials(study)
            states = Counter(t.state for t in study.get_trials(deepcopy=False))
            finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
            running, waiting = states[TrialState.RUNNING], states[TrialState.WAITING]
            if finished >= p.cap or states[TrialState.FAIL] >= p.cap:
                break
            if finished + running >= p.cap and not waiting:
                if not heartbeat:
                    break  # without a heartbeat nobody can fail a dead worker's trial: do not wait
                time.sleep(1.0)
                continue
            study.optimize(objective, n_trials=1, catch=(TrainingDiverged, TrackingError, OverCap),
                           callbacks=[progress])
            ran += 1
    finally:
        progress.close()
    return ran


def _count(study: optuna.Study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _parent_tags(p: Prepared) -> dict[str, str]:
    import mlflow

    return {
        "optuna.study_name": p.study.study_name, "data.name": p.ratings.name,
        "data.fingerprint": p.ratings.fingerprint, "split.fingerprint": p.data.fingerprint,
        "space.digest": p.space.digest(), "device": str(p.device),
        "device.name": torch.cuda.get_device_name(p.device) if p.device.type == "cuda" else platform.processor() or "cpu",
        "git.commit": _git_commit(), "version.torch": torch.__version__, "version.optuna": optuna.__version__,
        "version.mlflow": mlflow.__version__, "version.python": platform.python_version(),
    }


def _log_study_inputs(p: Prepared) -> None:
    t = p.tracker
    t.log_text(p.space_path.read_text(), "search_space.yaml")
    t.log_text(json.dumps({"space": p.space.model_dump(), "split": p.data.settings, "split_summary": p.data.summary(),
                           "trials_cap": p.cap, "study_name": p.study.study_name}, indent=2, default=str),
               "resolved_config.json")
    frame = p.ratings.frame
    for part in ("train", "valid", "test"):
        rows = getattr(p.data, f"{part}_rows")
        t.log_dataset(frame.iloc[rows[:10_000]], name=f"{p.ratings.name}-{part}",
                      digest=f"{p.data.fingerprint[:16]}-{part}", source=p.ratings.source, context=part)


def refit(p: Prepared, fit_rows: Interactions, test_rows: Interactions, config: dict, epochs: int,
          seed: int) -> tuple:
    """Train `config` on `fit_rows` (train+valid) for `epochs` and score it on `test_rows` once."""
    dims = dict(n_users=p.data.n_users, n_items=p.data.n_items, rating_scale=p.ratings.rating_scale)
    conf = dataclasses.replace(TrainConfig(**config), epochs=max(epochs, 1), patience=None)
    result = fit(fit_rows, conf, seed=seed, device=p.device, **dims)
    return result.model, evaluate(result.model, test_rows)


def finish(p: Prepared, args: argparse.Namespace) -> dict:
    """Refit the best trial, test it, log plots, trials and the model, register it."""
    study, tracker = p.study, p.tracker
    best = study.best_trial
    fit_rows, test_rows = p.data.part("train+valid"), p.data.part("test")  # encoded once, used thrice
    model, test = refit(p, fit_rows, test_rows.to(p.device), best.user_attrs["config"],
                        best.user_attrs["best_epoch"], args.seed)
    trials = {t.number: t for t in study.trials}
    dims = (p.data.n_users, p.data.n_items, p.ratings.rating_scale)
    reference = {k: {"test_rmse": m.rmse, "test_mae": m.mae}
                 for k, m in baselines(fit_rows, test_rows, *dims).items()}
    if p.space.reference:
        seed_trial = next((t for t in trials.values() if t.user_attrs.get("reference") == "d2l"), None)
        seed_epochs = seed_trial.user_attrs.get("best_epoch", 20) if seed_trial else 20
        _, seed_test = refit(p, fit_rows, test_rows.to(p.device), TrainConfig().to_dict(), seed_epochs, args.seed)
        reference = {"d2l_config": {"test_rmse": seed_test.rmse, "test_mae": seed_test.mae}, **reference}

    figures, skipped = _log_figures(p)
    tracker.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv")
    summary = {
        "study": study.study_name, "best_trial": best.number, "best_params": best.user_attrs["config"],
        "best_epoch": best.user_attrs["best_epoch"], "best_valid_rmse": best.value,
        "test_rmse": test.rmse, "test_mae": test.mae,
        "reference": reference,
        "trials": {s.name.lower(): sum(t.state == s for t in trials.values()) for s in TrialState},
        "plots": figures, "plots_skipped": skipped,
    }
    tracker.log_parent(
        params={f"best.{k}": v for k, v in best.user_attrs["config"].items()},
        metrics={"best_valid_rmse": best.value, "test_rmse": test.rmse, "test_mae": test.mae,
                 **{f"reference.{k}_test_{m}": v[f"test_{m}"] for k, v in reference.items() for m in ("rmse", "mae")}},
        tags={"best_trial": best.number})
    uri, version, alias = _log_and_register(p, model, test.rmse, args.register_as)
    summary.update(model_uri=uri, registered=f"models:/{args.register_as}/{version}" if version else None,
                   alias=alias, alias_uri=f"models:/{args.register_as}@{alias}" if alias else None)
    return summary


def _log_figures(p: Prepared) -> tuple[list[str], dict[str, str]]:
    import matplotlib.pyplot as plt

    from pipeline.plots import study_figures

    figures, skipped = study_figures(p.study)
    for name, figure in figures.items():
        p.tracker.log_figure(figure, f"plots/{name}")
        plt.close(figure)
    return sorted(figures), skipped


def _log_and_register(p: Prepared, model, test_rmse: float, register_as: str):
    user_ids, item_ids = p.data.user_ids, p.data.item_ids
    if not (np.issubdtype(user_ids.dtype, np.integer) and np.issubdtype(item_ids.dtype, np.integer)):
        return None, None, None  # the exported graph takes int64 ids only; string ids stay unexported
    scorer = RawIdScorer(model.cpu().eval(), torch.from_numpy(user_ids), torch.from_numpy(item_ids)).eval()
    test_rows = p.data.test_rows[:8] if len(p.data.test_rows) > 1 else p.data.train_rows[:8]
    frame = p.ratings.frame
    example = np.stack([frame["user_id"].to_numpy()[test_rows], frame["item_id"].to_numpy()[test_rows]], 1)
    seen_rows = np.concatenate([p.data.train_rows, p.data.valid_rows])
    with tempfile.TemporaryDirectory() as tmp:
        # For `recommend`: what each user has already rated, and the titles where the data has them.
        seen = frame.iloc[seen_rows][["user_id", "item_id"]]
        seen.to_parquet(Path(tmp) / "seen.parquet", index=False)
        (Path(tmp) / "items.json").write_text(json.dumps(
            {"dataset": p.ratings.name, "titles": {str(k): v for k, v in p.ratings.item_titles.items()}}))
        uri = p.tracker.log_model(scorer, example.astype(np.int64),
                                  [str(Path(tmp) / "seen.parquet"), str(Path(tmp) / "items.json")],
                                  metadata={"split_fingerprint": p.data.fingerprint, "dataset": p.ratings.name})
    version, alias = p.tracker.register(uri, register_as, test_rmse, p.data.fingerprint)
    return uri, version, alias


def print_summary(s: dict, tracking_uri: str) -> None:
    rows = [("best (refit on train+valid)", s["test_rmse"], s["test_mae"])]
    rows += [(f"reference: {k.replace('_', ' ')}", v["test_rmse"], v["test_mae"]) for k, v in s["reference"].items()]
    print(f"\nstudy {s['study']}: trials {', '.join(f'{n} {k}' for k, n in s['trials'].items() if n)}")
    print(f"best trial {s['best_trial']}: valid RMSE {s['best_valid_rmse']:.4f} at epoch {s['best_epoch']}")
    print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in s["best_params"].items() if v is not None))
    print(f"\n{'model':<34}{'test RMSE':>10}{'test MAE':>10}")
    for name, rmse, mae in rows:
        print(f"{name:<34}{rmse:>10.4f}{mae:>10.4f}")
    if s["alias_uri"]:
        print(f"\nregistered {s['registered']} as {s['alias']}: load it with {s['alias_uri']}")
    else:
        print("\nnot registered: the model takes int64 raw ids and this dataset's ids are strings")
    for name, why in s["plots_skipped"].items():
        print(f"plot {name} skipped: {why}")
    ui = "mlflow ui" + ("" if tracking_uri == "sqlite:///mlflow.db" else f" --backend-store-uri {tracking_uri}")
    if tracking_uri.startswith("http"):
        ui = f"open {tracking_uri}"
    print(f"compare every trial: {ui}")


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress line reports each trial


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_libraries()
    try:
        p = prepare(args)
        created = attach_parent(p, _parent_tags(p))
    except (SpaceError, ingest.IngestError, TrackingError, SearchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"study {p.study.study_name}: {p.ratings.name} ({len(p.ratings):,} ratings), split "
              f"{p.data.summary()}, device {p.device}, cap {p.cap} trials, {args.workers} worker(s); "
              f"MLflow {p.tracker.tracking_uri}", file=sys.stderr)
    status = "FAILED"
    try:
        if created:
            _log_study_inputs(p)
        close_orphan_runs(p)
        code = run_workers(p, args)
        if code:
            status = "KILLED" if code == 130 else "FAILED"
            return code
        if not any(t.state == TrialState.COMPLETE for t in p.study.trials):
            print("error: no trial completed; see the failed trials in MLflow", file=sys.stderr)
            return 1
        best = p.study.best_trial.number
        if claim(p.study, f"finish-{best}"):
            summary = finish(p, args)
            p.study.set_user_attr("summary", summary)
            status = "FINISHED"
        else:  # another worker (or an earlier run) refits and registers this best trial
            summary = wait_for_attr(p.study, "summary", check=lambda value: value["best_trial"] == best)
            status = None
    except KeyboardInterrupt:
        status = "KILLED"
        print("\ninterrupted: the study is saved; rerun the same command to resume it", file=sys.stderr)
        return 130
    finally:
        if status is not None:
            p.tracker.close_parent(status)
    print_summary(summary, p.tracker.tracking_uri)
    return 0


def make_objective(p: Prepared, args: argparse.Namespace) -> Objective:
    dims = dict(n_users=p.data.n_users, n_items=p.data.n_items, rating_scale=p.ratings.rating_scale)
    return Objective(p.space, p.data.part("train"), p.data.part("valid"), dims, device=p.device, seed=args.seed,
                     tracker=p.tracker, study_name=p.study.study_name, cap=p.cap)


# --- several workers on one machine --------------------------------------------------------


def run_workers(p: Prepared, args: argparse.Namespace) -> int:
    """Run the trial loop here and, for `--workers N`, in N - 1 more processes, each with its own
    copy of the data on its device; all share the study's cap through the storage. Returns 0, or
    the first failing worker's exit code (130 for Ctrl-C)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no forked torch/MLflow state
    helpers = [context.Process(target=_worker, args=(_worker_argv(args),), name=f"worker-{i}")
               for i in range(1, args.workers)]
    for w in helpers:
        w.start()  # their start-up (imports, data) overlaps with this process's first trials
    try:
        run_trials(p, make_objective(p, args), timeout=args.timeout or p.space.timeout, quiet=args.quiet)
    except KeyboardInterrupt:  # the helpers got the same SIGINT: let them close their trials
        for w in helpers:
            w.join()
        raise
    for w in helpers:
        w.join()
    codes = [w.exitcode for w in helpers]
    return next((130 if c in (130, -2) else c for c in codes if c), 0)


def _worker_argv(args: argparse.Namespace) -> list[str]:
    argv = []
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if key == "workers" or value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def _worker(argv: list[str]) -> None:
    """One worker process: the trial loop only; the parent run exists and the caller finishes."""
    args = parser().parse_args(argv)
    _quiet_libraries()
    try:
        p = prepare(args, tracker_wait=60.0)  # the study is under way: ride out a short outage
        attach_parent(p, {})
        run_trials(p, make_objective(p, args), timeout=args.timeout or p.space.timeout, quiet=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    sys.exit(main())
