"""`ToolEnv`: a multi-turn env whose tools are typed Python functions.

An episode:
    env = SomeToolEnv()
    obs, info = env.reset(seed=3)                  # system? + user messages; env.tools = JSON schemas
    completion = policy.generate([obs], params, tools=env.tools)[0]
    obs, reward, terminated, truncated, info = env.step(completion.message)
    # the reply called tools -> obs = [{"role": "tool", "tool_call_id", "name", "content"}, ...], reward 0
    # the reply called no tool -> it is the final answer: graded by `grade_answer`, episode over

- Tool calls are read from the message's native OpenAI `tool_calls`, or parsed from Hermes/Qwen
  `<tool_call>{json}</tool_call>` blocks in its text (envs/tools.py). A reply with tool calls is never graded,
  even if it also states an answer.
- A malformed call (bad JSON), an unknown tool, arguments that do not match the tool's schema, and an
  exception raised by the tool all become an error text in a `tool` message to the model, and are counted in
  `info["tool_errors"]`; none of them raises. The exception: a tool failing for a reason that is not the
  model's doing (the types in `infrastructure_errors`, e.g. the Docker sandbox going away) raises from
  `step`, so it is never scored as the model's mistake.
- `info["tool_calls"]` / `info["tool_errors"]` count the episode so far; `info["tool_error_kinds"]` counts
  errors by kind (`parse`, `unknown_tool`, `bad_arguments`, `tool_exception`). When calls were parsed from text,
  `info["parsed_tool_calls"]` holds them as OpenAI ToolCalls so a rollout can attach them to the assistant
  message it keeps. No timings go into info: the same seed and replies give the same infos.
- Running out of turns while still calling tools ends the episode truncated with reason `max_turns`.
- The reward is episodic (0 until the final answer).

A subclass implements `make_task`, `tool_functions` (the typed functions, bound methods allowed) and
`grade_answer(reply_text, task) -> (reward, reason, info)`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, ClassVar, Sequence

from espl.envs.core import MultiTurnEnv, Outcome, Split, Task
from espl.envs.tools import call_arguments, hermes_tools_prompt, message_tool_calls, tool_name, tool_schema
from espl.types import Message, ToolCall

log = logging.getLogger(__name__)

MAX_TOOL_OUTPUT_CHARS = 4000  # a tool result longer than this is cut (a flood would fill the context)
ERROR_KINDS = ("parse", "unknown_tool", "bad_arguments", "tool_exception")


def _closed_schema(params: dict[str, Any]) -> dict[str, Any]:
    # get_json_schema leaves additionalProperties open; a call with an argument the function does not take
    # must fail validation with a message naming it, not later as a TypeError from the call.
    return {**params, "additionalProperties": False}


class ToolEnv(MultiTurnEnv):
    """Base of the tool-use envs: declare tools as typed Python functions, grade the final answer."""

    family: ClassVar[str] = "tool"
    default_max_turns: ClassVar[int] = 6
    # exceptions from a tool that are infrastructure failures, not the model's mistakes: they propagate
    infrastructure_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, *, split: Split = "train", max_turns: int | None = None, describe_tools_in_prompt: bool = False,
                 render_mode: str | None = None):
        super().__init__(split=split, max_turns=max_turns or self.default_max_turns, render_mode=render_mode)
        fns = list(self.tool_functions())
        if not fns:
            raise ValueError(f"{type(self).__name__}.tool_functions() returned no tools")
        self.tools: list[dict[str, Any]] = [tool_schema(fn) for fn in fns]
        self._functions: dict[str, Callable[..., Any]] = {tool_name(s): fn for s, fn in zip(self.tools, fns)}
        self._validators = {tool_name(s): self._validator(s) for s in self.tools}
        # For policies whose chat template ignores `tools=`: describe the tools (Hermes format) at the end of
        # the first user message. Off by default: the system prompt belongs to the prompt pool, and a
        # template that renders `tools=` would then show them twice.
        self.describe_tools_in_prompt = bool(describe_tools_in_prompt)
        self._counts: dict[str, int] = {}

    @staticmethod
    def _validator(schema: dict[str, Any]):
        import jsonschema

        params = _closed_schema(schema["function"].get("parameters") or {"type": "object", "properties": {}})
        return jsonschema.Draft202012Validator(params)

    # ---- the part a subclass writes -------------------------------------------------------------------
    def tool_functions(self) -> Sequence[Callable[..., Any]]:
        """The tools: typed functions (or bound methods) with Google-style docstrings."""
        raise NotImplementedError

    def grade_answer(self, text: str, task: Task) -> tuple[float, str, dict[str, Any]]:
        """Grade the final reply text: (reward, reason, extra info)."""
        raise NotImplementedError

    # ---- episode -------------------------------------------------------------------------------------
    @property
    def tool_names(self) -> list[str]:
        return list(self._functions)

    def task_messages(self, task: Task) -> list[Message]:
        content = task.prompt
        if self.describe_tools_in_prompt:
            content = f"{content}\n\n{hermes_tools_prompt(self.tools)}"
        return [{"role": "user", "content": content}]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list, dict]:
        obs, info = super().reset(seed=seed, options=options)
        self._counts = {"tool_calls": 0, "tool_errors": 0, **{k: 0 for k in ERROR_KINDS}}
        return obs, info

    def _counted_info(self) -> dict[str, Any]:
        c = self._counts
        return {"tool_calls": c["tool_calls"], "tool_errors": c["tool_errors"],
                "tool_error_kinds": {k: c[k] for k in ERROR_KINDS}}

    def _error(self, kind: str) -> None:
        self._counts[kind] += 1
        self._counts["tool_errors"] += 1

    def evaluate(self, reply: Message, task: Task, turn: int) -> Outcome:
        calls, parse_errors = message_tool_calls(reply, id_prefix=f"call_{turn}_", tool_names=self.tool_names)
        if not calls and not parse_errors:
            reward, reason, extra = self.grade_answer(reply.get("content") or "", task)
            return Outcome(reward, reason, done=True, info={**self._counted_info(), **extra})

        messages: list[Message] = []
        for i, err in enumerate(parse_errors):
            self._counts["tool_calls"] += 1
            self._error("parse")
            messages.append({
                "role": "tool", "tool_call_id": f"call_{turn}_err{i}", "name": "invalid_tool_call",
                "content": f"Error: {err}. Write each call as <tool_call>{{\"name\": <tool name>, "
                           f"\"arguments\": {{...}}}}</tool_call>; tools: {', '.join(self.tool_names)}.",
            })
        for call in calls:
            self._counts["tool_calls"] += 1
            messages.append(self._run_call(call))
        info = self._counted_info()
        if not reply.get("tool_calls"):
            info["parsed_tool_calls"] = calls
        return Outcome(0.0, "tool_call", done=False, messages=tuple(messages), info=info)

    def _run_call(self, call: ToolCall) -> Message:
        name = call["function"]["name"]
        out: Message = {"role": "tool", "tool_call_id": call.get("id") or "", "name": name}
        fn = self._functions.get(name)
        if fn is None:
            self._error("unknown_tool")
            out["content"] = f"Error: unknown tool {name!r}; available tools: {', '.join(self.tool_names)}."
            return out
        try:
            args = call_arguments(call)
        except ValueError as exc:
            self._error("parse")
            out["content"] = f"Error: {name}: {exc}."
            return out
        problems = sorted(self._validators[name].iter_errors(args), key=lambda e: list(e.path))
        if problems:
            self._error("bad_arguments")
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e.path) or 'arguments'}: {e.message}" for e in problems[:3])
            out["content"] = f"Error: bad arguments for {name}: {detail}."
            return out
        try:
            result = fn(**args)
        except self.infrastructure_errors:
            raise
        except Exception as exc:  # a tool failing on the model's input is feedback for the model
            self._error("tool_exception")
            out["content"] = f"Error: {name} raised {type(exc).__name__}: {exc}"
            return out
        text = result if isinstance(result, str) else str(result)
        if len(text) > MAX_TOOL_OUTPUT_CHARS:
            text = text[:MAX_TOOL_OUTPUT_CHARS] + f"\n[... output cut at {MAX_TOOL_OUTPUT_CHARS} characters]"
        out["content"] = text
        return out
