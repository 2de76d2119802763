#!/usr/bin/env bash
# A wheel built from the repo runs `--config quick` in a fresh virtualenv, away from the checkout
# (issue 20 item 6): build the wheel, make a venv without system site-packages, install torch's CPU
# build, the wheel (its dependencies from the package index as this machine configures pip) and the
# recbole wheel (MovieLens 100K offline, never imported), then run the quick search from a temporary
# folder with its MLflow store and Optuna journal inside it. Prints the numbers and writes them to
# bench/results/wheel_check.json. KEEP=1 keeps the temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WORK=$(mktemp -d /tmp/wheel-check.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
step() { echo "== $*" >&2; }
die() { echo "wheel_check: $*" >&2; exit 1; }

start=$(date +%s.%N)
step "wheel (from a copy of the working tree's files: no stale build/ of the checkout gets in)"
mkdir -p "$WORK/src"
git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$WORK/src" || die "copy failed"
"$PYTHON" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src" || die "pip wheel failed"
WHEEL=$(ls "$WORK"/dist/pipeline-*.whl) || die "no wheel built"
step "venv ($PYTHON, no system site-packages)"
"$PYTHON" -m venv "$WORK/venv" || die "venv failed"
PY="$WORK/venv/bin/python"
step "$TORCH_SPEC, the wheel, recbole (data only)"
"$PY" -m pip install -q "$TORCH_SPEC" || die "torch install failed"
"$PY" -m pip install -q "$WHEEL" || die "wheel install failed"
"$PY" -m pip install -q --no-deps recbole==1.2.1 || die "recbole install failed"
installed=$(date +%s.%N)

step "python -m pipeline.search --config quick (in $WORK/run)"
mkdir -p "$WORK/run" && cd "$WORK/run"  # away from the checkout: nothing of the repo on sys.path
# The installed copy must be the one imported, not the checkout's.
"$PY" -c "import pipeline, sys; sys.exit(pipeline.__file__.startswith('$REPO'))" || die "imported the checkout"
"$PY" -m pipeline.search --config quick --tracking-uri "sqlite:///$WORK/run/mlflow.db" \
  --storage "$WORK/run/optuna.journal" 2>"$WORK/run/stderr.txt" | tee "$WORK/run/stdout.txt"
code=${PIPESTATUS[0]}
done_at=$(date +%s.%N)
tail -n 5 "$WORK/run/stderr.txt" >&2

cd "$REPO"
mkdir -p bench/results
CODE=$code START=$start INSTALLED=$installed DONE=$done_at WHEEL=$WHEEL OUT="$WORK/run" "$PY" - <<'PY'
import importlib.metadata as md, json, os, platform, re
from pathlib import Path

out = Path(os.environ["OUT"])
text = (out / "stdout.txt").read_text() + (out / "stderr.txt").read_text()
registered = re.search(r"models:/([^/@\s]+)/(\d+)", text)
result = {
    "command": "python -m pipeline.search --config quick --tracking-uri sqlite:///<tmp>/mlflow.db "
               "--storage <tmp>/optuna.journal (from a temporary folder, a fresh venv)",
    "exit_code": int(os.environ["CODE"]),
    "search_wall_s": round(float(os.environ["DONE"]) - float(os.environ["INSTALLED"]), 1),
    "build_and_install_wall_s": round(float(os.environ["INSTALLED"]) - float(os.environ["START"]), 1),
    "wheel": Path(os.environ["WHEEL"]).name,
    "registered_model": registered.group(1) if registered else None,
    "python": platform.python_version(),
    "versions": {name: md.version(name) for name in ("torch", "optuna", "mlflow", "pandas", "numpy", "pydantic")},
}
Path("bench/results/wheel_check.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
PY
exit "$code"
