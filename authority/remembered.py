"""Verifications remembered by the exact token string: a caller presents the same bearer, a resource server
introspects the same access token, many times over; checking its signature once per process is enough.

Bounded (the oldest verified first out) and each entry until a deadline of its own, never past the token's ``exp``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class Remembered(Generic[T]):
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, tuple[T, int]] = OrderedDict()

    def get(self, token: str, now: int) -> T | None:
        entry = self._entries.get(token)
        return entry[0] if entry is not None and now < entry[1] else None

    def put(self, token: str, value: T, until: int) -> None:
        self._entries[token] = (value, until)
        self._entries.move_to_end(token)  # oldest first out, by when it was last verified
        if len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def tokens(self) -> frozenset[str]:
        """The tokens remembered, as spelled when stored."""
        return frozenset(self._entries)
