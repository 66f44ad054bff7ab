"""Grammar-constrained tool calls: the grammar of a reply, built from the env's tool schemas.

`SamplingParams.tool_grammar` turns it on (`espl eval --tool-grammar required`, `espl train --set
rollout.tool_grammar=required`):

- "off" (default): replies are sampled freely and parsed as always (envs/tools.py).
- "required": the reply is exactly one Hermes block `<tool_call>\\n{CALL}\\n</tool_call>` and nothing else,
  where CALL is `{"name": <one of the tools' names>, "arguments": <that tool's parameter schema>}`; when the env
  allows parallel calls (`parallel_tool_calls`, e.g. BFCL's parallel categories) CALL may instead be a JSON list
  of such calls (the form envs/tools.py reads from one block, and SmolLM2 was tuned on).
- "auto": one call, or free text (the final answer). The call is a block as in "required", or the same CALL
  bare or in a ```json fence (the untagged forms the envs read too, and Qwen2.5-Coder writes: unconstrained, its
  bare calls on espl/ToolMath-v0 carried an invented `"required"` argument and looped on the error). Free text
  is what does not open like a call (its first character is not `{`, `[`, `<`, a backquote or whitespace)
  and never opens a `<tool_call>` tag, optionally followed by one such block.
- "answer": free text only, as "auto"'s text without the block: the reply cannot call a tool.
- "call_then_answer": an episode's schedule, resolved per reply by the rollout (`reply_mode`): its first reply
  is "required" (a call) and every later one "answer". For tasks one call settles (espl/ToolMath-v0: the whole
  expression in one calculator call): Qwen2.5-Coder-0.5B, free or under "auto", calls the calculator again on
  its own result until `max_turns` instead of answering (docs/tools.md). The trajectory records each reply's
  mode, so the trainer replays the grammar each reply was sampled under.

Every call the grammar admits parses (envs/tools.py) as a call of one of the env's tools whose arguments
validate against its schema; the grammar cannot make a call right. The JSON is compact (`{"a": 1, "b": 2}`:
one space after `:` and `,`, at most one whitespace character elsewhere) because tiny models otherwise loop on
whitespace inside a constrained object.

Backends: `HFPolicy` decodes under the grammar with xgrammar (a token bitmask per step and row, applied to the
logits before sampling, so the sampling-time log-probs are those of the masked, renormalised distribution) and
`trajectory_logprobs` replays the same matcher over the recorded tokens to rebuild the masks, so the trainer's
importance ratio is that of the policy that sampled (`HFToolGrammar` below). A llama.cpp server this process
started gets the same grammar as a llguidance `grammar` (`llguidance_grammar`); any other OpenAI-compatible
server gets "required" as `response_format` json_schema (`call_schema`: a bare JSON call, no tags; the envs read
bare calls of their tools too), and "auto" is refused there (one JSON schema cannot also admit free text).

The schemas are taken as the env gives them (BFCL's docs are already converted to JSON-schema types by
envs/bfcl.py: "dict" -> "object", "float" -> "number", "tuple" -> "array", "any" -> "string"); keywords
xgrammar does not know (`format: "float"`, OpenAPI's `nullable`) are ignored by it, so `nullable` is turned
into a `null` alternative here, which is what it means.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from espl.types import TOOL_GRAMMAR_MODES

if TYPE_CHECKING:
    from espl.types import Trajectory

REPLY_MODES: tuple[str, ...] = ("required", "auto", "answer")  # what one reply is decoded under
BLOCK_BEGIN = "<tool_call>\n"
BLOCK_END = "\n</tool_call>"
TRIGGER = "<tool_call>"
FENCE_BEGIN = "```json\n"
FENCE_END = "\n```"
TEXT_START = r"[^{\[<`\s]"  # free text under "auto" opens with none of what opens a call
MAX_WHITESPACE = 1  # consecutive whitespace characters allowed inside the JSON (see the module docstring)


def check_mode(mode: str, field: str = "tool_grammar") -> None:
    """A reply's grammar mode (one of REPLY_MODES); an episode schedule or "off" has no grammar of its own."""
    if mode in REPLY_MODES:
        return
    if mode == "call_then_answer":
        raise ValueError(f"{field}: 'call_then_answer' is an episode's schedule, not one reply's grammar: the "
                         "rollout resolves it per reply (reply_mode)")
    if mode == "off":
        raise ValueError(f"{field}: 'off' has no grammar")
    raise ValueError(f"{field}: must be one of {', '.join(TOOL_GRAMMAR_MODES)}, got {mode!r}")


def reply_mode(mode: str, turn: int) -> str:
    """The grammar mode of an episode's reply number `turn` (0: the first) under the episode mode `mode`."""
    if mode == "call_then_answer":
        return "required" if turn == 0 else "answer"
    return mode


def next_reply_mode(mode: str, conversation: Sequence[Any]) -> str:
    """`reply_mode` of the reply that continues `conversation` (its number: the assistant messages it holds),
    for backends that take whole conversations rather than the rollout's turn count."""
    return reply_mode(mode, sum(m.get("role") == "assistant" for m in conversation))


def _nullable(schema: Any) -> Any:
    """OpenAPI's `nullable: true` (envs/tools.py writes it for Optional hints) as a JSON-schema null alternative."""
    if isinstance(schema, list):
        return [_nullable(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _nullable(v) if isinstance(v, (dict, list)) else v for k, v in schema.items()}
    if out.pop("nullable", False):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def call_schema(tools: Sequence[dict[str, Any]], parallel: bool = False) -> dict[str, Any]:
    """The JSON schema of one call of these OpenAI-style tools (`{"name": const, "arguments": parameters}`, one
    alternative per tool), or with `parallel` of a call or a non-empty list of calls."""
    if not tools:
        raise ValueError("tools: a tool-call grammar needs at least one tool schema")
    alts = []
    for t in tools:
        fn = t.get("function", t)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"tools: not an OpenAI tool schema (needs function.name): {t!r:.200}")
        params = _nullable(copy.deepcopy(fn.get("parameters") or {"type": "object", "properties": {}}))
        params.setdefault("type", "object")
        # a call with an argument the function does not take fails the env's validation: never sample one
        params.setdefault("additionalProperties", False)
        alts.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                     "required": ["name", "arguments"], "additionalProperties": False})
    one = alts[0] if len(alts) == 1 else {"anyOf": alts}
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]} if parallel else one


def structural_tag(tools: Sequence[dict[str, Any]], mode: str, parallel: bool = False) -> dict[str, Any]:
    """The xgrammar structural tag of a reply under `mode` ("required", "auto" or "answer"; see the module
    docstring)."""
    check_mode(mode)
    if mode == "answer":  # text that does not open like a call and never holds a <tool_call> tag
        return {"type": "structural_tag", "format": {"type": "sequence", "elements": [
            {"type": "regex", "pattern": TEXT_START}, {"type": "any_text", "excludes": [TRIGGER]}]}}
    call = {"type": "json_schema", "json_schema": call_schema(tools, parallel), "max_whitespace_cnt": MAX_WHITESPACE}
    block = {"type": "tag", "begin": BLOCK_BEGIN, "end": BLOCK_END, "content": call}
    if mode == "required":
        fmt: dict[str, Any] = block
    else:  # a call (tagged, bare or fenced), or text that does not open like one, then at most one block
        fenced = {"type": "tag", "begin": FENCE_BEGIN, "end": FENCE_END, "content": call}
        text = {"type": "sequence", "elements": [
            {"type": "regex", "pattern": TEXT_START},
            {"type": "triggered_tags", "triggers": [TRIGGER], "tags": [block], "stop_after_first": True}]}
        fmt = {"type": "or", "elements": [block, call, fenced, text]}
    return {"type": "structural_tag", "format": fmt}


def llguidance_grammar(tools: Sequence[dict[str, Any]], mode: str, parallel: bool = False) -> str:
    """The same grammar for llama.cpp's `grammar` request field (llguidance's Lark syntax, which the packaged
    llama.cpp build reads; its own `json_schema_to_grammar` emits this form too)."""
    check_mode(mode)
    schema = dict(call_schema(tools, parallel))
    # compact JSON, as the xgrammar form (x-guidance: llguidance's JSON options)
    schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    block = f"block: {json.dumps(BLOCK_BEGIN)} call {json.dumps(BLOCK_END)}\ncall: %json {json.dumps(schema)}"
    text = f"TEXT: /{TEXT_START}(?s:.*)/ & ~/(?s:.*{TRIGGER}.*)/"
    if mode == "required":
        return f"%llguidance {{}}\nstart: block\n{block}"
    if mode == "answer":
        return f"%llguidance {{}}\nstart: TEXT\n{text}"
    return ("%llguidance {}\nstart: block | call | fenced | TEXT block?\n"
            f"fenced: {json.dumps(FENCE_BEGIN)} call {json.dumps(FENCE_END)}\n{text}\n{block}")


def grammar_key(tools: Sequence[dict[str, Any]], mode: str, parallel: bool) -> str:
    return json.dumps([mode, parallel, list(tools)], sort_keys=True)


class HFToolGrammar:
    """xgrammar matchers of tool-call grammars over one tokenizer: what `HFPolicy` decodes under and what its
    `trajectory_logprobs` replays. Compiled grammars are cached by (mode, parallel, tools)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]):
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info)
        self.vocab_size = vocab_size
        self.stop_ids = sorted({int(t) for t in stop_ids})  # the policy's stop ids end a constrained reply
        self._cache: dict[str, Any] = {}

    def matcher(self, tools: Sequence[dict[str, Any]], mode: str, parallel: bool = False) -> Any:
        key = grammar_key(tools, mode, parallel)
        if key not in self._cache:
            self._cache[key] = self._compiler.compile_structural_tag(json.dumps(structural_tag(tools, mode, parallel)))
        return self._xgr.GrammarMatcher(self._cache[key], override_stop_tokens=self.stop_ids)

    def allocate(self, rows: int) -> Any:
        return self._xgr.allocate_token_bitmask(rows, self.vocab_size)

    def apply(self, logits: Any, bitmask: Any) -> None:
        """Set the logits the bitmask rejects to -inf, in place (rows of logits = rows of bitmask)."""
        on = logits if logits.device.type in ("cuda", "cpu") else logits.to("cpu")
        self._xgr.apply_token_bitmask_inplace(on, bitmask.to(on.device), vocab_size=self.vocab_size)
        if on is not logits:
            logits.copy_(on.to(logits.device))

    def replay(self, tokens: Sequence[int], tools: Sequence[dict[str, Any]], mode: str, parallel: bool) -> tuple[Any, int]:
        """The bitmask before each token of one constrained reply, rebuilt by running the matcher over the
        tokens as sampling did: ([len(tokens), words] int32, how many leading tokens were constrained). A token
        the matcher rejects (which masked sampling cannot produce) ends the constraint there, as in decoding."""
        m = self.matcher(tools, mode, parallel)
        masks = self.allocate(len(tokens))
        n = 0
        for t in tokens:
            if m.is_terminated():
                break
            m.fill_next_token_bitmask(masks, n)
            n += 1
            if not m.accept_token(int(t)):
                break
        return masks[:n], n


def trajectory_grammar(traj: "Trajectory") -> dict[str, Any] | None:
    """The grammar record of a trajectory (`Trajectory.tool_grammar`), None when its replies were unconstrained."""
    rec = traj.tool_grammar
    return rec if rec and rec.get("spans") else None


class ToolSet(NamedTuple):
    """The tools one row is decoded under (`HFPolicy.generate_tokens(tools=...)`): the env's OpenAI-style tool
    schemas, whether its reply may hold parallel calls (a JSON list in the block), and the reply's grammar mode
    (None: `params.tool_grammar`; the rollout sets it per reply for "call_then_answer")."""

    tools: Sequence[dict[str, Any]]
    parallel: bool = False
    mode: str | None = None
