"""`espl/BFCL-MultiTurn*-v0`: BFCL v4 multi-turn categories, with BFCL's own backends stepping as the episode goes.

Categories: multi_turn_base, multi_turn_miss_func, multi_turn_miss_param, multi_turn_long_context (200 items
each, data from the `bfcl-eval` package; split by item id as in envs/bfcl.py). An item is a conversation of
user turns over stateful backends (`GorillaFileSystem`, `MathAPI`, `MessageAPI`, `TwitterAPI`, `TicketAPI`,
`TradingBot`, `TravelAPI`, `VehicleControlAPI`: plain Python classes under
bfcl_eval/eval_checker/multi_turn_eval/func_source_code/), loaded from the item's `initial_config`.

An episode, as BFCL's inference loop runs one (model_handler/base_handler.py):
- `reset`: fresh instances of the item's classes for the model, and a second set for the ground truth, each
  loaded with a deep copy of the item's configuration (`long_context=True` in the long-context category).
  The module-level tables the backends read in long-context mode are restored to their import-time values,
  so nothing one episode does reaches the next. `env.tools` = the classes' function docs (minus the functions
  the miss_func category holds back).
- each reply with calls (read as in every espl tool env, envs/tools.py) is executed: every call is dispatched
  by name to the public method of that name on the model's instances, `method(**arguments)`, the arguments
  parsed JSON. No text is ever `eval`ed (BFCL's own executor `eval`s call strings; we do not). The results go
  back as `tool` messages in BFCL's format: str as it is, dicts as JSON, an exception as
  "Error during execution: <message>", an unknown name as Python's NameError message would read.
- a reply without a decodable call ends the user turn (BFCL: "Proceed to next turn"). More than 20 steps in one
  turn (BFCL's MAXIMUM_STEP_LIMIT) ends the episode: `multi_turn:force_terminated`, reward 0.
- at the end of each turn, the turn's ground-truth calls (BFCL ships them as Python call strings; parsed with
  `ast`, values read with `ast.literal_eval`, dispatched the same way) run on the ground-truth instances, and
  the turn is checked with BFCL's own `state_checker` and `response_checker`
  (eval_checker/multi_turn_eval/multi_turn_checker.py): after a turn whose ground truth has calls, the model
  must have made a call in it, every instance's public attributes must equal the ground truth's, and the
  ground truth's results must all be among the model's results so far. The first failing turn ends the
  episode with that reason (BFCL's verdict is decided there); passing every turn gives reward 1.0, "correct".
- the held-back functions of miss_func come in at their turn, as BFCL's prompting handlers add them: the
  docs in the user message, then "I have updated some more functions you can choose from. What about now?".
- `info` on the last step: `bfcl_id`, `bfcl_category`, `calls` (per turn, per step, BFCL's decoded strings
  `name(arg=value,...)`: what BFCL's `multi_turn_checker` takes), `valid`, `error_type`, `error`.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
from functools import lru_cache
from typing import Any, ClassVar

from espl.envs.bfcl import _data_dir, bfcl_split, bfcl_tools, load_items, read_jsonl
from espl.envs.core import MultiTurnEnv, Outcome, Split, Task
from espl.envs.tools import call_arguments, hermes_tools_prompt, message_tool_calls
from espl.types import Message

MULTI_TURN_CATEGORIES: dict[str, str] = {
    "multi_turn_base": "MultiTurnBase",
    "multi_turn_miss_func": "MultiTurnMissFunc",
    "multi_turn_miss_param": "MultiTurnMissParam",
    "multi_turn_long_context": "MultiTurnLongContext",
}
MAXIMUM_STEP_LIMIT = 20  # bfcl_eval/constants/default_prompts.py
ADDITIONAL_FUNCTION_PROMPT = "I have updated some more functions you can choose from. What about now?"
# bfcl_eval/eval_checker/multi_turn_eval/multi_turn_utils.py refuses these names before its eval
FORBIDDEN_NAMES = ("kill", "exit", "quit", "remove", "unlink", "popen", "Popen", "run")
BACKEND_PACKAGE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
MAX_RESULT_CHARS = 8000  # a tool message longer than this is cut for the model (the checker sees it whole)


# ---- the backends ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _backend_config():
    from bfcl_eval.constants.executable_backend_config import (
        CLASS_FILE_PATH_MAPPING, MULTI_TURN_FUNC_DOC_FILE_MAPPING, STATELESS_CLASSES,
    )

    return CLASS_FILE_PATH_MAPPING, MULTI_TURN_FUNC_DOC_FILE_MAPPING, tuple(STATELESS_CLASSES)


@lru_cache(maxsize=1)
def _module_tables() -> tuple[Any, dict[str, Any]]:
    """The long_context module and deep copies of its module-level tables, taken before any episode runs."""
    mod = importlib.import_module(f"{BACKEND_PACKAGE}.long_context")
    return mod, {k: copy.deepcopy(v) for k, v in vars(mod).items()
                 if not k.startswith("_") and isinstance(v, (list, dict))}


def _restore_module_tables() -> None:
    # e.g. VehicleControlAPI writes LONG_WEATHER_EXTENSION["outsideTemperature"]; TradingBot hands out
    # references to these lists. Restored in place, since the backend modules imported them by name.
    mod, saved = _module_tables()
    for name, value in saved.items():
        live = getattr(mod, name)
        if isinstance(live, list):
            live[:] = copy.deepcopy(value)
        else:
            live.clear()
            live.update(copy.deepcopy(value))


def make_instances(item: dict[str, Any], long_context: bool) -> dict[str, Any]:
    """Fresh backend instances of an item, loaded as BFCL's executor loads them."""
    paths, _, stateless = _backend_config()
    out = {}
    for class_name in item["involved_classes"]:
        cls = getattr(importlib.import_module(paths[class_name]), class_name)
        inst = cls()
        if class_name not in stateless:
            inst._load_scenario(copy.deepcopy(item["initial_config"].get(class_name, {})), long_context=long_context)
        out[class_name] = inst
    return out


def public_methods(instances: dict[str, Any]) -> dict[str, Any]:
    """Method name -> bound method, over the instances in order (a later class wins a clash, as in BFCL)."""
    out = {}
    for inst in instances.values():
        for name, method in inspect.getmembers(inst, predicate=inspect.ismethod):
            if not name.startswith("_"):
                out[name] = method
    return out


def format_result(result: Any) -> str:
    """A method's return value as BFCL's executor writes it."""
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        try:
            return json.dumps(result)
        except (TypeError, ValueError):
            return str(result)
    return str(result)


def execute(methods: dict[str, Any], name: str, args: tuple = (), kwargs: dict | None = None) -> str:
    """One call on the backends, by name; every failure is a result text, as in BFCL (never raised)."""
    if name in FORBIDDEN_NAMES:
        return f"Error during execution: Function call {name} is not allowed."
    method = methods.get(name)
    if method is None:
        return f"Error during execution: name '{name}' is not defined"
    try:
        return format_result(method(*args, **(kwargs or {})))
    except Exception as exc:  # the model's bad call (wrong argument, missing file): feedback, as in BFCL
        return f"Error during execution: {exc}"


def parse_call_string(text: str) -> tuple[str, tuple, dict[str, Any]]:
    """A ground-truth call string `f(1, x='a')` -> ("f", (1,), {"x": "a"}), read with `ast`, never evaluated."""
    node = ast.parse(text.strip(), mode="eval").body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"not a plain function call: {text!r}")
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    return node.func.id, args, kwargs


def call_string(name: str, kwargs: dict[str, Any]) -> str:
    """BFCL's decoded form of a JSON call (its function-calling handlers' convert_to_function_call)."""
    return f"{name}({','.join(f'{k}={v!r}' for k, v in kwargs.items())})"


@lru_cache(maxsize=None)
def function_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    _, docs, _ = _backend_config()
    return tuple(read_jsonl(_data_dir() / "multi_turn_func_doc" / docs[class_name]))


@lru_cache(maxsize=None)
def load_multi_turn_items(category: str) -> tuple[dict[str, Any], ...]:
    """Items with `function` (docs of the involved classes, minus held-back ones) and `missed_function`
    ({turn: [docs]}), as BFCL's populate_test_cases_with_predefined_functions builds them."""
    items = []
    for raw in load_items(category):
        item = copy.deepcopy(raw)
        docs = [d for c in item["involved_classes"] for d in function_docs(c)]
        missed = {}
        for turn, names in item.get("missed_function", {}).items():
            missed[int(turn)] = [d for d in docs if d["name"] in names]
            docs = [d for d in docs if d["name"] not in names]
        item["function"], item["missed_function"] = docs, missed
        items.append(item)
    return tuple(items)


@lru_cache(maxsize=1)
def _official_checks():
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import response_checker, state_checker

    return state_checker, response_checker


# ---- the env -----------------------------------------------------------------------------------------------
class BFCLMultiTurnEnv(MultiTurnEnv):
    """BFCL v4 multi-turn function calling on BFCL's stateful backends, scored by BFCL's state and response checks."""

    family: ClassVar[str] = "tool"
    description: ClassVar[str] = "Tool use: BFCL v4 multi-turn function calling on BFCL's own backends"

    def __init__(self, *, category: str = "multi_turn_base", split: Split = "train",
                 describe_tools_in_prompt: bool = False, max_steps_per_turn: int = MAXIMUM_STEP_LIMIT,
                 render_mode: str | None = None):
        if category not in MULTI_TURN_CATEGORIES:
            raise ValueError(f"category: {category!r} is not a multi-turn BFCL category; use one of "
                             f"{', '.join(MULTI_TURN_CATEGORIES)}")
        if not isinstance(max_steps_per_turn, int) or max_steps_per_turn < 1:
            raise ValueError(f"max_steps_per_turn: must be an int >= 1, got {max_steps_per_turn!r}")
        self.category = category
        self.long_context = "long_context" in category
        self.items = [it for it in load_multi_turn_items(category) if bfcl_split(it["id"]) == split]
        longest = max(len(it["question"]) for it in self.items)
        # the env's own turn limit never cuts an episode before BFCL's per-turn step limit would
        super().__init__(split=split, max_turns=longest * (max_steps_per_turn + 2), render_mode=render_mode)
        self.max_steps_per_turn = max_steps_per_turn
        self.describe_tools_in_prompt = bool(describe_tools_in_prompt)
        self.tools: list[dict[str, Any]] = []
        self._model: dict[str, Any] = {}
        self._truth: dict[str, Any] = {}

    def num_tasks(self) -> int:
        return len(self.items)

    def make_task(self, index: int) -> Task:
        item = self.items[index % len(self.items)]
        first = item["question"][0]
        return Task(id=item["id"], prompt=first[0]["content"] if first else "", answer=item["possible_answer"],
                    data={"item": item})

    def _turn_messages(self, task: Task, turn: int) -> list[Message]:
        item = task.data["item"]
        msgs: list[Message] = [{"role": m["role"], "content": m["content"]} for m in item["question"][turn]]
        if turn in item["missed_function"]:
            docs = "\n".join(json.dumps(t, ensure_ascii=False) for t in bfcl_tools(item["missed_function"][turn]))
            msgs = [{"role": "user", "content": f"{docs}\n{ADDITIONAL_FUNCTION_PROMPT}"}]
        return msgs

    def task_messages(self, task: Task) -> list[Message]:
        msgs = self._turn_messages(task, 0)
        if self.describe_tools_in_prompt and msgs:
            msgs[0]["content"] = (f"{msgs[0]['content']}\n\n"
                                  f"{hermes_tools_prompt(bfcl_tools(task.data['item']['function']))}")
        return msgs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list, dict]:
        obs, info = super().reset(seed=seed, options=options)
        assert self.task is not None
        item = self.task.data["item"]
        _restore_module_tables()
        self._model = make_instances(item, self.long_context)
        self._truth = make_instances(item, self.long_context)
        self._functions = list(item["function"])
        self.tools = bfcl_tools(self._functions)
        self._turn, self._steps = 0, 0
        self._calls: list[list[list[str]]] = [[]]  # per turn, per step: BFCL's decoded call strings
        self._all_results: list[str] = []  # the model's execution results, every turn so far (BFCL's response check)
        info.update(bfcl_id=item["id"], bfcl_category=self.category)
        return obs, info

    def _end(self, valid: bool, error_type: str | None, error: str = "") -> Outcome:
        assert self.task is not None
        info = {"bfcl_id": self.task.id, "bfcl_category": self.category, "calls": self._calls, "valid": valid,
                "error_type": error_type, "error": error[:500], "turns_done": self._turn}
        return Outcome(1.0 if valid else 0.0, "correct" if valid else str(error_type), done=True, info=info)

    def evaluate(self, reply: Message, task: Task, turn: int) -> Outcome:
        methods = public_methods(self._model)
        names = [f["name"] for f in self._functions]
        calls, parse_errors = message_tool_calls(reply, id_prefix=f"call_{turn}_", tool_names=names)
        decoded: list[tuple[str, dict[str, Any]]] = []
        if not parse_errors:
            try:
                decoded = [(c["function"]["name"], call_arguments(c)) for c in calls]
            except ValueError as exc:
                parse_errors = [str(exc)]
        if decoded and not parse_errors:
            self._steps += 1
            messages: list[Message] = []
            strings = []
            for call, (name, kwargs) in zip(calls, decoded):
                result = execute(methods, name, (), kwargs)
                self._all_results.append(result)
                strings.append(call_string(name, kwargs))
                text = result if len(result) <= MAX_RESULT_CHARS else \
                    result[:MAX_RESULT_CHARS] + f"\n[... cut at {MAX_RESULT_CHARS} characters]"
                messages.append({"role": "tool", "tool_call_id": call.get("id") or "", "name": name, "content": text})
            self._calls[self._turn].append(strings)
            if self._steps > self.max_steps_per_turn:
                return self._end(False, "multi_turn:force_terminated",
                                 f"more than {self.max_steps_per_turn} steps in turn {self._turn}")
            info: dict[str, Any] = {"bfcl_id": task.id, "bfcl_turn": self._turn}
            if not reply.get("tool_calls"):
                info["parsed_tool_calls"] = calls
            return Outcome(0.0, "tool_call", done=False, messages=tuple(messages), info=info)

        # no decodable call: the user turn is over; check it as BFCL's multi_turn_checker does
        verdict = self._check_turn()
        if verdict is not None:
            return verdict
        self._turn, self._steps = self._turn + 1, 0
        item = task.data["item"]
        if self._turn >= len(item["question"]):
            return self._end(True, None)
        self._calls.append([])
        if self._turn in item["missed_function"]:
            self._functions += item["missed_function"][self._turn]
            self.tools = bfcl_tools(self._functions)
        info = {"bfcl_id": task.id, "bfcl_turn": self._turn}
        if parse_errors:
            info["parse_errors"] = parse_errors[:5]
        return Outcome(0.0, "next_turn", done=False, messages=tuple(self._turn_messages(task, self._turn)), info=info)

    def _check_turn(self) -> Outcome | None:
        assert self.task is not None
        truth_calls = self.task.answer[self._turn]
        truth_methods = public_methods(self._truth)
        truth_results = []
        for text in truth_calls:
            name, args, kwargs = parse_call_string(text)
            truth_results.append(execute(truth_methods, name, args, kwargs))
        if not truth_calls:  # a turn where the model should not (be able to) act: nothing to check here
            return None
        if not self._calls[self._turn]:
            return self._end(False, "multi_turn:empty_turn_model_response",
                             f"Model response list is empty for turn {self._turn}")
        state_checker, response_checker = _official_checks()
        state = state_checker(self._model, self._truth)
        if not state["valid"]:
            return self._end(False, state["error_type"], state["error_message"])
        response = response_checker(self._all_results, truth_results, self._turn)
        if not response["valid"]:
            return self._end(False, response["error_type"], response["error_message"])
        return None


def truth_calls(item: dict[str, Any]) -> list[list[tuple[str, dict[str, Any]]]]:
    """Per turn, the ground-truth calls as (name, keyword arguments), positional ones named from the signature."""
    methods = public_methods(make_instances(item, False))
    turns = []
    for truth in item["possible_answer"]:
        calls = []
        for text in truth:
            name, args, kwargs = parse_call_string(text)
            params = list(inspect.signature(methods[name]).parameters)
            calls.append((name, {**dict(zip(params, args)), **kwargs}))
        turns.append(calls)
    return turns


def replies_for(turns: list[list[tuple[str, dict[str, Any]]]]) -> list[list[str]]:
    """Per turn, one reply with the turn's calls as `<tool_call>` blocks and then "Done." to end the turn (a
    turn without calls: one reply without a call)."""
    out = []
    for calls in turns:
        blocks = [f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls]
        out.append(["\n".join(blocks), "Done."] if blocks else ["I cannot do that with the functions I have."])
    return out


def perfect_replies(item: dict[str, Any]) -> list[list[str]]:
    """The replies of a perfect agent: each turn's ground-truth calls, in one reply, then "Done."."""
    return replies_for(truth_calls(item))
