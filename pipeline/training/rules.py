"""torch.optim's update rules written over stacked tables, so that K models with their own lr,
weight decay and momentum step as one: T (K, rows, W) the tables, G the batch-mean gradient
(weight decay not yet added), lr (K, 1, 1), and `s` the engine's per-model weight_decay and
momentum (K, 1, 1) and step count. Defaults as torch.optim's: Adam betas (0.9, 0.999), eps 1e-8;
RMSprop alpha 0.99, eps 1e-8; Adagrad eps 1e-10 (tests: equal to torch.optim to 1e-6).
"""

from __future__ import annotations

__all__ = ["DENSE", "SLOTS"]

SLOTS = {"sparse_sgd": 0, "sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1}
"""How many state tensors of a table's shape each rule keeps."""


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


DENSE = {"sgd": _sgd, "adam": _adam, "adamw": lambda *a: _adam(*a, decoupled=True), "rmsprop": _rmsprop,
         "adagrad": _adagrad}
