"""Ctrl-C (and SIGTERM, its twin from `kill` and service managers) that is neither lost nor lands
in the middle of a storage write.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. Two places in a
trial loop make that unsafe (both seen in the fault tests): a finalizer (SQLAlchemy's weakref
clean-up swallows it as "Exception ignored" and the study runs on to its end) and Optuna's own
`tell` (the half-told trial then fails with an UnboundLocalError). So while trials run, the handler
only records the signal, and the loop and the epoch callback raise it at safe points (between
trials, after an epoch). A second Ctrl-C raises at once. Outside the loop it raises as usual.
Both signals end in KeyboardInterrupt, so every run is closed KILLED either way."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

__all__ = ["SIGNALS", "catching_sigint", "deferring", "raise_if_interrupted", "received"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_seen = threading.Event()
_deferring = threading.Event()
_received: list[int] = []


def _handler(signum, frame) -> None:
    _received.append(signum)
    if _seen.is_set() or not _deferring.is_set():
        _seen.set()
        raise KeyboardInterrupt
    _seen.set()


def received() -> list[int]:
    """The signals caught since the handler was installed, in order."""
    return list(_received)


@contextmanager
def catching_sigint():
    """Install the handler for SIGINT and SIGTERM for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _seen.clear()
    _received.clear()
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _seen.clear()  # a signal belongs to the block it arrived in: code after it must not re-raise it
        _received.clear()


@contextmanager
def deferring():
    """Within the block, a first SIGINT is only recorded (see raise_if_interrupted)."""
    _deferring.set()
    try:
        yield
    finally:
        _deferring.clear()
    raise_if_interrupted()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if SIGINT has arrived."""
    if _seen.is_set():
        raise KeyboardInterrupt
