"""MLflow tracking overhead: the same study (same seed, same trials) with tracking on and off.

    python bench/tracking_overhead.py [--trials 40] [--config sgd] [--repeats 2]

Times the trial loop of `pipeline.search` (child runs, parameters, learning curves, states) in one
process on ml-100k; tracking goes to a fresh SQLite database in a temporary folder. Each mode runs
`repeats` times, alternating; the fastest of each is compared. Writes bench/results/tracking_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import optuna

from pipeline import ingest
from pipeline.device import resolve_device
from pipeline.search import Objective
from pipeline.search.batch import ask_batch, run_batch
from pipeline.search.study import Cap
from pipeline.space import load_space
from pipeline.split import split
from pipeline.tracking import Tracker


def one_study(space, data, dims, trials: int, tracker: Tracker | None) -> tuple[float, list[float]]:
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=space.make_sampler(0), pruner=space.make_pruner())
    shared = SimpleNamespace(study=study, storage=storage, name=study.study_name, heartbeat=False)  # as the batch sees it
    study.enqueue_trial({}, user_attrs={"reference": "d2l"})
    if tracker is not None:
        tracker.create_parent("overhead", {})
    objective = Objective(space, data.part("train"), data.part("valid"), dims, device=resolve_device(), seed=0,
                          tracker=tracker, study_name="overhead")
    start = time.perf_counter()
    for _ in range(trials):  # one trial at a time, as a CPU search runs them
        run_batch(shared, objective, ask_batch(shared, Cap(trials), 1), [])
    seconds = time.perf_counter() - start
    if tracker is not None:
        tracker.close_parent("FINISHED")
    return seconds, [t.value for t in study.trials]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--config", default="sgd")  # many short trials: the SGD space (its record predates the rename)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(args.config)
    ratings = ingest.load(space.dataset.name, **space.dataset.options())
    data = split(ratings, seed=space.split.seed)
    dims = data.dims
    times = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker.connect(f"sqlite:///{tmp}/mlflow.db", "overhead")
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                seconds, values = one_study(space, data, dims, args.trials, tracker if mode == "on" else None)
                times[mode].append(seconds)
                print(f"tracking {mode:>3}: {seconds:7.2f} s for {args.trials} trials", flush=True)
        same = values == one_study(space, data, dims, args.trials, None)[1]
    best = {mode: min(ts) for mode, ts in times.items()}
    overhead = best["on"] / best["off"] - 1
    print(f"overhead: {100 * overhead:+.1f} % (fastest of {args.repeats} each); same trial values: {same}")
    out = Path(__file__).parent / "results" / "tracking_overhead.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.node() and platform.machine(),
                               "trials": args.trials, "config": args.config, "seconds": times,
                               "overhead": overhead, "same_trial_values": same,
                               "command": "python bench/tracking_overhead.py " + " ".join(sys.argv[1:])}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
