"""URLs as they may be shown: a password in a database or tracking URL never reaches a message,
a tag or a log line."""

from __future__ import annotations

import re

__all__ = ["masked"]

_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/@:\s]*):[^/@\s]*@")


def masked(url: str) -> str:
    """`url` with the password of its user-info replaced by ***:
    postgresql://me:secret@db/x -> postgresql://me:***@db/x (URLs without one unchanged)."""
    return _PASSWORD.sub(r"\g<head>:***@", str(url))
