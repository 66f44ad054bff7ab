"""Tools as typed Python functions: JSON schemas, tool-call parsing, and the Hermes fallback prompt.

- `tool_schema(fn)`: the OpenAI-style JSON schema of a typed function with a Google-style docstring, the same
  as `transformers.utils.get_json_schema` makes (a test checks they agree) without importing transformers
  or torch. That schema is what `policy.generate(tools=...)` and `apply_chat_template(tools=...)` take.
- `parse_tool_calls(text)`: Hermes/Qwen-native `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  blocks -> OpenAI-format `ToolCall` dicts, plus one error string per malformed block. Tolerant of
  whitespace, ```json fences, a missing final `</tool_call>` (generation stopped at it) and a JSON *list* of
  calls inside one block (the format SmolLM2 was tuned on). Given the env's tool names, a reply that opens
  with bare JSON calls of those tools, untagged (Qwen2.5-Coder-0.5B writes them so), counts too.
- `message_tool_calls(msg)`: native OpenAI `tool_calls` on a message are taken as they are; otherwise the
  calls are parsed from its text.
- `hermes_tools_prompt(tools)`: the documented fallback for models whose chat template ignores `tools=`
  (SmolLM2's does; llama.cpp's server drops them too): the tools described in text, in the format Qwen2.5's
  own template writes into its system message, so replies come back as `<tool_call>` blocks we parse.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
from typing import Any, Callable, Collection, Literal, Sequence, Union, get_args, get_origin, get_type_hints

from espl.types import Message, ToolCall

# A block runs from <tool_call> to </tool_call>, or to the next <tool_call> / end of text when the closing
# tag is missing (a stop string often eats it).
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL)
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")


class ToolSchemaError(ValueError):
    """A function that cannot become a tool (missing type hint or docstring entry, unsupported type)."""


_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"^(\s*)(\w+)\s*(?:\([^()\n]*\))?\s*:\s*(.*)$")
_JSON_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
_BASIC = {**{t: {"type": n} for t, n in _JSON_SCALARS.items()}, list: {"type": "array"}, tuple: {"type": "array"},
          dict: {"type": "object"}, Any: {}}


def _parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """(description, {arg: description}, returns) of a Google-style docstring."""
    lines = doc.strip().splitlines()
    description, args, returns = [], {}, []
    section, current, indent = None, None, None
    for line in lines:
        head = _SECTION.match(line)
        if head:
            section, current, indent = head.group(1), None, None
            continue
        if section is None:
            description.append(line)
        elif section in ("Args", "Arguments") and line.strip():
            m = _ARG_LINE.match(line)
            if m and (indent is None or len(m.group(1)) <= indent):
                indent, current = len(m.group(1)), m.group(2)
                args[current] = m.group(3).strip()
            elif current is not None:  # a continuation line of the current argument
                args[current] = f"{args[current]} {line.strip()}".strip()
        elif section == "Returns" and line.strip():
            returns.append(line.strip())
    return "\n".join(description).strip(), args, (" ".join(returns) or None)


def _enum_schema(values: list) -> dict[str, Any]:
    kinds = list(dict.fromkeys(_JSON_SCALARS[type(v)] for v in values))
    return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}


def _type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint, with the same rules as transformers' `get_json_schema`."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is None and isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        if not values or any(type(v) not in _JSON_SCALARS for v in values):
            raise ToolSchemaError(f"Enum {hint.__name__} needs members with int, float, str, bool or None values")
        return _enum_schema(values)
    if origin is None:
        if hint in _BASIC:
            return dict(_BASIC[hint])
        raise ToolSchemaError(f"unsupported type hint {hint!r}: use int, float, str, bool, Enum, Literal, or "
                              "list/tuple/dict/Union of those")
    if origin is Union or origin is types.UnionType:
        subs = [_type_schema(t) for t in args if t is not type(None)]
        if len(subs) == 1:
            out = subs[0]
        elif all(s.keys() == {"type"} and isinstance(s["type"], str) for s in subs):
            names = sorted({s["type"] for s in subs})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": subs}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is Literal and args:
        if any(type(a) not in _JSON_SCALARS for a in args):
            raise ToolSchemaError("typing.Literal may only list int, float, str, bool or None values")
        return _enum_schema(list(args))
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or ... in args:
            raise ToolSchemaError(f"tuple hint {hint!r}: use list[...] for variable length, or a fixed tuple[a, b]")
        return {"type": "array", "prefixItems": [_type_schema(t) for t in args]}
    if origin is dict:
        out = {"type": "object"}
        if len(args) == 2:
            out["additionalProperties"] = _type_schema(args[1])
        return out
    raise ToolSchemaError(f"unsupported type hint {hint!r}")


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of a tool function (type hints + Google-style docstring with an `Args:` section).

    Same output as `transformers.utils.get_json_schema` (a test checks they agree), written here with
    `inspect` because calling transformers' version imports torch (for its audio type), which an env
    served over an OpenAI-compatible API should not need. Raises ToolSchemaError (a ValueError) naming the
    function and the fix.
    """
    name = getattr(fn, "__name__", "operation")
    fix = ("A tool needs a type hint on every argument and a Google-style docstring with a description line "
           "and an `Args:` entry per argument.")
    doc = inspect.getdoc(fn)
    if not doc:
        raise ToolSchemaError(f"tool {name!r}: has no docstring. {fix}")
    description, arg_docs, returns = _parse_docstring(doc)
    sig = inspect.signature(fn)
    try:
        hints = get_type_hints(fn)
    except Exception as exc:
        raise ToolSchemaError(f"tool {name!r}: cannot resolve its type hints ({exc}). {fix}") from exc
    params = [p for i, p in enumerate(sig.parameters.values())
              if not (i == 0 and p.name in ("self", "cls") and p.annotation is inspect.Parameter.empty)]
    properties: dict[str, Any] = {}
    required = []
    for p in params:
        if p.annotation is inspect.Parameter.empty or p.name not in hints:
            raise ToolSchemaError(f"tool {name!r}: argument {p.name!r} has no type hint. {fix}")
        if p.name not in arg_docs:
            raise ToolSchemaError(f"tool {name!r}: the docstring has no `Args:` entry for {p.name!r}. {fix}")
        try:
            prop = _type_schema(hints[p.name])
        except ToolSchemaError as exc:
            raise ToolSchemaError(f"tool {name!r}: argument {p.name!r}: {exc}") from None
        desc = arg_docs[p.name]
        choices = re.search(r"\(choices:\s*(.*?)\)\s*$", desc, flags=re.IGNORECASE)
        if choices:  # transformers' convention: "(choices: [...])" at the end of an argument's line
            prop["enum"] = [c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))]
            desc = desc[: choices.start()].strip()
        prop["description"] = desc
        properties[p.name] = prop
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    out: dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if "return" in hints:
        try:
            out["return"] = _type_schema(hints["return"])
            if returns:
                out["return"]["description"] = returns
        except ToolSchemaError:
            pass  # the model never writes the return value; an odd return hint must not block the tool
    return {"type": "function", "function": out}


def tool_name(schema: dict[str, Any]) -> str:
    return schema["function"]["name"]


def make_tool_call(name: str, arguments: dict[str, Any] | str, call_id: str) -> ToolCall:
    """An OpenAI-format tool call; `arguments` is kept as JSON text, as OpenAI sends it."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _decode_block(body: str) -> Any:
    body = _FENCE.sub("", body.strip()).strip()
    if not body:
        raise ValueError("empty <tool_call> block")
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        # Trailing prose after a complete JSON value ("{...} I will now wait") is tolerated; anything else
        # is reported with json's own message, which says where the JSON broke.
        start = min((i for i in (body.find("{"), body.find("[")) if i >= 0), default=-1)
        if start >= 0:
            try:
                return json.JSONDecoder().raw_decode(body[start:])[0]
            except json.JSONDecodeError:
                pass
        raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _unwrap(obj: dict) -> dict:
    """The call inside an OpenAI-shaped call written out as text (`{"function": {"name": ...}}`), else obj."""
    return obj["function"] if isinstance(obj.get("function"), dict) else obj


def _call_from_obj(obj: Any, call_id: str) -> ToolCall:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object {{\"name\": ..., \"arguments\": {{...}}}}, got {type(obj).__name__}")
    obj = _unwrap(obj)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError('missing "name" (a non-empty string)')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models send the arguments as JSON text, as OpenAI does
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f'"arguments" of {name!r} is a string but not valid JSON: {exc.msg}') from None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError(f'"arguments" of {name!r} must be a JSON object, got {type(args).__name__}')
    return make_tool_call(name, args, call_id)


def _bare_calls(text: str, tool_names: Collection[str], id_prefix: str) -> list[ToolCall]:
    """Calls written as bare JSON at the start of a reply, without the tags: `{"name": "calculator",
    "arguments": {...}}` (Qwen2.5-Coder-0.5B does this), several separated by commas or newlines, or a JSON
    list of them. Only objects naming a known tool count; the first thing that is not one ends the calls
    (a model often invents the tool's answer after its call)."""
    body = _FENCE.sub("", text).strip()
    calls: list[ToolCall] = []
    decoder, i = json.JSONDecoder(), 0
    while i < len(body) and body[i] in "{[":
        try:
            obj, i = decoder.raw_decode(body, i)
        except json.JSONDecodeError:
            break
        items = obj if isinstance(obj, list) else [obj]
        named = [o for o in items if isinstance(o, dict) and isinstance(_unwrap(o).get("name"), str)
                 and _unwrap(o)["name"] in tool_names]
        if not named or len(named) != len(items):
            break
        for o in named:
            try:
                calls.append(_call_from_obj(o, f"{id_prefix}{len(calls)}"))
            except ValueError:
                return calls
        while i < len(body) and body[i] in " \t\r\n,":
            i += 1
    return calls


def parse_tool_calls(text: str, id_prefix: str = "call_", tool_names: Collection[str] = ()) -> tuple[list[ToolCall], list[str]]:
    """Every `<tool_call>` block of a reply as OpenAI ToolCalls (ids `{id_prefix}0`, `{id_prefix}1`, ...), and
    one error string per block that could not be read ("tool call 2: invalid JSON: ...").

    Text with no `<tool_call>` tag gives `([], [])` (the reply is a final answer, not a malformed call), unless
    `tool_names` is given and the reply opens with bare JSON calls of those tools (see `_bare_calls`).
    """
    if tool_names and "<tool_call>" not in (text or ""):
        return _bare_calls(text or "", set(tool_names), id_prefix), []
    calls: list[ToolCall] = []
    errors: list[str] = []
    n = 0
    for block in _BLOCK.finditer(text or ""):
        try:
            obj = _decode_block(block.group(1))
            objs = obj if isinstance(obj, list) else [obj]
            if not objs:  # SmolLM2's format writes `[]` for "no call needed"
                continue
            for item in objs:
                n += 1
                try:
                    calls.append(_call_from_obj(item, f"{id_prefix}{n - 1}"))
                except ValueError as exc:
                    errors.append(f"tool call {n}: {exc}")
        except ValueError as exc:
            n += 1
            errors.append(f"tool call {n}: {exc}")
    return calls, errors


def message_tool_calls(msg: Message, id_prefix: str = "call_", tool_names: Collection[str] = ()) -> tuple[list[ToolCall], list[str]]:
    """The tool calls of an assistant message: its native OpenAI `tool_calls` as they are when present,
    else those parsed from its text (bare JSON calls too when `tool_names` is given)."""
    native = msg.get("tool_calls")
    if native:
        calls, errors = [], []
        for i, call in enumerate(native):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                errors.append(f"tool call {i + 1}: not an OpenAI tool call (needs function.name): {call!r:.200}")
                continue
            calls.append(call)
        return calls, errors
    return parse_tool_calls(msg.get("content") or "", id_prefix, tool_names)


def call_arguments(call: ToolCall) -> dict[str, Any]:
    """The arguments of a ToolCall as a dict; ValueError when they are not a JSON object."""
    args = call["function"].get("arguments", "{}")
    if isinstance(args, dict):  # some servers hand back a parsed object
        return args
    try:
        value = json.loads(args) if args and args.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments are not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value


# Qwen2.5's chat template writes exactly this into the system message when given `tools=`; models tuned
# on Hermes-format function calling (Qwen, Hermes, many others) answer with the <tool_call> blocks above.
_HERMES_HEADER = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_HERMES_FOOTER = (
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


def hermes_tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The tools described in text (Hermes/Qwen format), for a system message when the chat template
    ignores `tools=`. Replies in this format are read back by `parse_tool_calls`."""
    lines = [json.dumps(t, ensure_ascii=False) for t in tools]
    return "\n".join([_HERMES_HEADER, *lines, _HERMES_FOOTER])


def strip_tool_calls(text: str) -> str:
    """The reply text without its `<tool_call>` blocks (what remains is prose or a final answer)."""
    return _BLOCK.sub("", text or "").strip()
