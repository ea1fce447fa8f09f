"""Conversation memory owned by the session: bounded by turns and by (estimated) tokens."""

from __future__ import annotations

from collections import deque


class History:
    def __init__(self, max_turns: int, max_tokens: int) -> None:
        self.max_turns, self.max_tokens = max_turns, max_tokens
        self._turns: deque[tuple[str, str]] = deque()

    def add(self, user: str, assistant: str) -> None:
        self._turns.append((user, assistant))
        while len(self._turns) > self.max_turns or (len(self._turns) > 1 and self.tokens() > self.max_tokens):
            self._turns.popleft()

    def replace_last_reply(self, assistant: str) -> None:
        """After an interruption: the last reply becomes what the user actually heard."""
        if self._turns:
            self._turns[-1] = (self._turns[-1][0], assistant)

    def drop_last(self) -> None:
        if self._turns:
            self._turns.pop()

    def tokens(self) -> int:
        # ~4 characters per token for English; good enough to bound the prompt
        return sum(len(u) + len(a) for u, a in self._turns) // 4

    def messages(self, system: str) -> list[dict[str, str]]:
        out = [{"role": "system", "content": system}]
        for user, assistant in self._turns:
            out.append({"role": "user", "content": user})
            if assistant:
                out.append({"role": "assistant", "content": assistant})
        return out

    def __len__(self) -> int:
        return len(self._turns)
