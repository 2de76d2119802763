"""The default search from a clean folder: wall time, trial count, refit test RMSE.

    python bench/search_default.py [--split-seed 0] [--config mf] [--n-trials N]

Runs `python -m pipeline.search` as a user would (fresh journal and MLflow database in a temporary
folder), then reads the study's summary. Writes bench/results/search_default-split<seed>.json.
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


def run_default(split_seed: int, config: str = "mf", n_trials: int | None = None) -> dict:
    """Run the search in a fresh folder; returns the record (also written to bench/results/)."""
    space = load_space(config)
    with tempfile.TemporaryDirectory() as tmp:
        raw = yaml.safe_load((SEARCH_SPACES / f"{space.name}.yaml").read_text())
        raw["split"]["seed"] = split_seed
        config = Path(tmp) / f"{space.name}.yaml"
        config.write_text(yaml.safe_dump(raw))
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
    print(out.stdout)
    record = {"date": time.strftime("%Y-%m-%d"), "split_seed": split_seed, "config": space.name,
              "wall_seconds": wall, "trials": summary["trials"], "best_valid_rmse": summary["best_valid_rmse"],
              "test_rmse": summary["test_rmse"], "test_mae": summary["test_mae"], "reference": summary["reference"],
              "best_params": summary["best_params"], "command": f"python bench/search_default.py --split-seed {split_seed}"}
    print(f"wall {wall:.0f} s, test RMSE {summary['test_rmse']:.4f}")
    path = Path(__file__).parent / "results" / f"search_default-{space.name}-split{split_seed}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return record


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--config", default="mf")
    p.add_argument("--n-trials", type=int)
    args = p.parse_args()
    run_default(args.split_seed, args.config, args.n_trials)


if __name__ == "__main__":
    main()
