"""The default search from a clean folder: wall time, trial count, refit test RMSE.

    python bench/search_default.py [--split-seed 0] [--config mf] [--n-trials N] [--space FILE --label L]

Runs `python -m pipeline.search` as a user would (fresh journal and MLflow database in a temporary
folder), then reads the study's summary and trials: how many completed, were pruned, were guided by
TPE (started after the sampler's start-up trials had finished), and the epochs/sweeps they ran.
`--space FILE`: a space file instead of the shipped one (e.g. an older version, to compare on the
same machine), recorded under `--label`. Writes bench/results/search_default-<label>-split<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from pipeline.space import SEARCH_SPACES, load_space


def run_default(split_seed: int, config: str = "mf", n_trials: int | None = None, space_file: str | None = None,
                label: str | None = None) -> dict:
    """Run the search in a fresh folder; returns the record (also written to bench/results/)."""
    space = load_space(space_file or config)
    with tempfile.TemporaryDirectory() as tmp:
        raw = yaml.safe_load(Path(space_file or SEARCH_SPACES / f"{space.name}.yaml").read_text())
        raw["split"]["seed"] = split_seed
        config = Path(tmp) / f"{space.name}.yaml"
        # keys in the file's order: params are suggested in it, so the draws are the shipped file's
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        command = [sys.executable, "-m", "pipeline.search", "--config", str(config), "--quiet",
                   "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--storage", f"{tmp}/optuna.journal"]
        if n_trials:
            command += ["--n-trials", str(n_trials)]
        start = time.perf_counter()
        out = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{tmp}/optuna.journal"))
        (name,) = optuna.get_all_study_names(storage)  # the search leaves its study and nothing else
        study = optuna.load_study(study_name=name, storage=storage)
        summary = study.user_attrs["summary"]
        trials = _trials(study, raw["sampler"].get("options", {}).get("n_startup_trials", 10))
    print(out.stdout)
    record = {"date": time.strftime("%Y-%m-%d"), "split_seed": split_seed, "config": space.name,
              "space_digest": space.digest(),
              "wall_seconds": wall, "trials": summary["trials"], **trials, "best_valid_rmse": summary["best_valid_rmse"],
              "test_rmse": summary["test_rmse"], "test_mae": summary["test_mae"], "reference": summary["reference"],
              "best_params": summary["best_params"], "command": "python bench/search_default.py " + " ".join(sys.argv[1:])}
    print(f"wall {wall:.0f} s, test RMSE {summary['test_rmse']:.4f}, {trials}")
    path = Path(__file__).parent / "results" / f"search_default-{label or space.name}-split{split_seed}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return record


def _trials(study: optuna.Study, startup: int) -> dict:
    """Counts by state and family, the TPE-guided ones, and the epochs (sweeps) every trial ran."""
    trials = study.get_trials(deepcopy=False)
    ended = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    # TPE samples at random until `startup` trials have completed or been pruned (Optuna's rule);
    # trials end in number order here (one process), so trial k saw the k trials before it.
    return {"complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "tpe_guided": sum(1 for t in ended if t.number >= startup),
            "bayes_trials": sum(t.params.get("family") == "bayes" for t in trials),
            "epochs_run": {t.number: len(t.intermediate_values) for t in trials}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--config", default="mf")
    p.add_argument("--n-trials", type=int)
    p.add_argument("--space", help="a space file to run instead of the shipped --config")
    p.add_argument("--label", help="the result file's label (default: the space's name)")
    args = p.parse_args()
    run_default(args.split_seed, args.config, args.n_trials, args.space, args.label)


if __name__ == "__main__":
    main()
