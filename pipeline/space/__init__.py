"""YAML search space -> strict schema -> `trial.suggest_*`, with one translator.

A file declares the data (dataset, split), the parameters of `TrainConfig` to search (int,
float, categorical or fixed; a parameter may depend on the value of a categorical one, e.g. a
learning-rate range per optimizer), epochs and early stopping, the sampler and pruner with their
options, and the trial budget. Everything is checked when the file is loaded: a typo fails before
any training, naming the file and the key.
"""

from pipeline.space.files import SEARCH_SPACES, load_space, space_file
from pipeline.space.schema import SEARCHABLE, SearchSpace, SpaceError, default_space, default_stack
from pipeline.space.translate import space_corners, suggest

__all__ = ["SEARCHABLE", "SEARCH_SPACES", "SearchSpace", "SpaceError", "default_space", "default_stack", "load_space",
           "space_corners", "space_file", "suggest"]
