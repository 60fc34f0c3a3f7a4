"""Find which known task a request is about, from the request's text alone.

Used by the ``sim`` and ``replay`` backends, which, like any model, see only
messages: the task is the one whose prompt appears in the conversation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from deliberate.models.base import Message

_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    return _WS.sub(" ", text).strip()


class PromptIndex:
    """Maps prompt texts to keys; looks a key up by substring of the messages.

    An index on each prompt's first 48 normalised characters keeps lookups cheap;
    when several prompts match, the longest wins (a prompt that contains another).
    """

    _ANCHOR = 48

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._by_anchor: dict[str, list[tuple[str, str]]] = {}
        for key, prompt in items:
            norm = normalise_text(prompt)
            if not norm:
                continue
            self._by_anchor.setdefault(norm[: self._ANCHOR], []).append((norm, key))
        self._anchor_lengths = sorted({len(a) for a in self._by_anchor}, reverse=True)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_anchor.values())

    def find_in_text(self, text: str) -> str | None:
        norm = normalise_text(text)
        best: tuple[int, str] | None = None
        # Exact whole-message match first: the common case, and O(1).
        for length in self._anchor_lengths:
            for prompt, key in self._by_anchor.get(norm[:length], ()):
                if norm == prompt:
                    return key
        for anchor, entries in self._by_anchor.items():
            if anchor not in norm:
                continue
            for prompt, key in entries:
                if prompt in norm and (best is None or len(prompt) > best[0]):
                    best = (len(prompt), key)
        return best[1] if best else None

    def find(self, messages: Sequence[Message]) -> str | None:
        """The key whose prompt appears in the user messages (latest first)."""
        for m in reversed(messages):
            if m.role != "user":
                continue
            key = self.find_in_text(m.content)
            if key is not None:
                return key
        return None
