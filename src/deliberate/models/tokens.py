"""The one stand-in tokenizer of the offline backends (sim, replay, scripted).

Words and single punctuation marks. Real tokenizers differ by model; against
cl100k_base this count is within about 0.8–1.1× on GSM8K solutions and HumanEval
programs, close enough for token budgets to bite on simulated and replayed runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from deliberate.models.base import Message

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD = 4  # role and separators, as chat templates add them


def count_tokens(text: str) -> int:
    return sum(1 for _ in TOKEN_RE.finditer(text))


def prompt_tokens(messages: Iterable[Message]) -> int:
    return sum(count_tokens(m.content) + MESSAGE_OVERHEAD for m in messages)


def token_pieces(text: str) -> list[str]:
    """``text`` cut into one piece per token (leading whitespace attached); joins back exactly."""
    pieces: list[str] = []
    last = 0
    for m in TOKEN_RE.finditer(text):
        pieces.append(text[last : m.end()])
        last = m.end()
    if last < len(text):
        if pieces:
            pieces[-1] += text[last:]
        else:
            pieces.append(text[last:])
    return pieces


def truncate_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """The first ``max_tokens`` tokens of ``text`` and whether anything was cut."""
    if max_tokens <= 0:
        return "", bool(text)
    for k, m in enumerate(TOKEN_RE.finditer(text), start=1):
        if k == max_tokens:
            rest = text[m.end() :]
            return (text[: m.end()], True) if TOKEN_RE.search(rest) else (text, False)
    return text, False
