"""The joint draw of one block folded into a side's rows (`gibbs.py`), for any CSR fold A.

Given everything else, the block W (cols, d) is Gaussian with precision
H = Λ ⊗ I + α Σ_u a_u a_uᵀ ⊗ S_u (a_u: row u of A; S_u: the (d, d) scatter of the other side's
columns over row u's n_u observations; Λ: the block's prior precision per column, diagonal). It is
drawn by perturbation-optimisation (Papandreou & Yuille 2010): CG on H W = b with b perturbed by
its own noise, whose exact solution is an exact draw. CG needs a preconditioner that knows A's
co-occurrence structure: with S_u ≈ n_u T (T: the mean scatter per observation),
H ≈ Λ ⊗ I + α G ⊗ T with G = AᵀNA fixed for the fit, block diagonal in G's eigenbasis (Q, s):
(Λ + α s_k T) for eigenvalue k, diagonal once T is whitened by Λ. G's top eigenvalues make H
ill-conditioned (ml-100k's user side: G_jj is item j's raters, median 25, at most 538; G's top
eigenvalue 23,900, its 32nd ~300), so Q keeps only those; H's diagonal (Jacobi) handles the rest.
"""

from __future__ import annotations

import torch

from pipeline.training.blocks import Fold

__all__ = ["FoldBasis", "draw_block", "symmetric_matvec"]

# Warm-started from the current block. With Jacobi alone the chain needed ~60 to reach its target
# (with 6 it drew the implicit blocks' precisions 5-10x too large, with 16 still 1.4-1.6x).
_CG_ITERATIONS = 8
_BASIS_CAP = 32  # G's top eigenvectors kept: (cols, 32) floats per block


def symmetric_matvec(S: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """S_r x_r per row for symmetric S (rows, d, d), x (rows, d): computed as x_rᵀ S_r, which
    torch's CPU bmm runs ~8x faster than S_r x_r (a (1, d) row against each (d, d); ml-100k, d 25)."""
    return (x[:, None, :] @ S).squeeze(1)


class FoldBasis:
    """G = AᵀNA's top k eigenpairs, for a fold A (rows, cols) and N = diag(`observations`, (rows,)):
    `Q` (cols, k) orthonormal, `s` (k,) and `observations` (their sum). k = min(cap, rows, cols);
    a randomized range finder (2k columns, `power` iterations, the caller's generator) and a
    Rayleigh-Ritz step. G does not change during a fit: built once."""

    def __init__(self, fold: Fold, observations: torch.Tensor, generator: torch.Generator, cap: int | None = None,
                 power: int = 3) -> None:
        counts = observations.double()
        self.observations = float(counts.sum())
        A, At = fold.A.to(torch.float64), fold.At.to(torch.float64)

        def gram(x: torch.Tensor) -> torch.Tensor:
            return At @ (counts[:, None] * (A @ x))

        k = min(fold.rows, fold.other_rows, cap or _BASIS_CAP)
        width = min(fold.rows, fold.other_rows, 2 * k)
        basis = torch.randn(fold.other_rows, width, generator=generator, dtype=torch.float64, device=counts.device)
        for _ in range(power):
            basis = torch.linalg.qr(gram(basis)).Q
        s, rotation = torch.linalg.eigh(basis.T @ gram(basis))  # ascending
        self.Q, self.s = (basis @ rotation[:, -k:]).float().contiguous(), s[-k:].clamp_min(0).float()

    def preconditioner(self, lam: torch.Tensor, alpha: torch.Tensor, T: torch.Tensor, diagonal: torch.Tensor):
        """r (cols, d) -> M⁻¹r = Q B⁻¹ Qᵀr + P D⁻¹ P r (P = I - QQᵀ): B_k = Λ + α s_k T on Q's span,
        D = H's diagonal (cols, d) on the rest. lam (d,), T (d, d): one (d, d) eigendecomposition
        here; four (cols, k) products per call."""
        scale = lam.double().rsqrt()
        tau, R = torch.linalg.eigh(scale[:, None] * T.double() * scale[None, :])
        E = (scale[:, None] * R).float()  # Eᵀ B_k E = diag(1 + α s_k τ)
        inverse = 1 / (1 + alpha * self.s[:, None] * tau.float().clamp_min(0)[None, :])  # (k, d)
        Q = self.Q

        def apply(r: torch.Tensor) -> torch.Tensor:
            c = Q.T @ r
            u = (r - Q @ c) / diagonal
            return u + Q @ ((c @ E * inverse) @ E.T - Q.T @ u)

        return apply


def draw_block(W: torch.Tensor, fold: Fold, S: torch.Tensor, residual: torch.Tensor, alpha: torch.Tensor,
               prior: tuple[torch.Tensor, torch.Tensor], basis: FoldBasis, generator) -> torch.Tensor:
    """A draw of the block W (cols, d) given everything else: H W = Λμ + Λ^½ε + Aᵀ·residual, solved
    by preconditioned CG warm-started from W. S (rows, d, d); residual (rows, d), already perturbed
    by the targets' noise; prior (μ, Λ): (d,) each, or (cols, d) each for a prior per row (a block of
    groups: the preconditioner then whitens by their mean precision; the draw stays exact)."""
    mean, lam = prior
    b = lam * mean + lam.sqrt() * torch.randn(W.shape, generator=generator, device=W.device) + fold.unfold(residual)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return lam * x + alpha * fold.unfold(symmetric_matvec(S, fold.fold(x)))

    diagonal = lam + alpha * (fold.A2t @ torch.diagonal(S, dim1=1, dim2=2))
    typical = lam if lam.dim() == 1 else lam.mean(0)
    precondition = basis.preconditioner(typical, alpha, S.sum(0) / basis.observations, diagonal)
    x = W.clone()
    r = b - apply(x)
    z = precondition(r)
    p, rz = z, (r * z).sum()
    for _ in range(_CG_ITERATIONS):  # fixed count: no host sync
        Hp = apply(p)
        step = rz / (p * Hp).sum().clamp_min(1e-30)
        x = x + step * p
        r = r - step * Hp
        z = precondition(r)
        rz_new = (r * z).sum()
        p, rz = z + (rz_new / rz.clamp_min(1e-30)) * p, rz_new
    return x
