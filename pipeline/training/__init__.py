"""Training: one config type, one epoch driver, three engines behind one small surface.

- `config`: TrainConfig (typed, frozen; its field docstrings are the train command's help).
- `driver`: the one epoch loop for K >= 1 models (curves, patience, divergence, callbacks, best epoch).
- engines: `compiled` (sparse_sgd's numba loop on a CPU), `tensor` (every rule, implicit blocks,
  stacked, sparse_sgd CUDA-graphed on cuda; `graph`, `blocks`, `tables` are its parts) and `gibbs`
  (Bayesian MF by Gibbs sampling).
- `fitting`: fit / fit_stack / refit pick the engine and run the driver. A single model is a stack of one.
"""

from pipeline.training.config import FAMILIES, IMPLICIT, OPTIMIZERS, TrainConfig
from pipeline.training.driver import EpochCallback, FitResult, TrainingDiverged
from pipeline.training.fitting import fit, fit_stack, refit, refit_epochs, stack_key

__all__ = ["FAMILIES", "IMPLICIT", "OPTIMIZERS", "EpochCallback", "FitResult", "TrainConfig", "TrainingDiverged", "fit",
           "fit_stack", "refit", "refit_epochs", "stack_key"]
