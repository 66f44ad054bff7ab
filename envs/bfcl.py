"""`espl/BFCL-*-v0`: the Berkeley Function-Calling Leaderboard (BFCL v4), single-turn AST categories.

Data: the `bfcl-eval` package (Apache-2.0, version 2026.3.23, installed `--no-deps`: its own pins are heavy
and we only read its data files and call two of its checker modules). One env per category:

    simple_python, multiple, parallel, parallel_multiple, irrelevance,
    live_simple, live_multiple, live_parallel, live_parallel_multiple, live_irrelevance

An episode is one BFCL item: the item's messages (a system message of the item is put at the top of the first
user message, so the env's own system prompt stays the only system message), `env.tools` = the item's
function docs as OpenAI tool schemas (BFCL's own conversion: `dict` -> `object`, `float` -> `number` with
"This is a float type value.", `tuple` -> `array`, ...; the Python-syntax hint BFCL adds to each description).
One reply, scored once:

- the reply's calls are read as in every espl tool env (envs/tools.py: native `tool_calls`, `<tool_call>`
  blocks, or bare / ```json-fenced JSON calls of the item's functions) and decoded to BFCL's form
  `[{name: {arg: value}}]` (arguments parsed as JSON, as BFCL's function-calling handlers do);
- AST categories: the verdict is BFCL's own `ast_checker` (bfcl_eval/eval_checker/ast_eval/ast_checker.py)
  called on those calls, loaded as described at `official_ast_checker`. A reply with a call that cannot be
  decoded is `ast_decoder:decoder_failed` (BFCL's reason); no call at all goes to the checker as `[]`
  (a wrong-count verdict).
- irrelevance categories: correct iff the reply decodes to no call (BFCL's relevance runner: a reply that
  fails to decode counts as no call).
- reward 1.0 when valid else 0.0; `info` has `bfcl_id`, `bfcl_category`, `calls` (the decoded calls, so BFCL's
  checker or a user can re-score the episode), `valid`, `error_type` and `errors` (BFCL's messages). The
  reason is "correct" or BFCL's `error_type` (`simple_function_checker:missing_required`, ...).

Split (BFCL has none): an item is a test item when the SHA-256 of its id, read as a big-endian integer, is
0 mod 4 (`bfcl_split`); about a quarter of each category is held out, the same on every machine. `make_task`
only ever returns items of the env's split, so training on `split="train"` never sees a test item.

Known difference from BFCL's inference harness: BFCL prompts "prompting" models for Python-syntax calls
`[f(a=1)]`; we ask for (and read) JSON calls, as BFCL's function-calling handlers do. A bare JSON object naming
a function the item does not offer is read as prose (wrap calls in `<tool_call>` to call unknown names).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import importlib.util
import json
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Sequence, cast

from espl.envs.core import MultiTurnEnv, Outcome, Split, Task
from espl.envs.tools import call_arguments, hermes_tools_prompt, message_tool_calls
from espl.types import Message, ToolCall

BFCL_PACKAGE = "bfcl_eval"
BFCL_VERSION = "2026.3.23"
INSTALL_HINT = f"pip install --no-deps bfcl-eval=={BFCL_VERSION}  (scripts/setup.sh does this)"
VERSION_PREFIX = "BFCL_v4"
TEST_MODULUS = 4  # an item is held out when sha256(id) % 4 == 0
CHECKER_MODEL_NAME = "espl"  # the model name handed to BFCL's checker (only used to look up name renaming)

# category -> the part of the env id that names it (espl/BFCL-<Name>-v0)
AST_CATEGORIES: dict[str, str] = {
    "simple_python": "Simple",
    "multiple": "Multiple",
    "parallel": "Parallel",
    "parallel_multiple": "ParallelMultiple",
    "irrelevance": "Irrelevance",
    "live_simple": "LiveSimple",
    "live_multiple": "LiveMultiple",
    "live_parallel": "LiveParallel",
    "live_parallel_multiple": "LiveParallelMultiple",
    "live_irrelevance": "LiveIrrelevance",
}
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."  # BFCL utils._get_language_specific_hint


class BFCLDataMissing(ImportError):
    """`bfcl-eval` is not installed."""


def bfcl_available() -> bool:
    return importlib.util.find_spec(BFCL_PACKAGE) is not None


def _data_dir():
    if not bfcl_available():
        raise BFCLDataMissing(f"the BFCL envs read their data from the `bfcl-eval` package; install it: {INSTALL_HINT}")
    return importlib.resources.files(BFCL_PACKAGE) / "data"


def read_jsonl(path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def is_irrelevance(category: str) -> bool:
    return "irrelevance" in category


def bfcl_split(item_id: str) -> Split:
    """The fixed split of a BFCL item: test when sha256(id) is 0 mod TEST_MODULUS, else train."""
    digest = int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest(), "big")
    return "test" if digest % TEST_MODULUS == 0 else "train"


@lru_cache(maxsize=None)
def load_items(category: str) -> tuple[dict[str, Any], ...]:
    """Every item of a BFCL category, in file order, with its `possible_answer` (ground truth) attached."""
    data = _data_dir()
    items = read_jsonl(data / f"{VERSION_PREFIX}_{category}.json")
    answer_file = data / "possible_answer" / f"{VERSION_PREFIX}_{category}.json"
    if answer_file.is_file():
        answers = {a["id"]: a["ground_truth"] for a in read_jsonl(answer_file)}
        for item in items:
            item["possible_answer"] = answers[item["id"]]
    return tuple(items)


# ---- tool schemas: BFCL function docs -> OpenAI tools (BFCL's own conversion) -----------------------------
# BFCL constants/type_mappings.py GORILLA_TO_OPENAPI (Python types only; unknown -> "string", as BFCL does)
GORILLA_TO_OPENAPI = {
    "integer": "integer", "number": "number", "float": "number", "string": "string", "boolean": "boolean",
    "bool": "boolean", "array": "array", "list": "array", "dict": "object", "object": "object", "tuple": "array",
    "any": "string",
}


def _cast_to_openai_type(properties: dict[str, Any]) -> dict[str, Any]:
    """Port of bfcl_eval.model_handler.utils._cast_to_openai_type (that module imports tree_sitter)."""
    for key, value in properties.items():
        if "type" not in value:
            value["type"] = "string"
        else:
            var_type = value["type"]
            if var_type == "float":
                value["format"] = "float"
                value["description"] = value.get("description", "") + " This is a float type value."
            value["type"] = GORILLA_TO_OPENAPI.get(var_type, "string")
        if value["type"] in ("array", "object"):
            if "properties" in value:
                value["properties"] = _cast_to_openai_type(value["properties"])
            elif "items" in value:
                items = value["items"]
                items["type"] = GORILLA_TO_OPENAPI.get(items.get("type"), "string")
                if items["type"] == "array" and "items" in items:
                    items["items"]["type"] = GORILLA_TO_OPENAPI.get(items["items"].get("type"), "string")
                elif items["type"] == "object" and "properties" in items:
                    items["properties"] = _cast_to_openai_type(items["properties"])
    return properties


def bfcl_tools(functions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool schemas of BFCL function docs (names kept as they are, dots included, as BFCL does for
    prompting models), with BFCL's Python-syntax hint on each description."""
    tools = []
    for fn in copy.deepcopy(list(functions)):
        fn["description"] = fn.get("description", "") + PYTHON_HINT
        params = fn.setdefault("parameters", {"properties": {}})
        params["type"] = "object"
        params["properties"] = _cast_to_openai_type(params.get("properties", {}))
        tools.append({"type": "function", "function": fn})
    return tools


# ---- BFCL's own checker ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _NameRenaming:
    underscore_to_dot: bool = False


@lru_cache(maxsize=1)
def official_ast_checker() -> types.ModuleType:
    """BFCL's `ast_checker` module, the file the package ships, run unchanged.

    It imports `bfcl_eval.constants.model_config` for one name, `MODEL_CONFIG_MAPPING`, read only by
    `convert_func_name` (models whose API renamed `a.b` to `a_b` get their names mapped back); that module imports
    every model handler of BFCL (anthropic, tree_sitter, ...). So we load ast_checker.py under a private module
    name while `sys.modules` offers, for the duration of that import only, a stand-in module whose mapping says
    our model did no renaming (we keep dotted names). Every other import of the file is BFCL's own.
    """
    _data_dir()  # the one-line install hint when bfcl-eval is missing
    spec = importlib.util.find_spec(f"{BFCL_PACKAGE}.eval_checker.ast_eval.ast_checker")
    assert spec is not None
    private = importlib.util.spec_from_file_location("espl.envs._bfcl_official_ast_checker", spec.origin)
    assert private is not None and private.loader is not None
    module = importlib.util.module_from_spec(private)
    key = f"{BFCL_PACKAGE}.constants.model_config"
    stand_in = types.ModuleType(key)
    stand_in.MODEL_CONFIG_MAPPING = {CHECKER_MODEL_NAME: _NameRenaming()}  # type: ignore[attr-defined]  # ModuleType: attributes are dynamic
    saved = sys.modules.get(key)
    sys.modules[key] = stand_in
    try:
        private.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop(key, None)
        else:
            sys.modules[key] = saved
    return module


def check_ast(category: str, functions: list[dict], calls: list[dict], possible_answer: list) -> dict[str, Any]:
    """BFCL's verdict on decoded calls `[{name: {arg: value}}]`: {"valid": bool, "error": [...], "error_type"}."""
    checker = official_ast_checker()
    from bfcl_eval.constants.enums import Language

    return checker.ast_checker(functions, calls, possible_answer, Language.PYTHON, category, CHECKER_MODEL_NAME)


def decode_calls(calls: Sequence[ToolCall]) -> list[dict[str, dict[str, Any]]]:
    """ToolCalls -> BFCL's decoded form; ValueError when a call's arguments are not a JSON object."""
    return [{c["function"]["name"]: call_arguments(c)} for c in calls]


def perfect_calls(item: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """The calls of a perfect agent: each ground-truth function with, per argument, the first accepted value,
    where "" (BFCL's "may be left out") means: leave it out, unless the function requires the argument (a few
    items list "" first for a required one), then the first other accepted value."""
    functions = {f["name"]: f for f in item.get("function", [])}
    out = []
    for call in item.get("possible_answer", []):
        (name, params), = call.items()
        required = set(functions.get(name, {}).get("parameters", {}).get("required", []))
        out.append({name: {k: _first_value(_pick(v, k in required)) for k, v in params.items()
                           if _pick(v, k in required) != ""}})
    return out


def _pick(accepted: list, required: bool) -> Any:
    if "" in accepted and not required:
        return ""
    return next((v for v in accepted if v != ""), "")


def _first_value(value: Any) -> Any:
    # a dict argument's accepted value is itself {key: [accepted values]} (ast_checker.dict_checker), and a
    # list of dicts is a list of those (list_dict_checker): one level deep, as the checker reads them
    if isinstance(value, dict):
        return {k: _pick(v, False) for k, v in value.items() if isinstance(v, list) and _pick(v, False) != ""}
    if isinstance(value, list) and value and all(isinstance(d, dict) for d in value):
        return [_first_value(d) for d in value]
    return value


def render_calls(calls: Sequence[dict[str, dict[str, Any]]]) -> str:
    """Decoded calls written as the Hermes `<tool_call>` blocks a model is asked for."""
    return "\n".join(
        f"<tool_call>\n{json.dumps({'name': n, 'arguments': a}, ensure_ascii=False)}\n</tool_call>"
        for c in calls for n, a in c.items())


def item_messages(turn: Sequence[Message]) -> list[Message]:
    """One BFCL turn as env messages: system messages of the item go to the top of the first user message."""
    system = [m["content"] for m in turn if m["role"] == "system"]
    rest: list[Message] = [{"role": m["role"], "content": m["content"]} for m in turn if m["role"] != "system"]
    if system:
        if rest and rest[0]["role"] == "user":
            rest[0]["content"] = "\n\n".join([*system, rest[0]["content"]])
        else:
            rest.insert(0, {"role": "user", "content": "\n\n".join(system)})
    return rest


# ---- the env -----------------------------------------------------------------------------------------------
class BFCLEnv(MultiTurnEnv):
    """BFCL v4 single-turn function calling, scored by BFCL's own AST checker."""

    family: ClassVar[str] = "tool"
    description: ClassVar[str] = "Tool use: BFCL v4 single-turn function calling, scored by BFCL's AST checker"
    default_max_turns: ClassVar[int] = 1

    def __init__(self, *, category: str | Sequence[str] = "simple_python", split: Split = "train",
                 describe_tools_in_prompt: bool = False, render_mode: str | None = None):
        super().__init__(split=split, max_turns=1, render_mode=render_mode)
        cats = (category,) if isinstance(category, str) else tuple(category)
        unknown = [c for c in cats if c not in AST_CATEGORIES]
        if not cats or unknown:
            raise ValueError(f"category: {unknown or cats!r} is not a single-turn BFCL category; "
                             f"use one of {', '.join(AST_CATEGORIES)}")
        self.categories = cats
        per_category = [[dict(it, category=c) for it in load_items(c) if bfcl_split(it["id"]) == split] for c in cats]
        # round-robin over the categories, so that consecutive seeds of a mixed env visit every category
        self.items = [lst[i] for i in range(max(map(len, per_category))) for lst in per_category if i < len(lst)]
        self.describe_tools_in_prompt = bool(describe_tools_in_prompt)
        self.tools: list[dict[str, Any]] = []
        # the item expects several calls in one reply (BFCL's parallel categories): a tool-call grammar
        # (agents/tool_grammar.py) then admits a JSON list of calls in the reply's block
        self.parallel_tool_calls = False

    def num_tasks(self) -> int:
        return len(self.items)

    def make_task(self, index: int) -> Task:
        item = self.items[index % len(self.items)]
        msgs = item_messages(item["question"][0])
        return Task(id=item["id"], prompt=msgs[0]["content"] if msgs else "", answer=item.get("possible_answer"),
                    data={"category": item["category"], "functions": item["function"], "messages": msgs})

    def task_messages(self, task: Task) -> list[Message]:
        msgs = [cast(Message, dict(m)) for m in task.data["messages"]]
        if self.describe_tools_in_prompt and msgs:
            msgs[0]["content"] = f"{msgs[0]['content']}\n\n{hermes_tools_prompt(bfcl_tools(task.data['functions']))}"
        return msgs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list, dict]:
        obs, info = super().reset(seed=seed, options=options)
        assert self.task is not None
        self.tools = bfcl_tools(self.task.data["functions"])
        self.parallel_tool_calls = "parallel" in self.task.data["category"]
        info.update(bfcl_id=self.task.id, bfcl_category=self.task.data["category"])
        return obs, info

    def evaluate(self, reply: Message, task: Task, turn: int) -> Outcome:
        category, functions = task.data["category"], task.data["functions"]
        names = [f["name"] for f in functions]
        calls, parse_errors = message_tool_calls(reply, id_prefix="call_", tool_names=names)
        info: dict[str, Any] = {"bfcl_id": task.id, "bfcl_category": category}
        decoded: list[dict[str, Any]] | None
        try:
            decoded = decode_calls(calls)
        except ValueError as exc:
            parse_errors = [*parse_errors, str(exc)]
            decoded = None
        if parse_errors:
            info["parse_errors"] = parse_errors[:5]
        if not reply.get("tool_calls") and calls:
            info["parsed_tool_calls"] = calls
        info["calls"] = decoded if decoded is not None else []

        if is_irrelevance(category):
            # BFCL relevance runner: success iff the reply does not decode to a (non-empty) call
            made_call = bool(decoded) and not parse_errors
            verdict: dict[str, Any] = {"valid": not made_call, "error": [] if not made_call else
                       ["Valid syntax. Successfully decode AST when it should not."],
                       "error_type": "irrelevance_error:decoder_success"}
        elif parse_errors or decoded is None:
            verdict = {"valid": False, "error": [f"Invalid syntax. Failed to decode AST. {parse_errors[0]}"],
                       "error_type": "ast_decoder:decoder_failed"}
        else:
            verdict = check_ast(category, functions, decoded, task.answer)
        valid = bool(verdict["valid"])
        info.update(valid=valid, error_type=None if valid else verdict.get("error_type"),
                    errors=[str(e)[:500] for e in verdict.get("error", [])][:5])
        return Outcome(1.0 if valid else 0.0, "correct" if valid else str(verdict.get("error_type")), done=True,
                       info=info)
