"""The GPU's figures for issue 12: trainer throughput per family and batch size on ml-100k, and
the default study's wall time on the device against the same command on the project's CPU.

    python bench/gpu.py --out DIR [--device cuda] [--ratings PATH] [--skip-search]

Throughput: `fit`'s examples/s (batch loops only; one warm-up fit first) for mf with sparse_sgd
and Adam at several batch sizes and for bayes (rank 32, both implicit blocks): DIR/gpu-throughput.json.
Search: `python -m pipeline.search`, the same command as on the CPU (its default space on the
device: mf-cuda on a GPU, with stacked trials), wall seconds, against
`wall_seconds` of bench/results/search_default-mf-split0.json (the same space and split on the
project's 2-core CPU): DIR/gpu-search.json with device_name, cpu_seconds, cuda_seconds and
search_speedup_vs_cpu. The throughput part needs torch, numpy and pandas only; the search needs
optuna, mlflow and pydantic (bench/gpu_wheels.sh carries them to a machine without them).
`--ratings`: ml-100k's ratings file (u.data or RecBole's .inter); default: the recbole wheel's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline import ingest
from pipeline.device import device_name, resolve_device
from pipeline.space import default_space
from pipeline.split import split
from pipeline.training import TrainConfig, fit

RESULTS = Path(__file__).parent / "results"
CONFIGS = [  # (label, config): the default space's families at the batch sizes that matter on each device
    *((f"mf sparse_sgd batch {b}", TrainConfig(optimizer="sparse_sgd", factors=64, lr=0.01, weight_decay=0.0, l2=0.05,
                                               batch_size=b, init_std=0.1, epochs=3)) for b in (64, 512, 4096)),
    *((f"mf adam batch {b}", TrainConfig(factors=64, batch_size=b, epochs=3)) for b in (512, 4096, 65536)),
    ("bayes rank 32 both blocks", TrainConfig(family="bayes", implicit="both", factors=32, epochs=3, burn_in=1,
                                              init_std=0.1)),
]


def throughput(data, device: torch.device) -> list[dict]:
    rows = []
    for label, config in CONFIGS:
        fit(data.part("train"), config, device=device, **data.dims)  # warm-up: kernels, allocator
        result = fit(data.part("train"), config, device=device, **data.dims)
        rows.append({"run": label, "examples_per_second": result.examples_per_second,
                     "seconds_per_epoch": result.train_seconds / len(result.history)})
        print(f"{label:<32} {result.examples_per_second / 1e6:9.2f} M examples/s", flush=True)
    return rows


def search_seconds(ratings_path: str | None, device: torch.device) -> float:
    """Wall seconds of the default search from a fresh folder, on `device`."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pipeline.search", "--quiet", "--device", str(device),
                   "--storage", f"{tmp}/optuna.journal", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
        if ratings_path:
            command += ["--dataset", ratings_path, "--rating-scale", "1,5"]
        start = time.perf_counter()
        subprocess.run(command, cwd=tmp, check=True)
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--ratings", default=None)
    p.add_argument("--skip-search", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    data = split(ingest.load(args.ratings, rating_scale=(1.0, 5.0)) if args.ratings else ingest.load("ml-100k"), seed=0)
    common = {"date": time.strftime("%Y-%m-%d"), "device": str(device), "device_name": device_name(device),
              "torch": torch.__version__, "command": "python bench/gpu.py " + " ".join(sys.argv[1:])}
    (out / "gpu-throughput.json").write_text(json.dumps({**common, "dataset": "ml-100k train (80,000 rows)",
                                                         "runs": throughput(data, device)}, indent=2))
    if args.skip_search:
        return
    cpu = json.loads((RESULTS / "search_default-mf-split0.json").read_text())["wall_seconds"]
    seconds = search_seconds(args.ratings, device)
    record = {**common, "space": default_space(device), "cpu_space": "mf", "cpu_seconds": cpu, "cpu_source": "bench/results/search_default-mf-split0.json (2-core CPU)",
              f"{device.type}_seconds": seconds, "search_speedup_vs_cpu": cpu / seconds}
    (out / "gpu-search.json").write_text(json.dumps(record, indent=2))
    print(f"default search: {seconds:.0f} s on {device_name(device)}, {cpu:.0f} s on the 2-core CPU "
          f"({cpu / seconds:.2f}x)")


if __name__ == "__main__":
    main()
