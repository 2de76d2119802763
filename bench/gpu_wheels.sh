#!/usr/bin/env bash
# Prepare, on this machine, what bench/gpu_check.sh needs on the GPU machine (no network there):
# .whl/ — wheels for Python 3.12 of the packages the search needs that the GPU image lacks (optuna,
# mlflow, pydantic and their dependencies, ~35 MiB; the image's own list: the device tool's KINDS.md),
# .gpu/ml-100k.inter — ml-100k's ratings, copied out of the recbole wheel. Both are ignored by git
# and travel with `carry: [".whl", ".gpu"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="alembic==1.20.1 annotated-types==0.8.0 blinker==1.9.0 cachetools==7.3.3 cffi==2.1.1 colorlog==6.12.0
cryptography==50.0.2 databricks-sdk==0.162.0 docker==7.2.0 fastapi==0.165.0 flask==3.1.3 flask-cors==6.0.5
gitdb==4.0.12 gitpython==3.2.1 google-auth==2.63.0 graphene==3.4.3 graphql-core==3.2.14 graphql-relay==3.2.0
gunicorn==26.2.0 huey==3.5.4 importlib-metadata==9.1.0 itsdangerous==2.2.0 mako==1.4.3 mlflow==3.17.2
mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 opentelemetry-api==1.45.2 opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 optuna==5.0.0 prettytable==3.18.0
pyasn1==0.6.5 pyasn1-modules==0.4.2 pycparser==3.12 pydantic==2.14.4 pydantic-core==2.50.5 python-dotenv==1.2.4
skops==0.16.0 smmap==5.0.3 sqlalchemy==2.1.9 sqlparse==0.6.1 starlette==1.10.0 typing-inspection==0.4.5
uvicorn==0.54.0 wcwidth==0.9.4"
mkdir -p .whl .gpu
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $WHEELS
.venv/bin/python - <<'PY'
import importlib.metadata, shutil
inter = importlib.metadata.distribution("recbole").locate_file("recbole/dataset_example/ml-100k/ml-100k.inter")
shutil.copy(inter, ".gpu/ml-100k.inter")
PY
du -sh .whl .gpu
