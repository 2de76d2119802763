"""The tensor engine: K mf models (K >= 1) trained as one set of stacked tables, by any rule.

Every kernel works on the K models' rows at once, for the launches of one; on cuda a sparse_sgd
epoch without implicit blocks is a CUDA graph (`pipeline.training.graph`). Gradients of the squared error are written in
closed form (two `index_add_`s), which skips autograd's graph building (~2× on a 2-core CPU). The
dense rules are torch.optim's own classes (fused kernels where torch has them), one optimizer per
model over its slices of the stacked tables, so each model keeps its lr, weight decay, momentum
and state.

Each model keeps everything that makes it itself: its factors (padded with zero columns up to the
widest; they stay zero, since their gradients are products with zeros), lr, lr_decay, l2,
l2_bias, weight_decay, momentum, init_std, its initial tables and its own permutation of the rows
every epoch, drawn from generators seeded as a single fit seeds them. What must match across a
stack is `pipeline.training.stack_key`: one optimizer, one batch size, one implicit mode.

Blocks: the scored tables hold U = P + A·Y + Σ_g S_g·W_g and V likewise (so scoring and the export
need nothing else); P, Q are each row's own, Y (SVD++'s implicit block; Koren 2008) and the side
features' W_g (one per feature group, S_g its CSR rows) are `Block`s, all learned, each with the
model's L2 on every block row an example reads.
"""

from __future__ import annotations

import torch

from pipeline.evaluate import _CHUNK, clamped_error
from pipeline.model import ITEM_ONE, USER_ONE, MatrixFactorization, learned_columns, narrow, widen
from pipeline.split import Interactions
from pipeline.training.blocks import Fold, Side
from pipeline.training.config import TrainConfig
from pipeline.training.graph import EpochGraph
from pipeline.training.tables import initial_model, l2_columns

__all__ = ["TensorEngine"]


class Block:
    """One block of K models (implicit feedback or a side-feature group): table (K, other_rows, W),
    folded into side `k`'s rows (0 users, 1 items) by `side.A` (a `Fold`). Starts at 0."""

    def __init__(self, k: int, side: Fold, models: int, width: int, average: bool = False) -> None:
        self.k, self.side, self.average = k, side, average
        self.table = torch.zeros(models, side.other_rows, width, device=side.values.device)
        self.reach = side.matrix_t(torch.ones_like(side.values))  # (other_rows, rows): which rows read a block row

    def fold(self) -> torch.Tensor:
        """A·Y per model: (K, rows, W)."""
        return _per_model(self.side.A, self.table)

    def gradient(self, rows: torch.Tensor, grad: torch.Tensor, l2: torch.Tensor | None, scale: float) -> torch.Tensor:
        """The block's gradient (K, other_rows, W) from the batch's gradients on scored rows
        (rows: flat (B·K,), grad (B, K, W), already scaled): Aᵀ·G plus each example's L2 on every
        block row it reads (l2 (K, W) per column; None: no model has L2); `average`: each block row's
        gradient divided by the examples that read it (a feature value most rows share would
        otherwise take a summed step of the whole batch at once)."""
        K, O, W = self.table.shape
        dense = torch.zeros(K * self.side.rows, W, device=grad.device).index_add_(0, rows, grad.view(-1, W))
        result = _per_model(self.side.At, dense.view(K, -1, W)).contiguous()  # fused optimizers read it flat
        if l2 is None and not self.average:
            return result
        counts = torch.bincount(rows, minlength=K * self.side.rows).view(K, -1).T.to(grad.dtype)  # (rows, K)
        uses = (self.reach @ counts).T[:, :, None]  # (K, other_rows, 1)
        if l2 is not None:
            result.addcmul_(self.table * uses, l2[:, None, :], value=scale)
        return result.div_(uses.clamp_min(1.0)) if self.average else result


def _per_model(matrix: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """matrix (m, n) sparse times each of tables (K, n, W): one product over (n, K·W) -> (K, m, W)."""
    K, n, W = tables.shape
    return (matrix @ tables.permute(1, 0, 2).reshape(n, K * W)).view(-1, K, W).permute(1, 0, 2)


class TensorEngine:
    """K mf models of one optimizer, batch size and implicit mode (see `driver.Engine`)."""

    def __init__(self, train: Interactions, configs: list[TrainConfig], seeds: list[int], dims: dict,
                 valid: Interactions | None, device: torch.device, folds: dict | None = None) -> None:
        self.train, self.valid, self.configs, self.device = train, valid, configs, device
        self.width = W = max(c.factors for c in configs) + 2
        mean = train.ratings.double().mean().item()
        self.models = [initial_model(c, s, mean, dims, device) for c, s in zip(configs, seeds)]
        self.own = [torch.stack([widen(getattr(m, name).detach(), m.factors, W) for m in self.models])
                    for name in ("users", "items")]
        self.blocks = _blocks(train, configs[0].implicit, dims, len(configs), W)
        average = configs[0].optimizer == "sparse_sgd"  # its steps are per example: see Block.gradient
        self.blocks += [Block(k, fold, len(configs), W, average) for k, side in enumerate(("user", "item"))
                        for fold in (folds or {}).get(side, [])]
        self.offset = self.models[0].global_mean - train.ratings  # μ − r, once: err = p·q + (μ − r)
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.live = list(range(len(configs)))
        self.optimizer, self.batch = configs[0].optimizer, configs[0].batch_size
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        self._per_model()

    def _learned(self) -> list[torch.Tensor]:
        return self.own + [b.table for b in self.blocks]

    def _per_model(self) -> None:
        """Per live model: l2 per column (K, W) per side and its optimizer over its slices of the
        tables; the scored tables; a new CUDA graph (the shapes changed)."""
        columns = [l2_columns(self.configs[k], self.width, self.device) for k in self.live]
        self.l2 = [torch.stack([c[side] for c in columns]) for side in (0, 1)]
        self.any_l2 = any(self.configs[k].l2 or self.configs[k].l2_biases for k in self.live)
        if self.optimizer != "sparse_sgd":
            self.optimizers = {k: self._optimizer(k, at) for at, k in enumerate(self.live)}
            self.grads = [torch.zeros_like(t) for t in self.own]
        self.learns = [learned_columns(self.width, side, self.device) for side in ("user", "item")]
        self._refresh()
        # Captured: sparse_sgd's plain tensor ops. Not: the CSR products of implicit blocks, nor
        # torch.optim's steps (their lr would be baked into the graph).
        graphable = self.device.type == "cuda" and not self.blocks and self.optimizer == "sparse_sgd"
        self.graph = EpochGraph(self._run, len(self.live), self.device) if graphable else None

    def _optimizer(self, k: int, at: int) -> torch.optim.Optimizer:
        """Model k's torch.optim optimizer over its slices (at: its place in the stack) of the
        learned tables; the state of the one it replaces (before the stack shrank) carries over."""
        config, params = self.configs[k], [t[at] for t in self._learned()]
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[self.optimizer]
        options = {"momentum": config.momentum} if self.optimizer == "sgd" else {}
        # One kernel for all of a model's tables where torch has one on this device, else foreach.
        fused = self.optimizer in ("sgd", "adam", "adamw") or (self.optimizer == "adagrad" and self.device.type == "cpu")
        optimizer = cls(params, lr=config.lr, weight_decay=config.weight_decay, **options,
                        **({"fused": True} if fused else {"foreach": True}))
        if k in self.optimizers:
            old = self.optimizers[k]
            for before, after in zip(old.param_groups[0]["params"], params):
                optimizer.state[after] = old.state.pop(before)
        return optimizer

    def _refresh(self) -> None:
        """The constant columns back in place, then the scored tables from the learned ones."""
        self.own[0][..., USER_ONE], self.own[1][..., ITEM_ONE] = 1.0, 1.0
        self.scored = list(self.own)
        for block in self.blocks:
            block.table[..., block.side.const] = 0.0
            self.scored[block.k] = self.scored[block.k] + block.fold()

    def epoch(self, epoch: int) -> list[float]:
        """One epoch of every live model, in place; each one's train MSE (one sync)."""
        n = len(self.train)
        perms = torch.stack([torch.randperm(n, device=self.device, generator=self.generators[k]) for k in self.live])
        # Rows of the flattened tables, example-major (N, K): a batch is a contiguous slice.
        users = (self.train.users[perms] + self._bases(self.own[0])).T.contiguous()
        items = (self.train.items[perms] + self._bases(self.own[1])).T.contiguous()
        rates = [self.configs[k].lr * self.configs[k].lr_decay ** (epoch - 1) for k in self.live]
        for k, rate in zip(self.live, rates):
            if k in self.optimizers:  # the dense rules' one param group
                self.optimizers[k].param_groups[0]["lr"] = rate
        lr = torch.tensor(rates, device=self.device)[:, None]
        inputs = (users, items, self.offset[perms].T.contiguous(), lr)
        with torch.no_grad():
            loss = self.graph(*inputs) if self.graph is not None else self._run(*inputs, self._zeros())
        return (loss.double() / n).tolist()

    def _zeros(self) -> torch.Tensor:
        return torch.zeros(len(self.live), device=self.device)

    def _bases(self, tables: torch.Tensor) -> torch.Tensor:
        """(K, 1): where each model's rows start in the flattened (K · rows, W) table."""
        return (torch.arange(len(self.live), device=self.device) * tables.shape[1])[:, None]

    def _run(self, users, items, offset, lr, loss) -> torch.Tensor:
        """The batch loop over (N, K) inputs; lr (K, 1) this epoch's. Within a batch every gradient
        is taken at the batch's starting rows: sparse_sgd steps the batch's rows by the summed
        gradient (lr per example); the dense rules see the batch mean."""
        W, K = self.width, users.shape[1]
        for lo in range(0, users.shape[0], self.batch):
            u, i = users[lo : lo + self.batch].reshape(-1), items[lo : lo + self.batch].reshape(-1)
            pu, qi = (t.view(-1, W)[rows].view(-1, K, W) for t, rows in zip(self.scored, (u, i)))  # (B, K, W)
            err = (pu * qi).sum(2) + offset[lo : lo + self.batch]  # (B, K)
            loss += err.square().sum(0)
            scale = 1.0 if self.optimizer == "sparse_sgd" else 1.0 / pu.shape[0]
            self._step((u, i), (pu, qi), err.mul_(scale).unsqueeze_(2), lr, scale)
            self._refresh()
        return loss

    def _step(self, rows, scored, e, lr, scale: float) -> None:
        """d/dp_u of (err² + λ|p_u|²)/2 is err·q_i + λ·p_u (λ on the own rows), likewise for q_i;
        e: (B, K, 1) errors already multiplied by `scale`, and so is λ here."""
        pu, qi = scored
        grads = [qi * e, pu * e]  # on the scored rows
        block_grads = [b.gradient(rows[b.k], grads[b.k], self.l2[b.k] if self.any_l2 else None, scale)
                       for b in self.blocks]
        if self.any_l2:  # the gathers and passes are saved when no model has L2
            own_rows = [t.view(-1, self.width)[r].view_as(g) for t, r, g in zip(self.own, rows, grads)] \
                if self.blocks else [pu, qi]
            for side in (0, 1):
                grads[side].addcmul_(own_rows[side], self.l2[side], value=scale)
        if self.optimizer == "sparse_sgd":
            for side in (0, 1):
                step = -lr * self.learns[side]  # (K, W)
                self.own[side].view(-1, self.width).index_add_(0, rows[side], (grads[side] * step).view(-1, self.width))
            for block, grad in zip(self.blocks, block_grads):
                block.table.sub_(grad * lr[:, :, None])
            return
        for dense, r, g in zip(self.grads, rows, grads):
            dense.zero_().view(-1, self.width).index_add_(0, r, g.view(-1, self.width))
        for at, k in enumerate(self.live):
            optimizer = self.optimizers[k]
            for param, grad in zip(optimizer.param_groups[0]["params"], self.grads + block_grads):
                param.grad = grad[at]
            optimizer.step()

    @torch.no_grad()
    def valid_rmse(self) -> list[float]:
        """Each live model's clamped RMSE on the valid rows, as `evaluate` scores one."""
        U, V = (t.view(-1, self.width) for t in self.scored)
        model, valid = self.models[0], self.valid
        sse = torch.zeros(len(self.live), dtype=torch.float64, device=self.device)
        chunk = max(_CHUNK // len(self.live), 1)
        for lo in range(0, len(valid), chunk):
            users = valid.users[lo : lo + chunk] + self._bases(self.scored[0])  # (K, chunk)
            items = valid.items[lo : lo + chunk] + self._bases(self.scored[1])
            scores = (U[users] * V[items]).sum(2) + model.global_mean
            sse += clamped_error(scores, valid.ratings[lo : lo + chunk], model.rating_scale).square().sum(1)
        return (sse / len(valid)).sqrt().tolist()

    def can_be_best(self, k: int, epoch: int) -> bool:
        return True

    def snapshot(self, k: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Model k's scored tables and its feature groups' tables W_g (`MatrixFactorization.side_tables`),
        each in its own layout (new tensors)."""
        at, factors = self.live.index(k), self.configs[k].factors
        side_tables: dict[str, list[torch.Tensor]] = {}
        for block in self.blocks:
            if not isinstance(block.side, Side):  # a feature group's block (the implicit ones are Sides)
                side_tables.setdefault(("user", "item")[block.k], []).append(narrow(block.table[at], factors))
        return (*(narrow(t[at], factors) for t in self.scored), side_tables)

    def model(self, k: int, snapshot) -> MatrixFactorization:
        users, items, side_tables = snapshot if snapshot is not None else self.snapshot(k)
        model = self.models[k]
        with torch.no_grad():
            model.users.copy_(users)
            model.items.copy_(items)
        model.side_tables = side_tables
        return model

    def drop(self, leaving: list[int]) -> None:
        keep = [at for at, k in enumerate(self.live) if k not in leaving]
        self.live = [self.live[at] for at in keep]
        if not leaving or not keep:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.own = [t[index] for t in self.own]
        for block in self.blocks:
            block.table = block.table[index]
        self._per_model()


def _blocks(train: Interactions, implicit: str, dims: dict, models: int, width: int) -> list[Block]:
    """The implicit blocks of `implicit` (none, user, item, both), each side's A from the fitted rows."""
    rows, blocks = (dims["n_users"] + 1, dims["n_items"] + 1), []
    if implicit in ("user", "both"):
        blocks.append(Block(0, Side(train.users, train.items, rows[0], rows[1], width + USER_ONE, width), models, width))
    if implicit in ("item", "both"):
        blocks.append(Block(1, Side(train.items, train.users, rows[1], rows[0], width + ITEM_ONE, width), models, width))
    return blocks
