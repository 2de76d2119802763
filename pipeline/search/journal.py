"""The default storage, Optuna's journal file, opened so that a crash in the middle of a write
costs nothing and a damaged file is named, never written after.

Optuna appends each record as one line under a lock file and, reading, skips an unterminated last
line (a write in progress); but the next append lands after those torn bytes and joins them to
its record, and from then on every reader fails on that line. So a torn tail (bytes after the last
newline) is cut off here, under Optuna's own lock, and kept beside the file (`<file>.torn-<unix
time>`): no reader ever used those bytes, so the study is what every reader saw. A line that does
not parse inside the file is refused with its number and what to do.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

from pipeline.search.options import SearchError

__all__ = ["open_journal"]

_TAIL = 1 << 16  # bytes read at a time, from the end, to find the last newline
_RECORD = b'{"op_code":'  # how every record of Optuna's journal begins


def open_journal(path: Path) -> JournalStorage:
    """The journal storage at `path` (created if missing), its torn tail cut off first; raises
    SearchError naming the file and line where a record inside it does not parse."""
    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's backend takes for every append
    lock.acquire()
    try:
        _cut_torn_tail(path)
    finally:
        lock.release()
    try:
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except ValueError as exc:  # json.JSONDecodeError too: a record that does not parse
        raise SearchError(_damaged(path, exc)) from None


def _cut_torn_tail(path: Path) -> None:
    """Truncate `path` after its last newline, keeping what is cut in `<path>.torn-<time>`; refuse a
    last complete line that is not a record (Optuna would skip it and append after it)."""
    if not path.is_file():
        return
    with open(path, "rb+") as journal:
        if not _RECORD.startswith(journal.read(len(_RECORD))):  # never cut a file that is not a journal
            raise SearchError(f"--storage {path}: not an Optuna journal (its first line is not a record); "
                              "pass another --storage")
        size = journal.seek(0, os.SEEK_END)
        keep = _after_last_newline(journal, size)
        if keep and not _parses(journal, _after_last_newline(journal, keep - 1), keep):
            raise SearchError(_damaged(path))
        if keep == size:
            return
        journal.seek(keep)
        saved = path.with_name(f"{path.name}.torn-{int(time.time())}")
        saved.write_bytes(journal.read())
        journal.truncate(keep)
        journal.flush()
        os.fsync(journal.fileno())
    print(f"warning: {path} ended in a record cut short by a crash ({size - keep} bytes, never read by any "
          f"worker); removed, and kept in {saved}", file=sys.stderr)


def _after_last_newline(journal, before: int) -> int:
    """The position just after the last newline in the bytes before `before` (0: none)."""
    end = before
    while end > 0:
        start = max(0, end - _TAIL)
        journal.seek(start)
        found = journal.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _parses(journal, start: int, end: int) -> bool:
    journal.seek(start)
    try:
        json.loads(journal.read(end - start))
        return True
    except ValueError:
        return False


def _damaged(path: Path, error: ValueError | None = None) -> str:
    """The message for a journal Optuna cannot replay: the first line that is not a record."""
    with open(path, "rb") as journal:
        for number, line in enumerate(journal, start=1):
            try:
                json.loads(line)
            except ValueError:
                return (f"--storage {path}: line {number} is not an Optuna journal record ({line[:60]!r}…); "
                        f"keep a copy, then cut the file before that line (head -n {number - 1} {path} > fixed "
                        f"&& mv fixed {path}) to resume from there, or pass another --storage")
    return f"--storage {path}: Optuna cannot read it ({error}); pass another --storage"
