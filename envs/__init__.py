"""Gymnasium multi-turn envs: the contract, the chat spaces, registration and the checker."""

from espl.envs.core import MultiTurnEnv, Outcome, Task, coerce_action
from espl.envs.registration import env_ids, get_spec, register_envs
from espl.envs.spaces import ChatMessage, ChatMessages

__all__ = [
    "ChatMessage", "ChatMessages", "MultiTurnEnv", "Outcome", "Task", "coerce_action",
    "env_ids", "get_spec", "register_envs",
]
