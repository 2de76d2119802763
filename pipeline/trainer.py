"""fit(): the device-resident MF training loop.

The data moves to the device once; each epoch shuffles there with `torch.randperm` and slices
batches by index. Gradients of the squared error are written in closed form (for MF they are two
`index_add_`s), which skips autograd's graph building: on a 2-core CPU that is ~2× the throughput
of `loss.backward()` at the same batch size. Nothing in the batch loop reads a value back to the
host; the only sync points are once per epoch (train loss, valid RMSE).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from pipeline.bayes import IMPLICIT, Chain, Side
from pipeline.device import cpu_threads, resolve_device
from pipeline.evaluate import squared_error_sum
from pipeline.model import MatrixFactorization
from pipeline.split import Interactions

__all__ = ["FAMILIES", "OPTIMIZERS", "BestEpoch", "EpochCallback", "FitResult", "TrainConfig", "TrainingDiverged", "close_fit",
           "end_epoch", "fit", "l2_columns", "refit"]

# torch.optim classes used as they are; "sparse_sgd" is ours: plain SGD applied only to the rows in
# the batch (lazy: no dense state, no dense pass over the tables), as in Funk / Surprise SVD.
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "sparse_sgd")
FAMILIES = ("mf", "bayes")
_TYPES = {"str": (str,), "int": (int,), "float": (int, float)}  # TrainConfig's field types (no bools)

# (epoch, train_loss, valid_rmse) -> True to stop training. May raise (e.g. optuna.TrialPruned).
EpochCallback = Callable[[int, float, float], "bool | None"]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"training diverged at epoch {epoch}: train loss is {loss} "
                         "(lower the learning rate or raise regularization)")
        self.epoch, self.loss = epoch, loss


@dataclass(frozen=True)
class TrainConfig:
    """One model's hyperparameters. Defaults: the d2l tutorial's configuration (the seed)."""

    family: str = "mf"
    """The model family and how it learns: mf (biased MF trained by `optimizer`) or bayes (Bayesian
    MF by Gibbs sampling, pipeline.bayes: epochs are sweeps; the optimizer's settings are unused)."""
    implicit: str = "none"
    """Implicit-feedback blocks: none, user (SVD++: each user's vector gains the normalized sum of
    factors of the items they rated), item (each item's gains its raters'), or both."""
    burn_in: int = 0
    """bayes: sweeps discarded before the posterior mean starts averaging samples."""
    factors: int = 30
    """Latent dimensions k of p_u and q_i."""
    optimizer: str = "adam"
    """The update rule: sgd (with momentum), adam, adamw, rmsprop, adagrad (torch.optim, fused), or
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # the annotations are strings: "int", "float | None", ...
            value, kinds = getattr(self, f.name), f.type.replace(" ", "").split("|")
            if value is None and "None" in kinds:
                continue
            allowed = tuple(t for kind in kinds if kind != "None" for t in _TYPES[kind])
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise ValueError(f"train config {f.name}={value!r}: expected {' or '.join(kinds)}")
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

    def to_dict(self) -> dict:
        return asdict(self)

    def memory_bytes(self, n_users: int, n_items: int) -> int:
        """A rough peak of training memory, to refuse sizes that cannot fit before any training:
        the float32 tables and their copies (gradients, optimizer state, best epoch, implicit
        blocks); for bayes, the kept samples and each side's (rows, d, d) precision matrices."""
        width = self.factors + 2
        tables = (n_users + n_items + 2) * width * 4
        if self.family == "bayes":
            return tables * (4 + self.epochs - self.burn_in) + 3 * (max(n_users, n_items) + 1) * width * width * 4
        return tables * 7


@dataclass
class FitResult:
    """The trained model (best epoch restored) and how it got there.

    history: one (epoch, train_mse, valid_rmse) per epoch run; valid_rmse is NaN without valid data.
    examples_per_second: training rows processed per second of the batch loops (validation excluded).
    """

    model: MatrixFactorization
    history: list[tuple[int, float, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_rmse: float = float("nan")
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    stopped_early: bool = False


def _make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], device: torch.device):
    if config.optimizer == "sparse_sgd":
        return None
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[config.optimizer]
    options = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        options["momentum"] = config.momentum
    # Fused kernels (one launch for all parameters) where torch has them, else the foreach path.
    if config.optimizer != "rmsprop":
        options["fused"] = True
    else:
        options["foreach"] = True
    return cls(params, **options)


def fit(
    train: Interactions,
    config: TrainConfig,
    *,
    n_users: int,
    n_items: int,
    rating_scale: tuple[float, float],
    valid: Interactions | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    callback: EpochCallback | None = None,
    threads: int | None = 1,
    compiled: bool = True,
) -> FitResult:
    """Train a model of `config.family` on `train` (rows already encoded against n_users / n_items).

    valid: scored after every epoch (clamped RMSE) for the callback and early stopping; without
    it every epoch runs (patience needs a valid RMSE to be patient about).
    device: see `resolve_device`. threads: CPU intra-op threads during an mf fit (bayes keeps torch's).
    compiled: run sparse_sgd on the CPU with the numba loop (same mathematics, ~3× faster). On cuda,
    mf without implicit blocks is a stack of one (`pipeline.stack`: its epoch a CUDA graph).
    Raises TrainingDiverged at the first epoch whose train loss is not finite.
    """
    device = resolve_device(device)
    train = train.to(device)
    valid = valid.to(device) if valid is not None and len(valid) else None
    generator = torch.Generator(device=device).manual_seed(seed)

    if config.family == "bayes":  # large batched products: torch's own threading pays here
        result = FitResult(model=None)
        chain = Chain(train, config, n_users=n_users, n_items=n_items, rating_scale=rating_scale, valid=valid,
                      generator=generator)
        _run_epochs(config, len(train), valid, callback, result, chain.step, chain.score, chain)
        return result
    if device.type == "cuda" and config.implicit == "none":
        from pipeline.stack import fit_stack  # a stack of one: its epoch is a CUDA graph, no launch overhead

        (outcome,) = fit_stack(train, [config], [seed], n_users=n_users, n_items=n_items, rating_scale=rating_scale,
                               valid=valid, device=device, callbacks=[callback])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    model = MatrixFactorization(n_users, n_items, config.factors,
                                train.ratings.double().mean().item(), rating_scale).to(device)
    model.reset_parameters(torch.Generator().manual_seed(seed), config.init_std)
    result = FitResult(model=model)
    with cpu_threads(device, threads):
        _train(model, train, valid, config, generator, callback, result, compiled)
    return result


def _train(model, train, valid, config, generator, callback, result, compiled) -> None:
    implicit = _Implicit(model, train, config.implicit) if config.implicit != "none" else None
    tables = implicit.learned if implicit else [model.users, model.items]
    optimizer = _make_optimizer(config, tables, model.users.device)
    epoch_step = _epoch_step(model, train, config, optimizer, compiled, implicit)

    def step(epoch: int) -> float:
        perm = torch.randperm(len(train), device=train.ratings.device, generator=generator)
        with torch.no_grad():
            loss_sum = epoch_step(perm, config.lr * config.lr_decay ** (epoch - 1))
        return (loss_sum / len(train)).item()  # one CPU-GPU sync point per epoch (and the valid RMSE)

    def score() -> float:
        return math.sqrt(squared_error_sum(model, valid)[0].item() / len(valid)) if valid else math.nan

    _run_epochs(config, len(train), valid, callback, result, step, score, BestEpoch(model))
    model.users.grad = model.items.grad = None


class _Implicit:
    """SVD++ for the mf family. The model's tables always hold the scored rows U = P + A·Y and
    V = Q + C·Z (so scoring, early stopping and the export need nothing else); this holds what
    is learned: P, Q (each user's and item's own rows) and the implicit blocks Y (a row per item,
    fed to the users who rated it) and Z (a row per user). A, C: `bayes.Side`'s CSR folds of the
    fitted rows, |N(u)|^-1/2 and |N(i)|^-1/2. Y and Z start at 0."""

    def __init__(self, model: MatrixFactorization, train: Interactions, implicit: str) -> None:
        self.model, f, width = model, model.factors, model.users.shape[1]
        self.own = [model.users.detach().clone(), model.items.detach().clone()]
        self.blocks = []  # (0 for the user side / 1 for the item side, Side, block, reach)
        sides = ((train.users, train.items, model.n_users + 1, model.n_items + 1, f + 1),
                 (train.items, train.users, model.n_items + 1, model.n_users + 1, f))
        for k, name in enumerate(("user", "item")):
            if implicit in (name, "both"):
                side = Side(*sides[k], width)
                block = torch.zeros(side.other_rows, width, device=model.users.device)
                # reach (other_rows, rows): 1 where a block row feeds an own row (for the per-row L2).
                self.blocks.append((k, side, block, side.matrix_t(torch.ones_like(side.weight))))

    @property
    def learned(self) -> list[torch.Tensor]:
        return self.own + [block for _, _, block, _ in self.blocks]

    def backward(self, rows: tuple, grads: tuple, l2, scale: float, sparse: bool, lr: float) -> None:
        """The blocks' gradients from the batch's gradients on scored rows (rows[k] int64 (B,),
        grads[k] (B, K + 2)): Aᵀ·G, plus each example's L2 on every block row it reads. sparse:
        step them at once (lr); else leave them in .grad for the optimizer."""
        for k, side, block, reach in self.blocks:
            grad = side.unfold(torch.zeros(side.rows, block.shape[1], device=block.device)
                               .index_add_(0, rows[k], grads[k]))
            if l2 is not None:
                uses = reach @ torch.bincount(rows[k], minlength=side.rows).to(block.dtype)[:, None]
                grad.addcmul_(block * uses, l2[k], value=scale)
            if sparse:
                block.sub_(grad, alpha=lr)
            else:
                block.grad = grad

    def refresh(self) -> None:
        """Constant columns back in place, then the scored tables from the learned ones."""
        self.model.restore_constants(*self.own)
        tables = [self.model.users, self.model.items]
        for table, own in zip(tables, self.own):
            table.copy_(own)
        for k, side, block, _ in self.blocks:
            block[:, side.const] = 0.0
            tables[k].add_(side.fold(block))


def _run_epochs(config, rows, valid, callback, result, step, score, best) -> None:
    """The epoch loop of every family. step(epoch) -> train MSE of one epoch (or Gibbs sweep);
    rows: training rows per epoch; score() -> valid RMSE (NaN without valid data); best: see
    `BestEpoch`. Ends as `end_epoch` says, then restores the best epoch."""
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        train_mse = step(epoch)
        result.train_seconds += time.perf_counter() - start
        if end_epoch(config, epoch, train_mse, score(), valid is not None, callback, result, best):
            break
    close_fit(result, best, rows)


def end_epoch(config, epoch: int, train_mse: float, valid_rmse: float, has_valid: bool,
              callback: EpochCallback | None, result: FitResult, best) -> bool:
    """Record one epoch of one model; True when its training ends here: the last epoch, the
    callback says stop, or `patience` epochs without a better valid RMSE. Raises TrainingDiverged
    on a non-finite loss (and whatever the callback raises, e.g. optuna.TrialPruned)."""
    if not math.isfinite(train_mse):
        raise TrainingDiverged(epoch, train_mse)
    result.history.append((epoch, train_mse, valid_rmse))
    since_best = best.update(epoch, valid_rmse)
    stop = bool(callback(epoch, train_mse, valid_rmse)) if callback is not None else False
    if stop or (has_valid and config.patience is not None and since_best >= config.patience):
        result.stopped_early = epoch < config.epochs
        return True
    return epoch >= config.epochs


def close_fit(result: FitResult, best, rows: int) -> None:
    """The best epoch restored into result.model and the throughput (rows: training rows per epoch)."""
    best.restore(result)
    result.examples_per_second = rows * len(result.history) / result.train_seconds if result.train_seconds else 0.0


class BestEpoch:
    """Early stopping's memory: the best valid RMSE so far and a copy of the model's tables
    (read from `tables()`, default the model's own: a stacked fit reads its slice of the stack)."""

    def __init__(self, model: MatrixFactorization, tables: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.model, self.rmse, self.epoch, self.state, self.since = model, math.inf, 0, None, 0
        self.tables = tables or (lambda: (model.users, model.items))

    def update(self, epoch: int, valid_rmse: float) -> int:
        """Record the epoch; returns how many epochs have passed without a better valid RMSE."""
        if valid_rmse < self.rmse:  # False for NaN: without valid data nothing is "best"
            self.rmse, self.epoch, self.since = valid_rmse, epoch, 0
            self.state = tuple(t.detach().clone() for t in self.tables())
        else:
            self.since += 1
        return self.since

    def restore(self, result: FitResult) -> None:
        """Put the best epoch's tables back (without valid data: keep the last epoch's)."""
        if self.state is None:
            result.best_epoch, result.best_valid_rmse = len(result.history), math.nan
            return
        with torch.no_grad():
            self.model.users.copy_(self.state[0])
            self.model.items.copy_(self.state[1])
        result.best_epoch, result.best_valid_rmse = self.epoch, self.rmse


def l2_columns(model: MatrixFactorization, config: TrainConfig):
    """Per-column λ for the rows [p, b_u, 1] and [q, 1, b_i] (the constant columns get 0), or None."""
    l2_bias = config.l2 if config.l2_bias is None else config.l2_bias
    if not (config.l2 or l2_bias):
        return None
    l2_users = torch.full((model.users.shape[1],), config.l2, device=model.users.device)
    l2_users[-2:] = torch.tensor([l2_bias, 0.0])
    return l2_users, l2_users[torch.tensor([*range(config.factors), -1, -2])]


def _epoch_step(model, train, config, optimizer, compiled, implicit):
    """(perm, lr) -> the epoch's Σ err² (a 0-d tensor): the numba loop for sparse_sgd on the CPU
    (without implicit blocks), else the tensor batch loop."""
    offset = model.global_mean - train.ratings  # μ − r, once: err = p·q + (μ − r)
    l2 = l2_columns(model, config)
    if optimizer is None and compiled and model.users.device.type == "cpu" and implicit is None:
        from pipeline._sgd_kernel import compiled_epoch  # numba: imported only when it runs

        kernel = compiled_epoch(model, train, offset, l2, config.batch_size)
        return lambda perm, lr: torch.tensor(kernel(perm, lr))
    own = implicit.own if implicit else [model.users, model.items]  # the tables the gradients go to
    if optimizer is not None:
        for table in own:
            table.grad = torch.zeros_like(table)

    def epoch(perm: torch.Tensor, lr: float) -> torch.Tensor:
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        loss_sum = torch.zeros((), device=perm.device)
        for lo in range(0, len(perm), config.batch_size):
            loss_sum += _batch_step(model, own, train, offset, perm[lo : lo + config.batch_size], l2, optimizer,
                                    lr, implicit)
        return loss_sum

    return epoch


def _batch_step(model, own, train, offset, idx, l2, optimizer, lr, implicit) -> torch.Tensor:
    """One batch's closed-form MF update of the `own` tables (the model's, or P and Q of the
    implicit path); returns its Σ err² (0-d, on the device: no sync)."""
    users, items = train.users[idx], train.items[idx]
    pu, qi = model.users[users], model.items[items]  # the scored rows
    err = (pu * qi).sum(1) + offset[idx]  # (B,)
    loss = err.dot(err)
    # d/dp_u of err²/2 is err·q_i (and the constant columns' gradients are discarded).
    # Dense optimizers see the batch mean; sparse_sgd the sum (lr per example).
    sparse = optimizer is None
    scale = 1.0 if sparse else 1.0 / idx.shape[0]
    g = err.mul_(scale).unsqueeze_(1)
    grad_u, grad_i = qi * g, pu * g
    if implicit is not None:
        implicit.backward((users, items), (grad_u, grad_i), l2, scale, sparse, lr)
        pu, qi = own[0][users], own[1][items]  # the L2 below is on the own rows
    if l2 is not None:
        grad_u.addcmul_(pu, l2[0], value=scale)
        grad_i.addcmul_(qi, l2[1], value=scale)
    U, V = own
    if sparse:
        U.index_add_(0, users, grad_u, alpha=-lr)
        V.index_add_(0, items, grad_i, alpha=-lr)
    else:
        U.grad.zero_().index_add_(0, users, grad_u)
        V.grad.zero_().index_add_(0, items, grad_i)
        optimizer.step()
    if implicit is not None:
        implicit.refresh()
    else:
        model.restore_constants()
    return loss


def refit(rows: Interactions, config: TrainConfig, epochs: int, **fit_options) -> FitResult:
    """The final model: `config` trained on all of `rows` (train+valid) for `epochs` (the best epoch
    count that valid data chose), with no early stopping: there is nothing left to validate on.
    `fit_options`: fit's keywords (n_users, n_items, rating_scale, seed, device, ...)."""
    return fit(rows, dataclasses.replace(config, epochs=max(epochs, 1), patience=None), **fit_options)
