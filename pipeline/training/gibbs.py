"""The Gibbs engine: Bayesian MF with implicit-feedback blocks by blocked Gibbs sampling (family "bayes").

r̂(u, i) = μ + U_u·V_i with U = P + A Y + Σ_g F_g W_g and V = Q + C Z + Σ_g G_g X_g, in
`pipeline.model`'s row layout: P, Q are each user's and item's own factors and bias; Y (one row per
item) and Z (one row per user) are the implicit blocks, A_uj = |N(u)|^-1/2 for the items j the user
rated and C_iv = |N(i)|^-1/2 for the users v who rated i, both built from the fitted rows only
(SVD++'s user side and its flipped item side; Koren 2008); W_g, X_g are the side-feature groups'
tables (one row per value, F_g, G_g their CSR blocks: `pipeline.features`), whose bias column is
each value's linear weight. Every table's columns have Normal-Gamma hyperpriors (mean and precision
per table and column, as in libFM's MCMC; Rendle 2012), the noise precision a Gamma prior, or it is
held fixed (`TrainConfig.noise_precision`).

One sweep, per side (users, then items), given the other side's totals:
- own rows: each row's conditional is Gaussian with a (d, d) precision: one batched Cholesky;
- each block (the implicit one, then all feature groups together, each with its own prior), given
  the rest: its rows share observations, so the block is drawn jointly by perturbation-
  optimisation (`block_draw`): perturb the prior mean and the targets by their own noise and solve
  the normal equations by CG (preconditioned with the fold's top eigenvectors, found once per
  fit), whose exact solution is an exact draw.
All of it is gathers, `index_add_` and batched linear algebra: the same code on a CPU and a GPU.

The prediction is the posterior mean over the kept samples (after burn-in). It collapses exactly
into one `MatrixFactorization`: the kept samples' factor columns concatenated and scaled by
1/sqrt(S), their biases averaged; the feature tables alike (`side_tables`), so a new entity's
row from its features is the posterior mean's too.
"""

from __future__ import annotations


import torch

from pipeline.evaluate import clamped_error
from pipeline.model import (ITEM_BIAS, ITEM_ONE, SIDES, USER_BIAS, USER_ONE, MatrixFactorization, OrdinalMF,
                            ordinal_mean, widen)
from pipeline.split import Interactions
from pipeline.training import ordinal
from pipeline.training.block_draw import FoldBasis, draw_block, symmetric_matvec
from pipeline.training.blocks import Fold, Side

__all__ = ["GibbsEngine", "average", "export"]

# Normal-Gamma hyperprior: λ ~ Gamma(a0, b0), μ | λ ~ N(0, 1 / (κ0 λ)); noise α ~ Gamma(a0, b0).
_A0, _B0, _KAPPA0 = 1.0, 1.0, 1.0


class _Sampler:
    """The chain's state: the own tables P, Q (augmented rows), each side's blocks (`blocks[side]`:
    (fold, table, preconditioner basis, prior groups' sizes): the implicit block (one group), then
    the feature groups of `folds[side]` side by side (one block with a prior per group: one draw
    per side, not one per group)), hyperparameters, the noise precision."""

    def __init__(self, train: Interactions, n_users: int, n_items: int, factors: int, implicit: str,
                 init_std: float, generator: torch.Generator, folds: dict[str, list[Fold]] | None = None,
                 noise_precision: float | None = None, output: str = "regression") -> None:
        device, width = train.ratings.device, factors + 2
        known = (train.users < n_users) & (train.items < n_items)  # cold rows have no identity to learn
        users, items, self.ratings = train.users[known], train.items[known], train.ratings[known]
        # ordinal output: the regression's targets are the probit's latents, drawn every sweep
        self.probit = ordinal.OrderedProbit(self.ratings, generator) if output == "ordinal" else None
        self.mu = self.ratings.double().mean().item()
        self.g = generator
        self.user = Side(users, items, n_users + 1, n_items + 1, width + USER_ONE, width)
        self.item = Side(items, users, n_items + 1, n_users + 1, width + ITEM_ONE, width)
        init = lambda n: torch.randn(n, width, generator=generator, device=device) * init_std  # noqa: E731
        self.P, self.Q = init(n_users + 1), init(n_items + 1)
        self.draws_alpha = noise_precision is None
        self.alpha = torch.full((), 1.0 if noise_precision is None else noise_precision, device=device)
        self.counts = torch.bincount(users, minlength=n_users + 1).double()
        self._set_target(self.ratings - self.mu if self.probit is None else
                         self.probit.latents(torch.full_like(self.ratings, self.mu), self.alpha) - self.mu)
        # Each block starts at 0; its preconditioner basis is built once per fit (from the generator,
        # before any sweep).
        self.blocks = {}
        for name, side in (("user", self.user), ("item", self.item)):
            groups = (folds or {}).get(name, [])
            chosen = [(side, [side.other_rows])] if implicit in (name, "both") else []
            chosen += [(Fold.joined(groups), [g.other_rows for g in groups])] if groups else []
            observations = torch.bincount(side.own, minlength=side.rows)
            self.blocks[name] = [(fold, torch.zeros(fold.other_rows, width, device=device),
                                  FoldBasis(fold, observations, generator), sizes) for fold, sizes in chosen]
        self._constants()

    def _constants(self) -> None:
        """The constant columns (and rows without data: fallback rows) back to [0…, 0, 1] / [0…, 1, 0]."""
        for table, side in ((self.P, self.user), (self.Q, self.item)):
            table[~side.has_data] = 0.0
            table[:, side.const] = 1.0
        for fold, table, *_ in self.blocks["user"] + self.blocks["item"]:
            table[~fold.other_has_data] = 0.0  # block rows no row reads
            table[:, fold.const] = 0.0

    def _set_target(self, target: torch.Tensor) -> None:
        """The regression's targets (N,), with Σ target² and per user Σ target: the train SSE's
        first terms, without gathers (`_sse`)."""
        self.target = target
        sums = torch.zeros_like(self.counts).index_add_(0, self.user.own, target.double())
        self.moments = (target.double().square().sum(), sums, self.counts)

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """U = P + A Y + Σ F_g W_g and V = Q + C Z + Σ G_g X_g: (n_users + 1, K + 2), (n_items + 1, K + 2)."""
        return tuple(sum((fold.fold(table) for fold, table, *_ in self.blocks[side]), own)
                     for own, side in ((self.P, "user"), (self.Q, "item")))

    def sample(self) -> tuple:
        """A copy of the current sample, as `export` takes it: (U, V, the feature groups' tables per
        side (`MatrixFactorization.side_tables`' layout)), and for ordinal output `ordinal.link`'s
        terms: the cutpoints (K − 1,), the noise variance 1/α and the mean squared latent ()."""
        U, V = (t.clone() for t in self.totals())
        tables = {side: [t.clone() for t in table.split(sizes)] for side in SIDES
                  for fold, table, _, sizes in self.blocks[side] if not isinstance(fold, Side)}
        if self.probit is None:
            return U, V, tables
        squares = self.fitted.double().square().mean()
        return U, V, tables, self.probit.cutpoints.clone(), 1 / self.alpha.double(), squares

    def sweep(self) -> float:
        """One Gibbs sweep; returns the train MSE of the new sample (ordinal: of its expected
        ratings; the latents are its targets, drawn last, given the sweep's scores)."""
        _, V = self.totals()
        self._side_step(self.P, self.blocks["user"], self.user, V)
        U, _ = self.totals()
        S, t = self._side_step(self.Q, self.blocks["item"], self.item, U)
        sse = self._sse(U[:, USER_BIAS].double(), self.totals()[1][:, self.item.learned], S, t)
        n = len(self.target)
        if self.draws_alpha:
            self.alpha = _gamma(_A0 + n / 2, _B0 + sse / 2, self.g).float()
        if self.probit is None:
            return sse / n
        U, V = self.totals()
        self.fitted = f = self.mu + (U[self.user.own] * V[self.user.other]).sum(1)  # the latents' means
        self._set_target(self.probit.latents(f, self.alpha) - self.mu)
        return (self.probit.expected(f, self.alpha) - self.ratings.double()).square().mean()

    def _sse(self, b: torch.Tensor, x: torch.Tensor, S: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Σ (r − μ − U_u·V_i)² over the fitted rows from the item step's S, t (no per-row gathers):
        Σ (r − μ − b_u)² − 2 Σ_i x_i·t_i + Σ_i x_iᵀ S_i x_i; b (users,), x (items, d): V's learned columns."""
        square, sums, counts = self.moments
        quadratic = (x * symmetric_matvec(S, x)).double().sum()
        return square - 2 * (b * sums).sum() + (counts * b * b).sum() - 2 * (x * t).double().sum() + quadratic

    def _side_step(self, own: torch.Tensor, blocks: list, side: Side, other_total: torch.Tensor):
        """Draws this side's own rows, then each of its blocks given the rest; returns S (rows, d, d)
        and t (rows, d)."""
        X = other_total[:, side.learned]  # (other_rows, d): the other side's learned columns
        d = X.shape[1]
        # Per own row: S = Σ X_j X_jᵀ and t = Σ (r − μ − the other side's bias) X_j over its rows.
        S = (side.B @ (X[:, :, None] * X[:, None, :]).reshape(-1, d * d)).reshape(-1, d, d)
        t = side.matrix(self.target) @ X - side.B @ (other_total[:, side.const, None] * X)
        folded = [fold.fold(table)[:, side.learned] for fold, table, *_ in blocks]  # each block's part of the rows
        offset = sum(folded, torch.zeros_like(t))
        mean, lam = _hyper(own[side.has_data][:, side.learned], self.g)
        precision = torch.diag_embed(lam.expand_as(t)) + self.alpha * S
        rhs = lam * mean + self.alpha * (t - symmetric_matvec(S, offset))
        own[:, side.learned] = _gaussian(precision, rhs, self.g)
        for b, (fold, table, basis, sizes) in enumerate(blocks):
            rest = sum((part for c, part in enumerate(folded) if c != b), own[:, side.learned])
            # Σ X_j ε_j over each own row's observations: the targets' noise, for the joint draw.
            noise = side.matrix(torch.randn(len(side.own), generator=self.g, device=X.device)) @ X
            residual = self.alpha * (t - symmetric_matvec(S, rest)) + self.alpha.sqrt() * noise
            prior = _group_priors(table[:, side.learned], fold.other_has_data, sizes, self.g)
            table[:, side.learned] = draw_block(table[:, side.learned], fold, S, residual, self.alpha, prior,
                                                basis, self.g)
            folded[b] = fold.fold(table)[:, side.learned]
        self._constants()
        return S, t


def _gamma(shape, rate, generator) -> torch.Tensor:
    """Gamma(shape, rate) draws, elementwise (shape, rate: floats or tensors)."""
    shape = torch.as_tensor(shape, dtype=torch.float64, device=rate.device if torch.is_tensor(rate) else None)
    return torch._standard_gamma(shape, generator=generator) / rate


def _group_priors(table: torch.Tensor, read: torch.Tensor, sizes: list[int], generator):
    """Per row of a block (n, d) whose rows are groups of `sizes`: its group's (mean, precision),
    each drawn from the rows some entity reads (`read`, (n,) bool): (d,) each for one group,
    (n, d) each for several."""
    if len(sizes) == 1:
        return _hyper(table[read], generator)
    drawn = [_hyper(rows[used], generator) for rows, used in zip(table.split(sizes), read.split(sizes))]
    return tuple(torch.cat([x.expand(n, -1) for x, n in zip(column, sizes)]) for column in zip(*drawn))


def _hyper(x: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, precision) per column of the rows x (m, d), drawn from their Normal-Gamma posterior
    (m = 0: from the prior)."""
    m = x.shape[0]
    x = x.double()
    xbar = x.sum(0) / max(m, 1)
    kappa = _KAPPA0 + m
    rate = _B0 + 0.5 * (x - xbar).square().sum(0) + _KAPPA0 * m * xbar.square() / (2 * kappa)
    lam = _gamma(torch.full_like(xbar, _A0 + m / 2), rate, generator)
    mean = m * xbar / kappa + torch.randn(x.shape[1], generator=generator, device=x.device, dtype=x.dtype) / (
        kappa * lam).sqrt()
    return mean.float(), lam.float()


def _gaussian(precision: torch.Tensor, rhs: torch.Tensor, generator) -> torch.Tensor:
    """One draw per row from N(precision⁻¹ rhs, precision⁻¹): precision (n, d, d), rhs (n, d)."""
    L = torch.linalg.cholesky(precision)
    mean = torch.cholesky_solve(rhs[:, :, None], L)
    eps = torch.randn(rhs.shape + (1,), generator=generator, device=rhs.device)
    noise = torch.linalg.solve_triangular(L.mT, eps, upper=True)  # covariance (L Lᵀ)⁻¹
    return (mean + noise).squeeze(2)


class GibbsEngine:
    """The sampler under the driver (`pipeline.training.driver`): one chain (K = 1), an epoch is a
    sweep. Its valid RMSE is the running posterior mean's (the current sample's during burn-in);
    its snapshot is the number of kept samples, and its model the posterior mean over them (for
    ordinal output, the expected rating under it: `ordinal.scorer`)."""

    def __init__(self, train: Interactions, config, *, n_users: int, n_items: int, rating_scale, valid,
                 generator, folds: dict[str, list[Fold]] | None = None) -> None:
        self.sampler = _Sampler(train, n_users, n_items, config.factors, config.implicit, config.init_std, generator,
                                folds, config.noise_precision, config.output)
        self.config, self.valid, self.rating_scale = config, valid, rating_scale
        self.kept: list[tuple] = []
        device = train.ratings.device
        self.running = torch.zeros(len(valid), dtype=torch.float64, device=device) if valid else None
        self.fitted_sum = 0.0  # ordinal: Σ over the kept samples of their latents on the fitted rows
        self.live = [0]

    def epoch(self, sweep: int) -> list[float]:
        train_mse = float(self.sampler.sweep())  # one CPU-GPU sync point per sweep
        self.current = self.sampler.sample()
        self.keeping = sweep > self.config.burn_in
        if self.keeping:
            self.kept.append(self.current)
            if self.sampler.probit is not None:
                self.fitted_sum = self.fitted_sum + self.sampler.fitted.double()
        return [train_mse]

    def valid_rmse(self) -> list[float]:
        U, V = self.current[:2]
        score = self.sampler.mu + (U[self.valid.users] * V[self.valid.items]).sum(1).double()
        if self.keeping:
            self.running += score
            score = self.running / len(self.kept)
        if self.sampler.probit is not None:
            samples, fitted = (self.kept, self.fitted_sum / len(self.kept)) if self.keeping else (
                [self.current], self.sampler.fitted)
            cutpoints, scale = ordinal.link(*_link_terms(samples), fitted)
            score = ordinal_mean(score, cutpoints, scale, self.sampler.probit.levels.double())
        return [clamped_error(score, self.valid.ratings.double(), self.rating_scale).square().mean().sqrt().item()]

    def can_be_best(self, k: int, sweep: int) -> bool:
        return sweep > self.config.burn_in

    def snapshot(self, k: int) -> int:
        return len(self.kept)

    def model(self, k: int, snapshot: int | None) -> MatrixFactorization:
        """The posterior mean over the first `snapshot` kept samples (None: all of them; stopped
        during burn-in: the last sample alone)."""
        samples = self.kept[:snapshot] if snapshot else self.kept or [self.current]
        latent = export(samples, self.config.factors, self.sampler.mu, self.rating_scale)
        if self.sampler.probit is None:
            return latent
        return ordinal.scorer(latent, *_link_terms(samples), (self.sampler.user.own, self.sampler.user.other),
                              self.sampler.probit.levels)

    def drop(self, leaving: list[int]) -> None:
        self.live = [k for k in self.live if k not in leaving]


@torch.no_grad()
def export(samples: list[tuple], factors: int, mu: float, rating_scale) -> MatrixFactorization:
    """The posterior mean as one MatrixFactorization: r̂ = μ + mean_s(U_s·V_s) = μ + b̄_u + b̄_i +
    [p_1..p_S]/√S · [q_1..q_S]/√S (the samples' factor columns concatenated, then reduced
    exactly to at most min(users, items) columns: the product has no higher rank). A sample is
    (U, V) or (U, V, feature tables per side): each feature table is concatenated and averaged
    like its side's rows, and reduced with them, so a new entity's row is exact too. (An ordinal
    sample's other terms are read by `_link_terms`.)"""
    scale = len(samples) ** -0.5
    features = samples[0][2] if len(samples[0]) > 2 else {}
    # Per side: (S, rows, K + 2) stacks, the table's rows first, then each feature group's.
    stacks = {side: [torch.stack([sample[at] for sample in samples])] + [
        torch.stack([sample[2][side][g] for sample in samples]) for g in range(len(features.get(side, [])))]
        for at, side in enumerate(SIDES)}
    P, Q = (torch.cat([(t[:, :, :factors] * scale).permute(1, 0, 2).reshape(t.shape[1], -1) for t in stacks[side]])
            for side in SIDES)
    P, Q = _reduce(P, Q)
    width = P.shape[1]
    U, V = stacks["user"][0], stacks["item"][0]
    model = MatrixFactorization(U.shape[1] - 1, V.shape[1] - 1, width, mu, rating_scale).to(U.device)
    for side, reduced, table, bias in (("user", P, model.users, USER_BIAS), ("item", Q, model.items, ITEM_BIAS)):
        parts = reduced.split([t.shape[1] for t in stacks[side]])
        for g, (t, part) in enumerate(zip(stacks[side], parts)):  # g 0: the table; then its feature groups
            out = table if g == 0 else U.new_zeros(t.shape[1], width + 2)  # a feature table's constant column: 0
            out[:, :width], out[:, bias] = part, t[:, :, bias].mean(0)
            if g:
                model.side_tables.setdefault(side, []).append(out)
    model.restore_constants()
    return model


@torch.no_grad()
def average(models: list[MatrixFactorization], fitted: tuple[torch.Tensor, torch.Tensor] | None = None
            ) -> MatrixFactorization:
    """The mean of the models' unclamped scores as one model, their side tables' too (models of the
    same rows, global mean and feature groups, e.g. chains' posterior means): `export` over the
    models as samples, each widened to the widest (zero columns change no product). Ordinal
    models (chains of as many samples each) pool into one posterior: their latents averaged so,
    their link's terms too, over `fitted`, the (users, items) rows they were fitted on."""
    width = max(m.factors for m in models)
    grow = lambda t, m: widen(t.detach(), m.factors, width + 2)  # noqa: E731
    samples = [(grow(m.users, m), grow(m.items, m), {side: [grow(t, m) for t in tables]
                                                    for side, tables in m.side_tables.items()}) for m in models]
    first = models[0]
    latent = export(samples, width, first.global_mean.item(), tuple(first.rating_scale.tolist()))
    if not isinstance(first, OrdinalMF):
        return latent
    noise, squares = (torch.tensor([m.pooled[at] for m in models], dtype=torch.float64) for at in (0, 1))
    return ordinal.scorer(latent, torch.stack([m.cutpoints for m in models]), noise, squares, fitted, first.levels)


def _link_terms(samples: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ordinal samples' cutpoints (S, K − 1), noise variances (S,) and mean squared latents (S,)."""
    return tuple(torch.stack([sample[at] for sample in samples]) for at in (3, 4, 5))


def _reduce(P: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P', Q') with P'Q'ᵀ = PQᵀ and at most min(rows) columns (QR of the shorter side, float64)."""
    if P.shape[1] <= min(P.shape[0], Q.shape[0]):
        return P, Q
    flip = P.shape[0] > Q.shape[0]
    short, long_ = (Q, P) if flip else (P, Q)
    basis, r = torch.linalg.qr(short.double())  # short = basis·r, basis (rows, rows)
    reduced = (long_.double() @ r.T).float()
    return (reduced, basis.float()) if flip else (basis.float(), reduced)
