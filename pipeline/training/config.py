"""TrainConfig: one model's hyperparameters, typed, frozen and checked when built.

The field docstrings are the help of `python -m pipeline.train`'s flags and of the docs.
"""

from __future__ import annotations

import math
import typing

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

__all__ = ["FAMILIES", "IMPLICIT", "OPTIMIZERS", "TrainConfig"]

# torch.optim's update rules (its own classes, one optimizer per model of a stack); "sparse_sgd"
# is plain SGD applied only to the rows in the batch (lazy: no dense state), as in Funk / Surprise SVD.
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "sparse_sgd")
FAMILIES = ("mf", "bayes")
IMPLICIT = ("none", "user", "item", "both")


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
    burn_in: int = 0
    """bayes: sweeps discarded before the posterior mean starts averaging samples."""
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
            (0 <= self.burn_in < self.epochs or self.family != "bayes", "burn_in", ">= 0 and < epochs"),
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

    @property
    def l2_biases(self) -> float:
        return self.l2 if self.l2_bias is None else self.l2_bias

    def memory_bytes(self, n_users: int, n_items: int) -> int:
        """A rough peak of training memory, to refuse sizes that cannot fit before any training:
        the float32 tables and their copies (gradients, optimizer state, best epoch, implicit
        blocks); for bayes, the kept samples and each side's (rows, d, d) precision matrices."""
        width = self.factors + 2
        tables = (n_users + n_items + 2) * width * 4
        if self.family == "bayes":
            return tables * (4 + self.epochs - self.burn_in) + 3 * (max(n_users, n_items) + 1) * width * width * 4
        return tables * 7


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
