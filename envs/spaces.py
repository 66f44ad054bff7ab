"""Gymnasium spaces for chat messages, so `gymnasium.utils.env_checker.check_env` can check our envs."""

from __future__ import annotations

from typing import Any, Sequence, cast

import numpy as np
from gymnasium import spaces

from espl.types import Message

ROLES = ("system", "user", "assistant", "tool")
_SAMPLE_WORDS = ("the", "answer", "is", "42", "Answer:", "7", "x", "=", "3", "so", "\\boxed{5}", "\n")


def is_message(x: Any, roles: Sequence[str] = ROLES) -> bool:
    return (
        isinstance(x, dict)
        and x.get("role") in roles
        and isinstance(x.get("content", ""), str)
        and isinstance(x.get("tool_calls", []), list)
    )


class ChatMessage(spaces.Space[Message]):
    """One chat message of the given roles; the action space takes assistant text or an assistant Message."""

    def __init__(self, roles: Sequence[str] = ("assistant",), max_length: int = 64, seed: int | None = None):
        self.roles = tuple(roles)
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> Message:
        n = int(self.np_random.integers(1, self.max_length))
        words = self.np_random.choice(_SAMPLE_WORDS, size=n)
        return cast(Message, {"role": self.roles[0], "content": " ".join(str(w) for w in words)})

    def contains(self, x: Any) -> bool:
        if isinstance(x, str):
            return "assistant" in self.roles
        return is_message(x, self.roles)

    def __repr__(self) -> str:
        return f"ChatMessage(roles={self.roles})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ChatMessage) and other.roles == self.roles


class ChatMessages(spaces.Space[list]):
    """A list of chat messages: the observation of a multi-turn env (the new messages for the agent)."""

    def __init__(self, roles: Sequence[str] = ROLES, max_messages: int = 4, seed: int | None = None):
        self.roles = tuple(roles)
        self.max_messages = max_messages
        self._message = ChatMessage(roles=self.roles)
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def seed(self, seed: int | None = None) -> int:
        seeds = super().seed(seed)
        self._message.seed(int(self.np_random.integers(2**31)))
        return seeds

    def sample(self, mask: Any = None, probability: Any = None) -> list[Message]:
        n = int(self.np_random.integers(1, self.max_messages + 1))
        return [self._message.sample() for _ in range(n)]

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and all(is_message(m, self.roles) for m in x)

    def __repr__(self) -> str:
        return f"ChatMessages(roles={self.roles})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ChatMessages) and other.roles == self.roles


__all__ = ["ChatMessage", "ChatMessages", "is_message", "np"]
