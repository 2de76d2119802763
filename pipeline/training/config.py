"""TrainConfig: one model's hyperparameters, typed, frozen and checked when built.

The field docstrings are the help of `python -m pipeline.train`'s flags and of the docs.
"""

from __future__ import annotations

import math
import typing

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pipeline.evaluate import _CHUNK

__all__ = ["FAMILIES", "IMPLICIT", "OPTIMIZERS", "OUTPUTS", "TrainConfig"]

# torch.optim's update rules (its own classes, one optimizer per model of a stack); "sparse_sgd"
# is plain SGD applied only to the rows in the batch (lazy: no dense state), as in Funk / Surprise SVD.
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "sparse_sgd")
FAMILIES = ("mf", "bayes")
IMPLICIT = ("none", "user", "item", "both")
OUTPUTS = ("regression", "ordinal")


# What only the mf family trains with (the Gibbs sampler has priors, not an optimizer).
_MF_ONLY = ("optimizer", "lr", "weight_decay", "l2", "l2_bias", "lr_decay", "momentum", "batch_size")


class TrainConfig(BaseModel):
    """One model's hyperparameters. Defaults: the d2l tutorial's configuration (the seed)."""

    # strict: 1 is not a float's typo, but `true` is not an int and "3" is not a number
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True)

    family: str = "mf"
    """The model family and how it learns: mf (biased MF trained by `optimizer`) or bayes (Bayesian
    MF by Gibbs sampling: epochs are sweeps; the optimizer's settings are unused)."""
    implicit: str = "none"
    """Implicit-feedback blocks: none, user (SVD++: each user's vector gains the normalized sum of
    factors of the items they rated), item (each item's gains its raters'), or both."""
    features: str = "none"
    """Side-feature blocks (the data's user and item features, one block per feature group): none,
    user (each user's vector gains the sum of its feature values' factors, and its bias their
    weights), item (the same for items), or both."""
    burn_in: int = 0
    """bayes: sweeps discarded before the posterior mean starts averaging samples."""
    noise_precision: float | None = None
    """bayes: the ratings' noise precision α (1 / the variance of a rating about its prediction).
    None: drawn every sweep from its Gamma posterior (libFM's and myFM's rule), which follows the
    train error down as the rank grows, so the chain drifts to a posterior that fits noise; a
    number: held fixed (as BPMF does, Salakhutdinov & Mnih 2008), a regularizer to search. With
    ordinal output, the precision of the latent rating's noise (on the ratings' scale too)."""
    output: str = "regression"
    """bayes: regression (a rating is its score plus Gaussian noise) or ordinal (an ordered probit:
    the ratings' distinct values are ordered levels, at most 20, a rating the level whose interval
    the noisy score fell in, the inner cutpoints sampled too; the prediction is the expected
    rating under the posterior, in a scorer the size of the regression's)."""
    factors: int = 30
    """Latent dimensions k of p_u and q_i."""
    optimizer: str = "adam"
    """The update rule: sgd (with momentum), adam, adamw, rmsprop, adagrad (torch.optim's rules), or
    sparse_sgd (lazy SGD on the batch's rows only, as in Funk / Surprise SVD)."""
    lr: float = 0.002
    """Learning rate. For sparse_sgd it is per example (the loss is summed over the batch); for the
    others the loss is averaged over the batch, as in the seed."""
    weight_decay: float = 1e-5
    """The optimizer's weight decay on every parameter, every step (the seed's regularization)."""
    l2: float = 0.0
    """Per-example L2 on the factors, λ(|p_u|² + |q_i|²)/2 for each training row (classic MF)."""
    l2_bias: float | None = None
    """Per-example L2 on the biases b_u, b_i; None: the same as l2."""
    lr_decay: float = 1.0
    """The learning rate is multiplied by this after every epoch (1: constant)."""
    momentum: float = 0.9
    """For sgd only."""
    epochs: int = 20
    """Passes over the training rows (at most, with early stopping)."""
    batch_size: int = 512
    """Training rows per update step."""
    init_std: float = 0.01
    """Factors start as N(0, init_std)."""
    patience: int | None = None
    """Early stopping: stop after this many epochs without a better valid RMSE; the best epoch's
    parameters are restored. None: train all epochs (the best epoch is still restored)."""

    def __init__(self, **values) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # one line naming the key, the value and what was expected
            raise ValueError(_message(exc)) from None

    @model_validator(mode="after")
    def _ranges(self) -> TrainConfig:
        checks = [
            (self.family in FAMILIES, "family", f"one of {', '.join(FAMILIES)}"),
            (self.implicit in IMPLICIT, "implicit", f"one of {', '.join(IMPLICIT)}"),
            (self.features in IMPLICIT, "features", f"one of {', '.join(IMPLICIT)}"),
            (self.output in OUTPUTS, "output", f"one of {', '.join(OUTPUTS)}"),
            (self.output == "regression" or self.family == "bayes", "output", "regression with family mf"),
            (0 <= self.burn_in < self.epochs or self.family != "bayes", "burn_in", ">= 0 and < epochs"),
            (self.noise_precision is None or 0 < self.noise_precision < math.inf, "noise_precision",
             "> 0 and finite, or None (drawn)"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}"),
            (self.factors >= 1, "factors", ">= 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "> 0"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.l2 >= 0, "l2", ">= 0"),
            (self.l2_bias is None or self.l2_bias >= 0, "l2_bias", ">= 0 or None"),
            (0 < self.lr_decay <= 1, "lr_decay", "in (0, 1]"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.init_std > 0, "init_std", "> 0"),
            (self.patience is None or self.patience >= 1, "patience", ">= 1 or None"),
            (not (self.optimizer == "sparse_sgd" and self.weight_decay > 0), "weight_decay",
             "0 with sparse_sgd (it regularizes lazily: use l2)"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"train config {key}={getattr(self, key)!r}: expected {expected}")
        return self

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's docstring, on one line."""
        return {name: " ".join((field.description or "").split()) for name, field in cls.model_fields.items()}

    def to_dict(self) -> dict:
        return self.model_dump()

    def replace(self, **changes) -> TrainConfig:
        """A new config with `changes`, checked like any other."""
        return TrainConfig(**{**self.model_dump(), **changes})

    def used(self) -> dict:
        """The settings this config's family trains with, as trained (l2_bias resolved; patience
        off and a drawn noise precision are no entry): a bayes model has no optimizer, lr or
        batch size, mf no burn-in, noise precision or output, and momentum is sgd's alone."""
        unused = {"bayes": _MF_ONLY, "mf": ("burn_in", "noise_precision", "output")}[self.family]
        if self.optimizer != "sgd" or self.family == "bayes":
            unused += ("momentum",)
        values = {k: v for k, v in self.to_dict().items() if k not in unused and v is not None}
        if self.family == "mf":
            values["l2_bias"] = self.l2_biases
        return values

    @property
    def l2_biases(self) -> float:
        return self.l2 if self.l2_bias is None else self.l2_bias

    def memory_bytes(self, n_users: int, n_items: int, rows: int = 0, valid_rows: int = 0) -> int:
        """Peak memory of one fit, bytes: sizes that cannot fit are refused before any training.

        rows, valid_rows: the training and valid rows (0: the terms that grow with them left out).
        Counted from what the engines allocate (`_bayes_bytes`, `_mf_bytes`; float32 is 4 bytes),
        plus 10 % for what the count leaves out (allocator rounding, library workspaces, small
        temporaries); bench/memory.py checks it against measured peaks."""
        shape = _Shape(n_users + 1, n_items + 1, self.factors + 2, rows, valid_rows)
        need = _bayes_bytes(self, shape) if self.family == "bayes" else _mf_bytes(self, shape)
        return int(need * 1.1)


class _Shape(typing.NamedTuple):
    """A fit's sizes: table rows (entities + the fallback row), width w = factors + 2, data rows."""

    users: int
    items: int
    width: int
    rows: int
    valid: int

    @property
    def tables(self) -> int:
        """Bytes of one user table and one item table, float32."""
        return 4 * (self.users + self.items) * self.width


def _blocks(implicit: str, s: _Shape) -> list[tuple[int, int]]:
    """Per implicit block: (bytes of the side's table it folds into, bytes of the block)."""
    users, items = 4 * s.users * s.width, 4 * s.items * s.width
    return [(users, items)] * (implicit in ("user", "both")) + [(items, users)] * (implicit in ("item", "both"))


def _bayes_bytes(c: TrainConfig, s: _Shape) -> int:
    """The Gibbs engine (gibbs.py). Held: P and Q (one pair of tables), the kept samples' totals and
    the current one (S + 1 pairs, S = epochs - burn_in), each implicit block with its fold and
    offset (3 blocks), the two Sides' CSR (52 B per row each: weight, two layouts of order and
    columns, four value arrays), the fitted rows' copies (25 B per row), the valid score (8 B per
    valid row). A sweep's peak on top, the largest of: the larger side's (R, d, d) float32 stage
    (S, the diagonal prior, αS and their sum: 16 R d² bytes, d = factors + 1; then S, the
    precision and its Cholesky factor: less), the train error's gathers (U[u], V[i], their product:
    12 w + 16 B per row), the valid's (12 w B per valid row); plus 3 pairs of per-row working
    copies. Or the export's peak (`_export_bytes`), after the last sweep. Ordinal output holds 20 B
    more per row (each row's level, latent mean and its running sum), its sweep 64 B per row more
    (the probit's float64 passes), its export one more pair of tables (the scorer's copy)."""
    ordinal = c.output == "ordinal"
    samples, d = c.epochs - c.burn_in, c.factors + 1
    blocks = sum(block for _, block in _blocks(c.implicit, s))
    held = s.tables * (samples + 2) + 3 * blocks + (2 * 52 + 25 + 20 * ordinal) * s.rows + 8 * s.valid
    sweep = max(16 * max(s.users, s.items) * d * d, (12 * s.width + 16 + 64 * ordinal) * s.rows,
                12 * s.width * s.valid)
    return held + max(sweep + 3 * s.tables, _export_bytes(c.factors, samples, s) + ordinal * s.tables)


def _export_bytes(factors: int, samples: int, s: _Shape) -> int:
    """gibbs.export over S kept samples: their stacks (S pairs of tables), P and Q (C = S · factors
    columns, float32), then, when C exceeds the shorter side's rows m, the reduction in float64
    (both sides, R of the QR and the product: 8 ((U + I) C + m C + (U + I) m) bytes), else the
    scorer's tables (C + 2 columns)."""
    rows, shorter, columns = s.users + s.items, min(s.users, s.items), samples * factors
    stacks = samples * s.tables + 4 * rows * columns
    if columns > shorter:
        return stacks + 8 * (rows * columns + shorter * columns + rows * shorter)
    return stacks + 4 * rows * (columns + 2)


# Optimizer state per learned table: torch.optim's buffers (sgd's momentum, adam's two moments, ...).
_STATE = {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1, "sparse_sgd": 0}


def _mf_bytes(c: TrainConfig, s: _Shape) -> int:
    """The mf engines (tensor.py; compiled.py holds less). Held: the model's tables and the
    engine's, a dense rule's gradient (sparse_sgd has none) and state (`_STATE`), the best epoch's
    snapshot; per implicit block its table, gradient and state, its side's scored table (own +
    fold) and its Side's CSR (56 B per row: `_bayes_bytes`'s 52 and the block's reach). The peak
    on top, the largest of: an epoch's (40 B per row: the permutation, the index and offset
    copies; a pair of tables of step temporaries; per block its side's fold and gradient and the
    block's gradient), the valid scoring's gathers (12 w + 40 B per valid row, at most _CHUNK rows
    at a time), the next snapshot (a pair of tables)."""
    per_table = 1 + (c.optimizer != "sparse_sgd") + _STATE[c.optimizer]
    blocks = _blocks(c.implicit, s)
    held = s.tables * (per_table + 2) + sum(block * per_table + side + 56 * s.rows for side, block in blocks)
    epoch = 40 * s.rows + s.tables + sum(2 * side + block for side, block in blocks)
    valid = (12 * s.width + 40) * min(s.valid, _CHUNK)
    return held + max(epoch, valid, s.tables)


def _message(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] == "extra_forbidden":
        return f"train config {key}: unknown key (expected one of {', '.join(TrainConfig.model_fields)})"
    annotation = TrainConfig.model_fields[key].annotation  # a type error: name the field's types
    kinds = typing.get_args(annotation) or (annotation,)
    return f"train config {key}={error['input']!r}: expected {' or '.join('None' if k is type(None) else k.__name__ for k in kinds)}"
