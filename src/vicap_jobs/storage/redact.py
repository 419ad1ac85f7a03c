"""Credentials written inline in a URL (``s3://KEY:SECRET@bucket/…``) hidden wherever a location is shown.

vicap-jobs reads credentials only where the storage library does (the standard AWS variables,
profiles, instance roles), but a user may still type a URL that carries them; every message, log
line and table that shows a location goes through :func:`redact` first.
"""

from __future__ import annotations

import re
from pathlib import Path

#: ``scheme://user:password@`` — the password part (up to the ``@``, never across a ``/``) is replaced.
_INLINE_SECRET = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")


def redact(text: str | Path) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it shown as ``***``."""
    return _INLINE_SECRET.sub(r"\1:***@", str(text))


def has_inline_secret(location: str | Path) -> bool:
    """True for a URL that carries a password (``s3://KEY:SECRET@bucket``): never to be stored."""
    return _INLINE_SECRET.search(str(location)) is not None
