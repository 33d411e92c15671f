"""Opaque keyset cursors for list endpoints: a page ends at its last row's (sort value, id)
and the next page starts after it, so pages stay consistent while rows are added and cost
the same at any depth (an offset makes the database count every row it skips)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any


class CursorError(ValueError):
    """The cursor is not one this server made, or was made for another query."""


@dataclass(frozen=True)
class Cursor:
    query: str  # digest of the sort and filters the cursor was made for
    value: Any  # the last row's sort value
    key: Any  # the last row's id: the tie-break


def query_digest(**params: Any) -> str:
    """A short digest of a query's sort and filters (None filters left out)."""
    shown = {k: v for k, v in sorted(params.items()) if v is not None}
    return hashlib.sha256(json.dumps(shown, default=str).encode()).hexdigest()[:12]


def encode(cursor: Cursor) -> str:
    raw = json.dumps([cursor.query, cursor.value, cursor.key], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(text: str, query: str) -> Cursor:
    """The cursor in `text`, checked against the query it is used with."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        made_for, value, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise CursorError(
            "the cursor is not one this server gave out: pass the X-Next-Cursor header of the "
            "previous page as it is, or start again without a cursor"
        ) from None
    if not isinstance(made_for, str) or not isinstance(value, (str, int, float)):
        raise CursorError("the cursor is not one this server gave out: start again without it")
    if made_for != query:
        raise CursorError(
            "the cursor was made for another query (its sort or filters differ): keep them "
            "the same while paging, or start again without a cursor"
        )
    return Cursor(made_for, value, key)
