"""A faithful PyTorch port of the d2l "Matrix Factorization" training loop (the project's seed).

d2l (MXNet): nn.Embedding for P, Q and the two biases, init Normal(0.01), no global mean,
gluon L2Loss (= ½ squared error), Adam with wd, DataLoader over an ArrayDataset with shuffle,
batch 512. Only the framework changes here; this is the reference our trainer is measured against.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SeedMF(nn.Module):
    def __init__(self, factors: int, n_users: int, n_items: int) -> None:
        super().__init__()
        self.P, self.Q = nn.Embedding(n_users, factors), nn.Embedding(n_items, factors)
        self.user_bias, self.item_bias = nn.Embedding(n_users, 1), nn.Embedding(n_items, 1)
        for p in self.parameters():
            nn.init.normal_(p, 0.0, 0.01)

    def forward(self, users, items):
        out = (self.P(users) * self.Q(items)).sum(1) + self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)
        return out.flatten()


def train_seed_port(train, test, n_users, n_items, *, factors=30, lr=0.002, wd=1e-5, epochs=20,
                    batch_size=512, seed=0, device="cpu") -> dict:
    """train, test: pipeline Interactions (test rows may hold the fallback index: clipped to the
    last row, as the seed had no notion of unknown ids). Returns examples/s and test RMSE."""
    torch.manual_seed(seed)
    net = SeedMF(factors, n_users + 1, n_items + 1).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
    loader = DataLoader(TensorDataset(train.users, train.items, train.ratings), batch_size=batch_size, shuffle=True)
    start = time.perf_counter()
    for _ in range(epochs):
        for u, i, r in loader:
            u, i, r = u.to(device), i.to(device), r.to(device)
            loss = (0.5 * (net(u, i) - r) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        pred = net(test.users.to(device), test.items.to(device)).clamp(1, 5)
        rmse = ((pred - test.ratings.to(device)) ** 2).mean().sqrt().item()
    return {"examples_per_second": len(train) * epochs / seconds, "seconds": seconds, "test_rmse": rmse}
