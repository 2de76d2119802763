"""fit(): the device-resident MF training loop.

The data moves to the device once; each epoch shuffles there with `torch.randperm` and slices
batches by index. Gradients of the squared error are written in closed form (for MF they are two
`index_add_`s), which skips autograd's graph building: on a 2-core CPU that is ~2× the throughput
of `loss.backward()` at the same batch size. Nothing in the batch loop reads a value back to the
host; the only sync points are once per epoch (train loss, valid RMSE).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from pipeline.evaluate import squared_error_sum
from pipeline.model import MatrixFactorization
from pipeline.split import Interactions

__all__ = ["OPTIMIZERS", "EpochCallback", "FitResult", "TrainConfig", "TrainingDiverged", "default_device", "fit"]

# torch.optim classes used as they are; "sparse_sgd" is ours: plain SGD applied only to the rows in
# the batch (lazy: no dense state, no dense pass over the tables), as in Funk / Surprise SVD.
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "sparse_sgd")

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

    factors: int = 30
    """Latent dimensions k of p_u and q_i."""
    optimizer: str = "adam"
    """One of OPTIMIZERS."""
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
    batch_size: int = 512
    init_std: float = 0.01
    """Factors start as N(0, init_std)."""
    patience: int | None = None
    """Early stopping: stop after this many epochs without a better valid RMSE; the best epoch's
    parameters are restored. None: train all epochs (the best epoch is still restored)."""

    def __post_init__(self) -> None:
        checks = [
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


def _compiled_epoch(model, train, offset_t, l2, config):
    """sparse_sgd's epoch as the numba loop over the same tensors' memory (CPU only), or None
    where it does not apply (another device, numba missing)."""
    if model.users.device.type != "cpu":
        return None
    try:
        from pipeline import _sgd_kernel
    except ImportError:  # numba is a dependency; a broken install falls back to the tensor path
        return None
    width = model.users.shape[1]
    zeros = torch.zeros(width)
    l2_users, l2_items = (t.cpu().numpy() for t in l2) if l2 is not None else (zeros.numpy(), zeros.numpy())
    train_users, train_items = np.ones(width, np.float32), np.ones(width, np.float32)
    train_users[config.factors + 1] = train_items[config.factors] = 0.0  # the constant 1 columns
    tables = model.users.detach().numpy(), model.items.detach().numpy()  # shared memory, updated in place
    data = train.users.numpy(), train.items.numpy(), offset_t.numpy()
    buffers = _sgd_kernel.scratch(config.batch_size, width)

    def epoch(perm: torch.Tensor, lr: float) -> float:
        return _sgd_kernel.sgd_epoch(*tables, *data, perm.numpy(), config.batch_size, np.float32(lr),
                                     l2_users, l2_items, train_users, train_items, *buffers)

    return epoch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int | None):
    """MF steps are many small ops: on a CPU intra-op threading costs more than it gains
    (measured: 1 thread 3.2 M examples/s vs 2 threads 2.0 M/s at batch 512). Restored after."""
    if device.type != "cpu" or threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    """Train biased MF on `train` (rows already encoded against n_users / n_items).

    valid: scored after every epoch (clamped RMSE) for the callback and early stopping.
    device: None -> cuda when available, else cpu. threads: CPU intra-op threads during the fit.
    compiled: run sparse_sgd on the CPU with the numba loop (same mathematics, ~3× faster).
    Raises TrainingDiverged at the first epoch whose train loss is not finite.
    """
    device = torch.device(device) if device is not None else default_device()
    train = train.to(device)
    valid = valid.to(device) if valid is not None and len(valid) else None
    generator = torch.Generator(device=device).manual_seed(seed)
    init_generator = torch.Generator().manual_seed(seed)

    model = MatrixFactorization(n_users, n_items, config.factors,
                                train.ratings.double().mean().item(), rating_scale).to(device)
    model.reset_parameters(init_generator, config.init_std)
    result = FitResult(model=model)
    with _cpu_threads(device, threads):
        _train(model, train, valid, config, generator, callback, result, compiled)
    return result


def _train(model, train, valid, config, generator, callback, result, compiled) -> None:
    users_t, items_t, ratings_t = train.users, train.items, train.ratings
    n, batch = len(train), config.batch_size
    U, V = model.users, model.items
    optimizer = _make_optimizer(config, [U, V], U.device)
    if optimizer is not None:
        U.grad, V.grad = torch.zeros_like(U), torch.zeros_like(V)
    # Residual offset μ − r, precomputed once: err = p·q + (μ − r).
    offset_t = model.global_mean - ratings_t
    sparse = optimizer is None
    # Per-column λ for the rows [p, b_u, 1] and [q, 1, b_i]; the constant columns get 0.
    l2_bias = config.l2 if config.l2_bias is None else config.l2_bias
    l2 = None
    if config.l2 or l2_bias:
        l2_users = torch.full((U.shape[1],), config.l2, device=U.device)
        l2_users[-2:] = torch.tensor([l2_bias, 0.0])
        l2 = (l2_users, l2_users[torch.tensor([*range(config.factors), -1, -2])])
    kernel = _compiled_epoch(model, train, offset_t, l2, config) if sparse and compiled else None
    best_rmse, best_state, since_best = math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        lr = config.lr * config.lr_decay ** (epoch - 1)
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=U.device)
        perm = torch.randperm(n, device=U.device, generator=generator)
        with torch.no_grad():
            if kernel is not None:
                loss_sum += kernel(perm, lr)
            else:
                for lo in range(0, n, batch):
                    idx = perm[lo : lo + batch]
                    users, items = users_t[idx], items_t[idx]
                    pu, qi = U[users], V[items]
                    err = (pu * qi).sum(1) + offset_t[idx]  # (B,)
                    loss_sum += err.dot(err)
                    # d/dp_u of err²/2 is err·q_i (and the constant columns' gradients are discarded).
                    # Dense optimizers see the batch mean; sparse_sgd the sum (lr per example).
                    scale = 1.0 if sparse else 1.0 / idx.shape[0]
                    g = err.mul_(scale).unsqueeze_(1)
                    grad_u, grad_i = qi * g, pu * g
                    if l2 is not None:
                        grad_u.addcmul_(pu, l2[0], value=scale)
                        grad_i.addcmul_(qi, l2[1], value=scale)
                    if sparse:
                        U.index_add_(0, users, grad_u, alpha=-lr)
                        V.index_add_(0, items, grad_i, alpha=-lr)
                    else:
                        U.grad.zero_().index_add_(0, users, grad_u)
                        V.grad.zero_().index_add_(0, items, grad_i)
                        optimizer.step()
                    model.restore_constants()
        # One CPU-GPU sync point per epoch: the loss (and below, the valid RMSE).
        train_mse = (loss_sum / n).item()
        result.train_seconds += time.perf_counter() - start
        if not math.isfinite(train_mse):
            raise TrainingDiverged(epoch, train_mse)
        valid_rmse = math.sqrt(squared_error_sum(model, valid)[0].item() / len(valid)) if valid else math.nan
        result.history.append((epoch, train_mse, valid_rmse))
        if valid_rmse < best_rmse:
            best_rmse, since_best, result.best_epoch = valid_rmse, 0, epoch
            best_state = (U.detach().clone(), V.detach().clone())
        else:
            since_best += 1
        stop = bool(callback(epoch, train_mse, valid_rmse)) if callback is not None else False
        if stop or (config.patience is not None and since_best >= config.patience):
            result.stopped_early = epoch < config.epochs
            break
    if best_state is not None:
        with torch.no_grad():
            U.copy_(best_state[0])
            V.copy_(best_state[1])
    else:
        result.best_epoch = len(result.history)
    result.best_valid_rmse = best_rmse if best_state is not None else math.nan
    U.grad = V.grad = None
    epochs_run = len(result.history)
    result.examples_per_second = n * epochs_run / result.train_seconds if result.train_seconds else 0.0
