"""fit_stack(): K MF models trained together as one set of stacked tables.

One ml-100k model is far too small to occupy a GPU: an epoch at batch 64 is 1,250 steps of a
dozen kernels, each on 64 rows, so the launches cost more than the arithmetic. Stacked, every
kernel works on K models' rows for the same launches; on cuda the epoch is also captured once as
a CUDA graph and replayed, so a launch costs the GPU's microsecond instead of a Python round trip.

Each model keeps everything that makes it itself: its factors (padded with zero columns up to
the stack's widest; they stay zero, since their gradients are products with zeros), lr,
lr_decay, l2, l2_bias, weight_decay, momentum, init_std, epochs and patience, its initial tables
and its own permutation of the rows every epoch, drawn from generators seeded as `fit` seeds them.
So model k of a stack is `fit(train, configs[k], seed=seeds[k])` up to float rounding, stops on its
own (callback, patience, divergence, last epoch) and leaves the stack, which shrinks. What must
match across a stack is `stack_key`: family mf without implicit blocks, one optimizer, one batch
size. The dense optimizers are torch.optim's update rules (defaults: Adam's betas, eps, ...)
written over the stack, with per-model lr, weight decay and momentum as tensors.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import torch

from pipeline.device import resolve_device
from pipeline.evaluate import _CHUNK
from pipeline.model import MatrixFactorization
from pipeline.split import Interactions
from pipeline.trainer import BestEpoch, EpochCallback, FitResult, TrainConfig, close_fit, end_epoch, l2_columns

__all__ = ["fit_stack", "stack_key"]


def stack_key(config: TrainConfig) -> tuple[str, int] | None:
    """(optimizer, batch size) for configs that can share a stack (only configs with the same key
    can); None for those trained alone (bayes, implicit blocks)."""
    stackable = config.family == "mf" and config.implicit == "none"
    return (config.optimizer, config.batch_size) if stackable else None


def fit_stack(
    train: Interactions,
    configs: Sequence[TrainConfig],
    seeds: Sequence[int],
    *,
    n_users: int,
    n_items: int,
    rating_scale: tuple[float, float],
    valid: Interactions | None = None,
    device: torch.device | str | None = None,
    callbacks: Sequence[EpochCallback | None] | None = None,
) -> list[FitResult | Exception]:
    """Train configs[k] with seeds[k] for every k, together; returns, in order, each model's
    FitResult (best epoch restored, as `fit`'s) or the exception that ended it (TrainingDiverged,
    or what its callback raised, e.g. optuna.TrialPruned): one model's end never stops the others.
    A BaseException that is not an Exception (Ctrl-C) stops the whole stack and propagates.
    train_seconds: the wall time of the stacked epochs the model was part of."""
    keys = {stack_key(c) for c in configs}
    if None in keys or len(keys) != 1:
        raise ValueError(f"fit_stack: configs must share one stack_key (mf without implicit blocks, one optimizer, "
                         f"one batch size); got keys {sorted(keys, key=str)}")
    device = resolve_device(device)
    train = train.to(device)
    valid = valid.to(device) if valid is not None and len(valid) else None
    callbacks = list(callbacks) if callbacks is not None else [None] * len(configs)
    stack = _Stack(train, configs, seeds, n_users, n_items, rating_scale, device)
    outcomes: list[FitResult | Exception | None] = [None] * len(configs)
    results = [FitResult(model=m) for m in stack.models]
    bests = [BestEpoch(m, lambda k=k: stack.tables(k)) for k, m in enumerate(stack.models)]
    epoch = 0
    while stack.live:
        epoch += 1
        start = time.perf_counter()
        losses = stack.epoch(epoch).tolist()  # one sync per epoch, as in `fit`
        seconds = time.perf_counter() - start
        rmses = stack.valid_rmse(valid).tolist() if valid is not None else [math.nan] * len(stack.live)
        leaving = []
        for k, loss, rmse in zip(stack.live, losses, rmses):
            results[k].train_seconds += seconds
            try:
                done = end_epoch(configs[k], epoch, loss / len(train), rmse, valid is not None, callbacks[k],
                                 results[k], bests[k])
            except Exception as exc:  # noqa: BLE001 - this model's end (pruned, diverged), not the stack's
                outcomes[k], done = exc, True
            if done:
                leaving.append(k)
        for k in leaving:
            stack.collect(k)
            if outcomes[k] is None:
                close_fit(results[k], bests[k], len(train))
                outcomes[k] = results[k]
        stack.drop(leaving)
    return outcomes


class _Stack:
    """The live models' tables, stacked: users (K, n_users + 1, F + 2), items (K, n_items + 1,
    F + 2), F the widest model's factors. Model k's row layout is its own with zero columns
    inserted before the constant ones: [p_u, 0…, b_u, 1] and [q_i, 0…, 1, b_i]."""

    def __init__(self, train, configs, seeds, n_users, n_items, rating_scale, device) -> None:
        self.train, self.configs, self.device = train, list(configs), device
        self.width = max(c.factors for c in configs) + 2
        mean, self.models, users, items = train.ratings.double().mean().item(), [], [], []
        for config, seed in zip(configs, seeds):  # fit's initialization, model by model
            model = MatrixFactorization(n_users, n_items, config.factors, mean, rating_scale).to(device)
            model.reset_parameters(torch.Generator().manual_seed(seed), config.init_std)
            self.models.append(model)
            users.append(self._widen(model.users.detach(), config.factors))
            items.append(self._widen(model.items.detach(), config.factors))
        self.users, self.items = torch.stack(users), torch.stack(items)
        self.offset = self.models[0].global_mean - train.ratings  # μ − r, as fit's
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.live = list(range(len(configs)))  # model numbers, in stack order
        self.optimizer = configs[0].optimizer
        slots = _SLOTS[self.optimizer]  # the optimizer's state, per table
        self.state = [(torch.zeros_like(self.users), torch.zeros_like(self.items)) for _ in range(slots)]
        self.steps = torch.zeros((), dtype=torch.float64, device=device)  # the dense optimizers' step count
        self._rules()
        self.graph = _EpochGraph(self) if device.type == "cuda" else None

    def _widen(self, table: torch.Tensor, factors: int) -> torch.Tensor:
        wide = torch.zeros(table.shape[0], self.width, device=table.device)
        wide[:, :factors], wide[:, -2:] = table[:, :factors], table[:, factors:]
        return wide

    def tables(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Model k's current tables in its own layout (new tensors)."""
        f, at = self.configs[k].factors, self.live.index(k)
        return tuple(torch.cat([t[at, :, :f], t[at, :, -2:]], 1) for t in (self.users, self.items))

    def collect(self, k: int) -> None:
        """Copy model k's current tables into its MatrixFactorization (before it leaves)."""
        users, items = self.tables(k)
        with torch.no_grad():
            self.models[k].users.copy_(users)
            self.models[k].items.copy_(items)

    def drop(self, leaving: list[int]) -> None:
        if not leaving:
            return
        keep = [at for at, k in enumerate(self.live) if k not in leaving]
        self.live = [self.live[at] for at in keep]
        if not self.live:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.users, self.items = self.users[index], self.items[index]
        self.state = [(u[index], i[index]) for u, i in self.state]
        self._rules()
        if self.graph is not None:
            self.graph = _EpochGraph(self)  # new shapes: capture again

    def _rules(self) -> None:
        """Per-model constants of the update: l2 per column (K, W) (0 on the constant columns),
        which columns learn (1) or stay constant (0), and the dense optimizers' weight decay and
        momentum (K, 1, 1)."""
        F = self.width - 2
        self.learn_users = torch.ones(self.width, device=self.device)
        self.learn_items = torch.ones(self.width, device=self.device)
        self.learn_users[F + 1] = self.learn_items[F] = 0.0

        def l2(k: int, side: int) -> torch.Tensor:  # fit's per-column λ, widened
            columns = l2_columns(self.models[k], self.configs[k])
            if columns is None:
                return torch.zeros(self.width, device=self.device)
            return self._widen(columns[side][None], self.configs[k].factors)[0]

        self.l2_users = torch.stack([l2(k, 0) for k in self.live])
        self.l2_items = torch.stack([l2(k, 1) for k in self.live])
        per_model = lambda name: torch.tensor([getattr(self.configs[k], name) for k in self.live],  # noqa: E731
                                              device=self.device)[:, None, None]
        self.weight_decay, self.momentum = per_model("weight_decay"), per_model("momentum")

    def epoch(self, epoch: int) -> torch.Tensor:
        """One epoch of every live model, in place; returns each one's Σ err² (K,) on the device."""
        n, K = len(self.train), len(self.live)
        perms = torch.stack([torch.randperm(n, device=self.device, generator=self.generators[k]) for k in self.live])
        # Rows of the flattened tables, example-major (N, K): a batch is a contiguous slice.
        users = (self.train.users[perms] + self._bases(self.users)).T.contiguous()
        items = (self.train.items[perms] + self._bases(self.items)).T.contiguous()
        lr = torch.tensor([self.configs[k].lr * self.configs[k].lr_decay ** (epoch - 1) for k in self.live],
                          device=self.device)[:, None]
        inputs = (users, items, self.offset[perms].T.contiguous(), lr)
        if self.graph is not None:
            return self.graph(*inputs)
        return self._run(*inputs, torch.zeros(K, device=self.device))

    def _bases(self, tables: torch.Tensor) -> torch.Tensor:
        """(K, 1): where each model's rows start in the flattened (K · rows, W) table."""
        return (torch.arange(len(self.live), device=self.device) * tables.shape[1])[:, None]

    def _run(self, users, items, offset, lr, loss) -> torch.Tensor:
        """The batch loop over (N, K) inputs; lr (K, 1) this epoch's. Within a batch every gradient
        is taken at the batch's starting rows, as in `fit`: sparse_sgd steps the batch's rows by
        the summed gradient (lr per example); the others see the batch mean, densely."""
        U, V = self.users.view(-1, self.width), self.items.view(-1, self.width)
        K, batch = users.shape[1], self.configs[self.live[0]].batch_size
        sparse = self.optimizer == "sparse_sgd"
        step_users, step_items = -lr * self.learn_users, -lr * self.learn_items  # (K, W)
        for lo in range(0, users.shape[0], batch):
            u, i = users[lo : lo + batch].view(-1), items[lo : lo + batch].view(-1)
            pu, qi = U[u].view(-1, K, self.width), V[i].view(-1, K, self.width)  # (B, K, W)
            err = (pu * qi).sum(2) + offset[lo : lo + batch]  # (B, K)
            loss += err.square().sum(0)
            e = err.unsqueeze(2)
            # d/dp_u of (err² + λ|p_u|²)/2 is err·q_i + λ·p_u; likewise for q_i.
            grad_u, grad_i = torch.addcmul(pu * self.l2_users, qi, e), torch.addcmul(qi * self.l2_items, pu, e)
            if sparse:
                U.index_add_(0, u, grad_u.mul_(step_users).view(-1, self.width))
                V.index_add_(0, i, grad_i.mul_(step_items).view(-1, self.width))
                continue
            scale = 1.0 / pu.shape[0]
            self.steps += 1
            for table, rows, grad, state in ((self.users, u, grad_u, self.state_of(0)),
                                             (self.items, i, grad_i, self.state_of(1))):
                dense = torch.zeros_like(table).view(-1, self.width).index_add_(0, rows, grad.view(-1, self.width),
                                                                               alpha=scale)
                _DENSE[self.optimizer](table, dense.view(table.shape), state, lr[:, :, None], self)
            F = self.width - 2
            self.users[:, :, F + 1], self.items[:, :, F] = 1.0, 1.0  # the constant columns, as fit restores them
        return loss

    def state_of(self, side: int) -> list[torch.Tensor]:
        return [pair[side] for pair in self.state]

    @torch.no_grad()
    def valid_rmse(self, valid: Interactions) -> torch.Tensor:
        """Each live model's RMSE of clamped predictions on `valid` (K,), as `evaluate` scores one."""
        U, V = self.users.view(-1, self.width), self.items.view(-1, self.width)
        low, high = self.models[0].rating_scale
        sse = torch.zeros(len(self.live), dtype=torch.float64, device=self.device)
        chunk = max(_CHUNK // len(self.live), 1)
        for lo in range(0, len(valid), chunk):
            users = valid.users[lo : lo + chunk] + self._bases(self.users)  # (K, chunk)
            items = valid.items[lo : lo + chunk] + self._bases(self.items)
            scores = (U[users] * V[items]).sum(2) + self.models[0].global_mean
            sse += (scores.clamp(low, high) - valid.ratings[lo : lo + chunk]).double().square().sum(1)
        return (sse / len(valid)).sqrt()


# torch.optim's update rules over stacked tables T (K, rows, W) with the batch-mean gradient G
# (weight decay not yet added), each model's lr (K, 1, 1) and the stack's per-model weight decay,
# momentum and step count; defaults as torch.optim's (and fit's: Adam betas (0.9, 0.999), eps
# 1e-8; RMSprop alpha 0.99, eps 1e-8; Adagrad eps 1e-10).
_SLOTS = {"sparse_sgd": 0, "sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1}


def _sgd(T, G, state, lr, s) -> None:
    (buf,) = state
    buf.mul_(s.momentum).add_(G.addcmul_(T, s.weight_decay))  # the first step: buf = G
    T.sub_(buf * lr)


def _adam(T, G, state, lr, s, decoupled: bool = False) -> None:
    m, v = state
    if decoupled:
        T.mul_(1 - lr * s.weight_decay)
    else:
        G.addcmul_(T, s.weight_decay)
    m.lerp_(G, 0.1)
    v.mul_(0.999).addcmul_(G, G, value=0.001)
    correction1, correction2 = 1 - 0.9**s.steps, (1 - 0.999**s.steps).sqrt()
    T.sub_(m / (v.sqrt() / correction2.float()).add_(1e-8) * (lr / correction1.float()))


def _rmsprop(T, G, state, lr, s) -> None:
    (square,) = state
    G.addcmul_(T, s.weight_decay)
    square.mul_(0.99).addcmul_(G, G, value=0.01)
    T.sub_(G / square.sqrt().add_(1e-8) * lr)


def _adagrad(T, G, state, lr, s) -> None:
    (total,) = state
    G.addcmul_(T, s.weight_decay)
    total.addcmul_(G, G)
    T.sub_(G / total.sqrt().add_(1e-10) * lr)


_DENSE = {"sgd": _sgd, "adam": _adam, "adamw": lambda *a: _adam(*a, decoupled=True), "rmsprop": _rmsprop,
          "adagrad": _adagrad}


class _EpochGraph:
    """cuda: the stack's epoch as a CUDA graph over static input buffers. The first epoch runs
    eagerly on a side stream (CUDA's required warm-up, and a real epoch); the next one is
    captured, then every epoch copies its inputs into the buffers and replays."""

    def __init__(self, stack: _Stack) -> None:
        self.stack, self.graph, self.buffers, self.loss = stack, None, None, None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.buffers is None:  # warm-up: an ordinary epoch, on a side stream
            side = torch.cuda.Stream(self.stack.device)
            side.wait_stream(torch.cuda.current_stream(self.stack.device))
            with torch.cuda.stream(side):
                loss = self.stack._run(*inputs, torch.zeros(len(self.stack.live), device=self.stack.device))
            torch.cuda.current_stream(self.stack.device).wait_stream(side)
            self.buffers = [x.clone() for x in inputs]
            return loss
        if self.graph is None:
            self.graph = self._capture()
        if not self.graph:  # capture refused (nothing ran): the eager epoch, same mathematics
            return self.stack._run(*inputs, torch.zeros(len(self.stack.live), device=self.stack.device))
        for buffer, x in zip(self.buffers, inputs):
            buffer.copy_(x)
        self.graph.replay()
        return self.loss.clone()

    def _capture(self) -> torch.cuda.CUDAGraph | bool:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.loss = self.stack._run(*self.buffers, torch.zeros(len(self.stack.live), device=self.stack.device))
        except RuntimeError as exc:  # an op this torch cannot capture: slower, still right
            warnings.warn(f"CUDA graph capture of the stacked epoch failed ({exc}); running it eagerly", stacklevel=2)
            return False
        return graph
