"""`python -m pipeline.search`: the study, in rooms of its own.

options (the command's flags, frozen) -> session (data, storage, MLflow, device, checked in order)
-> study (storage, leases, cap, parent run) -> workers (the trial loop, here and in helpers) ->
batch (ask/tell: the one way trials run) -> objective (one trial and its MLflow run) -> finish
(refit, test, log, register) -> report (what is printed). See docs/architecture.md.
"""

from pipeline.search.cli import main
from pipeline.search.objective import Objective
from pipeline.search.options import SearchError, SearchOptions
from pipeline.search.study import open_storage

__all__ = ["Objective", "SearchError", "SearchOptions", "main", "open_storage"]
