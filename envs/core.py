"""The multi-turn env contract: a Gymnasium env whose observations and actions are chat messages.

An episode:
    obs, info = env.reset(seed=7, options={"system_prompt": "Think step by step."})
    # obs == [{"role": "system", ...}, {"role": "user", ...}]   (no system message when the prompt is None)
    obs, reward, terminated, truncated, info = env.step("... Answer: 42")
    # obs: the env's new messages (feedback, tool results); [] once the episode is over

- The system prompt is an input of the episode (`options["system_prompt"]`), not state of the env, so one
  env serves every prompt of a population. `options["system_prompt_placement"] = "user"` puts it into the
  first user message instead, in the E-SPL reference code's words (`USER_PLACEMENT_TEMPLATE`: the problem
  first, then the principles); no prompt leaves the raw problem, as the reference's training rollouts do.
- The action is the assistant's reply: a `str`, or a `Message` dict with role "assistant" (and optional
  `tool_calls`). Anything else raises TypeError. A reply that cannot be parsed is a scored outcome
  (`info["reason"]` says why), never an exception.
- The reward is episodic: 0.0 on every step but the last, unless a subclass documents shaping.
- `terminated`: the task reached an end state (answer graded, attempts used up). `truncated`: the episode
  was cut off by a limit (`max_turns`) before the task ended. Both as Gymnasium defines them.
- `info` always has `task_id` and `turn`; on the last step also `reason` ("correct", "wrong_answer",
  "no_answer", "max_turns", ...).
- The same seed gives the same task; train and test splits never share a task. A split drawn from a fixed
  list has `num_tasks()` distinct tasks (seeds wrap around after them: an evaluation of more would repeat
  tasks, so `evaluate` refuses it); a generated split says None.
- `step` after the episode ended raises RuntimeError; call `reset` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import gymnasium as gym

from espl.envs.spaces import ChatMessage, ChatMessages
from espl.types import Message

Split = Literal["train", "test"]
SPLITS = ("train", "test")
MAX_REPLY_CHARS = 1_000_000  # longer replies are cut (and flagged in info) before scoring

# The E-SPL reference's user turn (`PROBLEM_WITH_PRINCIPLE_TEMPLATE`, LunjunZhang/E-SPL commit 80d5a4b,
# tinker_cookbook/recipes/system_prompt_learning_rl.py lines 234-238): the problem first, then the principles.
# tests/trainer/test_reference_text.py compares it with a verbatim copy of the reference's string.
USER_PLACEMENT_TEMPLATE = (
    "Please solve the following problem:\n{problem}\n\n"
    "When solving problems, you MUST first carefully read and understand the helpful instructions and "
    "principles below:\n{principles}"
)


def user_placement(problem: str, system_prompt: str | None) -> str:
    """The first user message with `system_prompt` placed in it as the reference does; the raw problem when
    there is no prompt (the reference's training rollouts: `... if principles else each["problem"]`)."""
    if not system_prompt:
        return problem
    return USER_PLACEMENT_TEMPLATE.format(problem=problem, principles=system_prompt)


@dataclass(frozen=True)
class Task:
    """One problem. `prompt` is the user message text; `answer` what the reward function checks against."""

    id: str
    prompt: str
    answer: Any = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What an env makes of one assistant reply.

    done=False means the episode goes on and `messages` are the next observation (feedback, tool results).
    """

    reward: float
    reason: str
    done: bool
    messages: tuple[Message, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


def coerce_action(action: Any) -> Message:
    """The assistant message for an action, or TypeError saying what was expected."""
    if isinstance(action, bytes):
        action = action.decode("utf-8", errors="replace")
    if isinstance(action, str):
        return {"role": "assistant", "content": action}
    if isinstance(action, dict) and action.get("role", "assistant") == "assistant":
        content = action.get("content") or ""
        if not isinstance(content, str):
            raise TypeError(f"action['content'] of the assistant message must be a str, got {type(content).__name__}")
        msg: Message = {"role": "assistant", "content": content}
        if action.get("tool_calls"):
            msg["tool_calls"] = list(action["tool_calls"])
        return msg
    raise TypeError(
        "action must be the assistant reply as a str or a Message dict "
        f"{{'role': 'assistant', 'content': ...}}, got {type(action).__name__}"
    )


def clean_text(text: str) -> tuple[str, bool]:
    """Make a reply safe to score: lone surrogates replaced, at most MAX_REPLY_CHARS kept (the tail)."""
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    if len(text) > MAX_REPLY_CHARS:
        return text[-MAX_REPLY_CHARS:], True
    return text, False


class MultiTurnEnv(gym.Env[list, Message]):
    """Base class of every espl env. Subclasses implement `make_task`, `evaluate` and set the class info."""

    metadata: dict[str, Any] = {"render_modes": ["ansi"]}
    family: ClassVar[str] = "generic"
    description: ClassVar[str] = ""
    reward_range: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def __init__(self, *, split: Split = "train", max_turns: int = 1, render_mode: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"split: must be one of {SPLITS}, got {split!r}")
        if not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"max_turns: must be an int >= 1, got {max_turns!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode: must be None or 'ansi', got {render_mode!r}")
        self.split: Split = split
        self.max_turns = max_turns
        self.render_mode = render_mode
        self.observation_space = ChatMessages()
        self.action_space = ChatMessage(roles=("assistant",))
        self.task: Task | None = None
        self.turn = 0
        self.history: list[Message] = []
        self._done = True

    # ---- the part a subclass writes -------------------------------------------------------------------
    def make_task(self, index: int) -> Task:
        """The task for a non-negative index; the same index always gives the same task of `self.split`."""
        raise NotImplementedError

    def num_tasks(self) -> int | None:
        """How many distinct tasks `self.split` has (seeds beyond wrap around), or None when every seed gives a
        new task (generated splits). A subclass with a fixed list of tasks returns its length."""
        return None

    def task_messages(self, task: Task) -> list[Message]:
        """The first user message(s) of an episode."""
        return [{"role": "user", "content": task.prompt}]

    def evaluate(self, reply: Message, task: Task, turn: int) -> Outcome:
        """Grade one assistant reply (turn counts from 1)."""
        raise NotImplementedError

    # ---- Gymnasium API -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list, dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        system_prompt = options.pop("system_prompt", None)
        placement = options.pop("system_prompt_placement", "system")
        task = options.pop("task", None)
        if options:
            raise ValueError(
                f"options: unknown keys {sorted(options)}; allowed: system_prompt, system_prompt_placement, task"
            )
        if placement not in ("system", "user"):
            raise ValueError(f"options['system_prompt_placement']: must be 'system' or 'user', got {placement!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError(f"options['system_prompt'] must be a str or None, got {type(system_prompt).__name__}")
        if task is None:
            index = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
            if index < 0:
                raise ValueError(f"seed: must be >= 0, got {seed}")
            task = self.make_task(index)
        elif not isinstance(task, Task):
            raise TypeError(f"options['task'] must be a Task, got {type(task).__name__}")
        self.task, self.turn, self._done = task, 0, False

        first = [cast(Message, dict(m)) for m in self.task_messages(task)]
        if system_prompt and placement == "user":
            first[0]["content"] = user_placement(first[0]["content"] or "", system_prompt)
        elif system_prompt:
            first.insert(0, {"role": "system", "content": system_prompt})
        self.history = list(first)
        return first, {"task_id": task.id, "turn": 0, "system_prompt": system_prompt}

    def step(self, action: Any) -> tuple[list, float, bool, bool, dict]:
        reply = coerce_action(action)
        if self._done or self.task is None:
            raise RuntimeError("step() called after the episode ended (or before reset()); call reset() first")
        reply["content"], cut = clean_text(reply.get("content", ""))
        self.turn += 1
        self.history.append(reply)
        outcome = self.evaluate(reply, self.task, self.turn)
        info: dict[str, Any] = {"task_id": self.task.id, "turn": self.turn, **outcome.info}
        if cut:
            info["reply_cut"] = True
        terminated = outcome.done
        truncated = not terminated and self.turn >= self.max_turns
        if terminated or truncated:
            self._done = True
            info["reason"] = outcome.reason if terminated else "max_turns"
            return [], float(outcome.reward), terminated, truncated, info
        self.history.extend(outcome.messages)
        return list(outcome.messages), float(outcome.reward), False, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n\n".join(f"[{m['role']}] {m.get('content', '')}" for m in self.history)
