"""Blocks folded into a side's table as sparse matrices: implicit feedback over the fitted rows
(SVD++'s folds; Koren 2008) and side features (one per feature group), shared by the tensor
engine and the Gibbs sampler."""

from __future__ import annotations

import warnings

import torch

__all__ = ["Fold", "Side"]


class Fold:
    """A sparse (rows, cols) matrix A from pairs (r, c) with one value each, and the products a
    block needs: `fold` A·block, `unfold` Aᵀ·grad, `A2t` (A∘A)ᵀ. A block (cols, W) folded by A adds
    to a table's rows; its column `const` (the table's constant-1 column) stays 0. Every per-row
    sum is a CSR product (an order of magnitude faster than index_add)."""

    def __init__(self, r, c, values, rows: int, cols: int, const: int) -> None:
        self.rows, self.other_rows, self.const, self.values = rows, cols, const, values
        self._by_own = _layout(r, c, rows, cols)
        self._by_other = _layout(c, r, cols, rows)
        self.A, self.At = self.matrix(values), self.matrix_t(values)
        self.A2t = self.matrix_t(values.square())
        self.other_has_data = torch.bincount(c, minlength=cols) > 0  # block rows some row reads

    @classmethod
    def of(cls, block, const: int, device) -> Fold:
        """The fold of a side-feature block (`pipeline.features.Block`: CSR arrays, `shape`)."""
        crow = torch.from_numpy(block.crow).to(device)
        r = torch.repeat_interleave(torch.arange(block.shape[0], device=device), crow.diff())
        return cls(r, torch.from_numpy(block.col).to(device), torch.from_numpy(block.values).to(device),
                   block.shape[0], block.shape[1], const)

    @classmethod
    def joined(cls, folds: list[Fold]) -> Fold:
        """The folds (of one side: same rows, same const) side by side: (rows, Σ cols), fold k's
        columns after those of folds 0..k-1."""
        pairs, offset = [], 0
        for fold in folds:
            crow = fold.A.crow_indices()
            r = torch.repeat_interleave(torch.arange(fold.rows, device=crow.device), crow.diff())
            pairs.append((r, fold.A.col_indices() + offset, fold.A.values()))
            offset += fold.other_rows
        r, c, values = (torch.cat(column) for column in zip(*pairs))
        return cls(r, c, values, folds[0].rows, offset, folds[0].const)

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """(rows, cols) CSR with one value per pair (in pair order)."""
        order, crow, col = self._by_own
        return _csr(crow, col, values[order], (self.rows, self.other_rows))

    def matrix_t(self, values: torch.Tensor) -> torch.Tensor:
        """The transpose, (cols, rows)."""
        order, crow, col = self._by_other
        return _csr(crow, col, values[order], (self.other_rows, self.rows))

    def fold(self, block: torch.Tensor) -> torch.Tensor:
        """A·block: (cols, c) -> (rows, c), each row the weighted sum over its pairs."""
        return self.A @ block

    def unfold(self, grad: torch.Tensor) -> torch.Tensor:
        """Aᵀ·grad: (rows, c) -> (cols, c)."""
        return self.At @ grad


class Side(Fold):
    """One side of the fitted rows: `own` indexes this side's table (users for the user side),
    `other` the other side's; `const` is this side's constant-1 column (the others are learned).
    Rows of the tables: entities + the fallback row. As a Fold, A (rows, other_rows) is the
    implicit fold: A[u, j] = |N(u)|^-1/2 for each fitted row (u, j); B the same pattern with 1s."""

    def __init__(self, own, other, rows: int, other_rows: int, const: int, width: int) -> None:
        count = torch.bincount(own, minlength=rows)
        self.weight = count[own].to(torch.float32).rsqrt()
        super().__init__(own, other, self.weight, rows, other_rows, const)
        self.own, self.other = own, other
        self.learned = torch.tensor([c for c in range(width) if c != const], device=own.device)
        self.has_data = count > 0
        self.B = self.matrix(torch.ones_like(self.weight))


def _layout(major, minor, rows, cols):
    """CSR structure of the pairs (major, minor): (order of the pairs, crow indices, columns)."""
    order = torch.argsort(major * cols + minor)
    crow = torch.zeros(rows + 1, dtype=torch.int64, device=major.device)
    crow[1:] = torch.cumsum(torch.bincount(major, minlength=rows), 0)
    return order, crow, minor[order]


def _csr(crow, col, values, size) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size)
