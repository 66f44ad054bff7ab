"""ESPL_SPEC steps 6 and 7: how a prompt changes. The `Mutator` protocol, the LLM mutator (the reflection
pipeline of the reference code: summaries -> critiques -> <= 2 JSON operations per problem -> revision plan;
and crossover), the JSON-operation parser and validator, and `ScriptedMutator` for tests.

A small model writes broken JSON, wrong ids, empty or endless text. Every reply goes through
`parse_operations` (JSON extraction + JSON-schema validation + id checks) and every child through
`validate_principles`; anything invalid is counted under a reason and dropped, and when nothing valid
remains the mutation is rejected and the parent kept. Nothing a model writes can raise out of here.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence

import jsonschema

from espl.agents.errors import GenerationError
from espl.agents.policy import JsonPolicy, Policy
from espl.types import Completion, Message, SamplingParams, Trajectory

log = logging.getLogger(__name__)

MAX_REPLY_CHARS = 100_000  # longer replies are cut before JSON extraction (a 10 kB reply is fine)

# How a JSON-producing call (critique, revision, crossover) is asked to reply under constrained decoding:
#   "json_only"        the prompt asks for the operations only and the grammar is the list of operations:
#                      a tiny model (SmolLM2-135M) cannot reason usefully, and every token it writes outside
#                      the JSON is a chance to break it;
#   "reason_then_json" the reference's "reason step by step, then finish with the JSON": the grammar is an
#                      object whose FIRST field is the free-text "analysis" and whose second is the list of
#                      operations, so a capable model writes its comparison of correct and wrong rollouts
#                      before it commits to operations. One call, not a free call then a constrained one: the
#                      operations are decoded in the same context as the analysis (as in the reference), the
#                      long prompt is prefilled once, and the calls and their accounting keep their shape.
# Without a grammar (a backend that has none, or a server that refused the schema) both ask for the reasoning
# first and a ```json list last, as the reference does; the parser accepts either reply shape.
Reflection = Literal["json_only", "reason_then_json"]


@dataclass(frozen=True)
class RolloutGroup:
    """The rollouts of one prompt on one problem, as the mutator sees them (the whole episode, tool calls
    and results included)."""

    problem: str
    answer: str
    trajectories: tuple[Trajectory, ...]

    @property
    def mean_reward(self) -> float:
        return sum(t.reward for t in self.trajectories) / max(len(self.trajectories), 1)

    @property
    def mixed(self) -> bool:
        """Some rollouts did better than others: for 0/1 rewards, exactly the reference's 0 < mean < 1."""
        return len({t.reward for t in self.trajectories}) > 1


@dataclass(frozen=True)
class MutationResult:
    """A child's principles, or None when the operation was rejected (the parent is kept).

    `rejected` counts dropped operations and replies by reason ("json_error", "schema", "unknown_id",
    "too_long", "empty", "duplicate", "unchanged", ...). `calls` lists (prompt, reply) of every LLM call.
    """

    principles: tuple[str, ...] | None
    reason: str
    rejected: dict[str, int] = field(default_factory=dict)
    calls: tuple[tuple[str, str], ...] = ()
    constrained: bool = False


class Mutator(Protocol):
    """Turns a parent prompt and evidence into a child prompt; never raises on bad model output."""

    def mutate(self, parent: Sequence[str], groups: Sequence[RolloutGroup], seed: int) -> MutationResult:
        """Step 6: reflect on the parent's rollouts (problems with mixed outcomes) and revise it."""
        ...

    def crossover(self, parents: Sequence[Sequence[str]], wins: Sequence[Sequence[str]], seed: int) -> MutationResult:
        """Step 7: improve parents[0] (set A) from the sets that won problems (`wins[i]`: problem texts)."""
        ...

    def close(self) -> None:
        """Frees what the mutator owns (e.g. the llama.cpp server of its policy); the trainer calls it on close."""
        ...


@dataclass(frozen=True)
class MutatorSettings:
    max_ops_per_problem: int = 2  # reference max_update_operations
    max_principle_words: int = 32  # reference: "no more than 32 words", enforced on the final child only
    max_principles: int = 24  # a cap so a runaway mutator cannot grow the prompt without bound; 0: none (reference)
    summary_tokens: int = 96
    critique_tokens: int = 160
    revision_tokens: int = 192
    crossover_tokens: int = 192
    temperature: float = 0.7
    top_p: float = 0.95
    constrained: bool = True  # grammar-constrained JSON where the backend supports it
    reflection: Reflection = "json_only"  # see `Reflection`; paper(): "reason_then_json"

    def __post_init__(self) -> None:
        if self.reflection not in ("json_only", "reason_then_json"):
            raise ValueError(f"reflection: must be 'json_only' or 'reason_then_json', got {self.reflection!r}")
        if self.max_principles < 0:
            raise ValueError(f"max_principles: must be >= 0 (0: no cap), got {self.max_principles}")


# ---- prompts (after the reference's templates; ours, not copied) ------------------------------------------

SUMMARY_PROMPT = """An agent was given some principles and produced the trajectory below while solving a problem. Summarize the trajectory step by step:

1. For each step, say what action was taken and which principle (if any) it used.
2. Using the grade and the correct answer, point out steps that were detours, errors or backtracking, why they may have happened and how they affected progress.
3. Keep the core outcome of every step, even when the process was flawed.

<trajectory>
{trajectory}
</trajectory>

<evaluation>
{grade}
</evaluation>

<groundtruth>
{answer}
</groundtruth>

Return only the step-by-step summary:
1. what happened in the first step and its outcome
2. what happened in the second step and its outcome
3. ..."""

CRITIQUE_PROMPT = """An agent was given a set of principles and tried the problem below several times; some attempts were correct and some wrong. Review the attempts and extract generalizable principles:

1. Trajectory analysis: the key correct decisions of successful attempts; where and why failed attempts went wrong; patterns or strategies used or missed; whether an existing principle was missed or gave too little guidance.
2. Update the principles with at most {max_operations} operations:
   * "modify": rewrite an existing principle (give its id, e.g. "G3") to make it more helpful
   * "add": introduce a new principle that is needed
   For each, consider when it applies and which problem features make it relevant.
3. Each modified or added principle starts with a few words of general background, focuses on strategic thinking rather than specific calculations, and names decision points that carry over to similar problems.

{finish}

<problem>
{problem}
</problem>

<trajectories>
{trajectories}
</trajectories>

<groundtruth>
{answer}
</groundtruth>

<principles>
{principles}
</principles>"""

CRITIQUE_FINISH = """Reason step by step, then finish with the list of operations as JSON:
```json
[
    {"operation": "modify", "modified_from": "G2", "principle": "the modified principle"},
    {"operation": "add", "principle": "the new principle"}
]
```
Using only one kind of operation is fine."""

REVISION_PROMPT = """An agent was given a set of principles and used them to solve problems. Several suggestions to improve the principles were made. Review them and produce a final revision plan for the principles.

Every principle after the revision must:
1. be a clear, generalizable lesson of at most {max_words} words;
2. start with a few words of general background;
3. focus on strategic thinking patterns, not specific calculations;
4. name decision points that apply to similar problems;
5. not repeat an idea found in another principle.

<existing_principles>
{principles}
</existing_principles>

<suggested_updates>
{updates}
</suggested_updates>

Two kinds of operations are allowed:
* "modify": rewrite an existing principle (give its id) to make it more helpful
* "merge": combine similar principles (at least two ids) into one more general principle

{finish}"""

REVISION_FINISH = """Reason about each suggestion, then finish with the revision plan as JSON:
```json
[
    {"operation": "modify", "modified_from": "C1", "principle": "the modified principle"},
    {"operation": "merge", "merged_from": ["C1", "G3"], "principle": "the merged principle"}
]
```
An empty list is fine when nothing should change."""

CROSSOVER_HEAD = """Several sets of principles were evolved independently to guide an agent solving problems. Principle Set A is the one to improve by learning from the strengths of the other sets.

"""

CROSSOVER_TASK = """Each set above strictly outperformed all others on at least one question. Use this evidence to improve Principle Set A:

1. For each question, explain why the best set succeeded: a relevant principle, or other sets' counterproductive principles, or chance. Cite principle ids (A.G3, B.G1) and question ids (Q.0).
2. Decide what in Set A to preserve (principles that helped where A won) and what to change (useful principles A lacks, or A principles that misled it). Leave principles that are merely irrelevant to these questions alone.
3. Propose improvements grounded in the evidence; additions and changes should come from principles that helped other sets, not be invented from scratch.

Operations on Set A:
* "add": a new principle (inspired by one that helped another set)
* "modify": rewrite an existing A principle ("modified_from": "A.G2")
* "remove": drop an A principle that seems counterproductive ("remove_id": "A.G5")

{finish}"""

CROSSOVER_FINISH = """Reason with citations, then finish with the operations as JSON:
```json
[
    {"operation": "add", "evidence": "B won Q.3 with B.G1", "principle": "the new principle"},
    {"operation": "modify", "modified_from": "A.G0", "evidence": "...", "principle": "the modified principle"},
    {"operation": "remove", "remove_id": "A.G2", "evidence": "..."}
]
```
An empty list is fine when the evidence supports no change."""

JSON_ONLY_FINISH = "Reply with the JSON list of operations only."

ANALYSIS_FINISH = """Reply with one JSON object. Its first field, "analysis", is your reasoning, step by step as described above; its second field, "operations", is the list of operations in the format below:
```json
{{"analysis": "your step-by-step reasoning", "operations": {example}}}
```"""

CRITIQUE_EXAMPLE = '[{"operation": "modify", "modified_from": "G2", "principle": "the modified principle"}, {"operation": "add", "principle": "the new principle"}]'
REVISION_EXAMPLE = '[{"operation": "modify", "modified_from": "C1", "principle": "the modified principle"}, {"operation": "merge", "merged_from": ["C1", "G3"], "principle": "the merged principle"}]'
CROSSOVER_EXAMPLE = '[{"operation": "add", "evidence": "B won Q.3 with B.G1", "principle": "the new principle"}, {"operation": "remove", "remove_id": "A.G2", "evidence": "..."}]'


def _instruction_text() -> str:
    texts = (SUMMARY_PROMPT, CRITIQUE_PROMPT, CRITIQUE_FINISH, REVISION_PROMPT, REVISION_FINISH, CROSSOVER_HEAD,
             CROSSOVER_TASK, CROSSOVER_FINISH, JSON_ONLY_FINISH, ANALYSIS_FINISH)
    return "\n".join(re.sub(r"\{\w+\}", " | ", t) for t in texts)  # placeholders break n-grams


# ---- JSON operations: schemas, extraction, validation -----------------------------------------------------

_PRINCIPLE = {"type": "string", "minLength": 16, "maxLength": 300}  # 32 words fit; bounds constrained decoding
# A critique's principle may run over the word limit: the revision step shortens it (the reference states the
# limit only in the revision prompt); the final child is held to `max_principle_words`.
_CANDIDATE = {"type": "string", "minLength": 16, "maxLength": 1000}


def _id_schema(ids: Sequence[str]) -> dict:
    # An enum of the ids that exist makes a wrong index impossible under constrained decoding.
    return {"type": "string", "enum": list(ids)} if ids else {"type": "string", "pattern": "^$", "maxLength": 0}


def critique_schema(ids: Sequence[str], max_ops: int) -> dict:
    add = {"type": "object", "properties": {"operation": {"const": "add"}, "principle": _CANDIDATE}, "required": ["operation", "principle"]}
    modify = {
        "type": "object",
        "properties": {"operation": {"const": "modify"}, "modified_from": _id_schema(ids), "principle": _CANDIDATE},
        "required": ["operation", "modified_from", "principle"],
    }
    return {"type": "array", "items": {"anyOf": [add, modify] if ids else [add]}, "maxItems": max_ops}


def revision_schema(ids: Sequence[str]) -> dict:
    modify = {
        "type": "object",
        "properties": {"operation": {"const": "modify"}, "modified_from": _id_schema(ids), "principle": _PRINCIPLE},
        "required": ["operation", "modified_from", "principle"],
    }
    merge = {
        "type": "object",
        "properties": {
            "operation": {"const": "merge"},
            "merged_from": {"type": "array", "items": _id_schema(ids), "minItems": 2, "maxItems": max(2, len(ids))},
            "principle": _PRINCIPLE,
        },
        "required": ["operation", "merged_from", "principle"],
    }
    return {"type": "array", "items": {"anyOf": [modify, merge]}, "maxItems": max(1, len(ids))}


def crossover_schema(ids: Sequence[str]) -> dict:
    evidence = {"type": "string", "maxLength": 600}
    add = {
        "type": "object",
        "properties": {"operation": {"const": "add"}, "evidence": evidence, "principle": _PRINCIPLE},
        "required": ["operation", "principle"],
    }
    a_ids = [f"A.{i}" for i in ids] + list(ids)  # set A's ids, with or without the "A." prefix (never B.G3)
    modify = {
        "type": "object",
        "properties": {"operation": {"const": "modify"}, "modified_from": _id_schema(a_ids), "evidence": evidence, "principle": _PRINCIPLE},
        "required": ["operation", "modified_from", "principle"],
    }
    remove = {
        "type": "object",
        "properties": {"operation": {"const": "remove"}, "remove_id": _id_schema(a_ids), "evidence": evidence},
        "required": ["operation", "remove_id"],
    }
    return {"type": "array", "items": {"anyOf": [add, modify, remove] if ids else [add]}, "maxItems": 8}


ANALYSIS_CHARS_PER_TOKEN = 2  # the analysis may take about half a call's budget (~4 characters a token)
ANALYSIS_MAX_CHARS = 4000  # and no more than this: a grammar's repetition bound grows with it


def analysis_chars(max_new_tokens: int) -> int:
    """The longest analysis a reply of `max_new_tokens` may write: half its budget, so the operations that
    follow still fit. Unbounded, a rambling mutator filled the budget with analysis and its reply was cut
    inside the string, losing every operation (CI stop 20: SmolLM2 on llama.cpp, 160 tokens)."""
    return min(ANALYSIS_MAX_CHARS, ANALYSIS_CHARS_PER_TOKEN * max_new_tokens)


def with_analysis(operations_schema: dict, max_chars: int) -> dict:
    """The reply schema of reflection "reason_then_json": {"analysis": text of at most `max_chars`,
    "operations": [...]}, the analysis first (xgrammar and llama.cpp emit properties in schema order), so it
    is written before the operations."""
    return {
        "type": "object",
        "properties": {"analysis": {"type": "string", "maxLength": max_chars}, "operations": operations_schema},
        "required": ["analysis", "operations"],
        "additionalProperties": False,
    }


_FENCE = re.compile(r"```\s*json\s*(.*?)(?:```|$)", re.IGNORECASE | re.DOTALL)
_LINE_COMMENT = re.compile(r"(?m)\s*(#|//)[^\n\"]*$")
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def _json_candidates(text: str) -> list[str]:
    """Spans that may hold the operations, most likely first: the whole reply (what constrained decoding
    gives), the last ```json block, else the last top-level [...] or {...} of the text."""
    found = [m.group(1) for m in _FENCE.finditer(text)]
    candidates = [text] + list(reversed(found))
    for opener, closer in (("[", "]"), ("{", "}")):
        end = text.rfind(closer)
        start = text.rfind(opener, 0, end) if end >= 0 else -1
        # widen to the outermost bracket that still parses: try each opener before `end`, last first
        while start >= 0:
            candidates.append(text[start : end + 1])
            start = text.rfind(opener, 0, start)
            if len(candidates) > 64:
                break
    return candidates


def _loads(span: str) -> Any:
    try:
        return json.loads(span)
    except (json.JSONDecodeError, RecursionError):
        cleaned = _TRAILING_COMMA.sub(r"\1", _LINE_COMMENT.sub("", span))
        return json.loads(cleaned)


def extract_json(text: str) -> tuple[list | None, str]:
    """The list of operations found in a reply, or None and the reason: "empty" (no text) or "json_error"
    (nothing parsed). Both reply shapes count: a list of operations, or an object whose "operations" is that
    list (reflection "reason_then_json", beside its "analysis"); any other single object is a one-item list."""
    text = (text or "")[:MAX_REPLY_CHARS]
    if not text.strip():
        return None, "empty"
    for span in _json_candidates(text):
        try:
            value = _loads(span.strip())
        except (json.JSONDecodeError, RecursionError, ValueError):
            continue
        if isinstance(value, dict) and "operations" in value:
            if not isinstance(value["operations"], list):
                continue  # {"analysis": ..., "operations": "none"}: not the operations
            value = value["operations"]
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            return value, "ok"
    return None, "json_error"


def parse_operations(text: str, schema: dict, rejected: Counter) -> list[dict]:
    """The operations of a reply that satisfy `schema["items"]` (invalid ones counted in `rejected`).
    `schema` is the list-of-operations schema, whichever shape the reply was asked for."""
    ops, reason = extract_json(text)
    if ops is None:
        rejected[reason] += 1
        return []
    item_validator = jsonschema.Draft202012Validator(schema["items"])
    valid = []
    for op in ops[: schema.get("maxItems", len(ops))]:  # reference: keep the first max_operations
        if item_validator.is_valid(op):
            valid.append(op)
        else:
            rejected["unknown_id" if _is_id_error(op) else "schema"] += 1
    return valid


def _is_id_error(op: Any) -> bool:
    return isinstance(op, dict) and any(k in op for k in ("modified_from", "merged_from", "remove_id"))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = re.compile(r"^\[?[A-Z]?\.?G\d+\]?[.:),]\s*|^\[\d+\][.:)]?\s*")  # "[G3].", "A.G1:", "[2]" (not "1000:")
_WORD = re.compile(r"[^\W\d_]{2,}")  # a word of two letters or more (any script)
_EDIT_VERB = re.compile(r"\b(add|added|adding|modif\w*|merg\w*|remov\w*|rewrit\w*|updat\w*|revis\w*)\b", re.I)
_NGRAM = 5


def _ngrams(text: str) -> set[tuple[str, ...]]:
    words = [w.casefold() for w in _WORD.findall(text)]
    return {tuple(words[i : i + _NGRAM]) for i in range(len(words) - _NGRAM + 1)}


def prose_problem(text: str) -> str | None:
    """Why `text` cannot be a principle, or None. The rule (ESPL issue 13.6):
    - "echo": it repeats the mutator's own instructions: five consecutive words of one of its prompts, one of
      the placeholder texts of its JSON examples ("the new principle": SmolLM2 copies the example of the
      reasoning prompts), or it is about editing principles (an editing verb, add/modify/merge/remove/rewrite/update/revise, next to
      the word "principle"), e.g. "modify this principle", "the merged principle";
    - "not_prose": fewer than three words of two or more letters, or letters and spaces are under half of
      its characters, e.g. "g0.25.25.25.25.25.25".
    """
    words = _WORD.findall(text)
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    if len(words) < 3 or letters < 0.5 * len(text):
        return "not_prose"
    if _ngrams(text) & _INSTRUCTION_NGRAMS or (_EDIT_VERB.search(text) and re.search(r"\bprinciples?\b", text, re.I)):
        return "echo"
    if " ".join(_WORD.findall(text.casefold())) in _EXAMPLE_VALUES:
        return "echo"
    return None


def clean_principle(text: str, max_words: int | None, rejected: Counter, prose: bool = True) -> str | None:
    """One principle normalised to a single line, or None (counted) when empty, over `max_words` (None: no
    limit, for a critique's candidates, which the revision may still shorten) or (`prose`: for text the
    mutator wrote) not a principle by `prose_problem`'s rule."""
    text = text.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates from JSON "\ud800"
    text = " ".join(_CONTROL.sub(" ", text).split())
    text = _LABEL.sub("", text)  # a model often repeats the "[G3]." label; "1000: numbers..." is kept
    if not text:
        rejected["empty_principle"] += 1
        return None
    if max_words is not None and len(text.split()) > max_words:
        rejected["too_long"] += 1
        return None
    problem = prose_problem(text) if prose else None
    if problem is not None:
        rejected[problem] += 1
        return None
    return text


def validate_principles(
    principles: Sequence[str], parent: Sequence[str], settings: MutatorSettings, rejected: Counter
) -> tuple[tuple[str, ...] | None, str]:
    """The final child (duplicates dropped), or None and why it may not enter the pool."""
    out: list[str] = []
    seen: set[str] = set()
    for p in principles:
        if not isinstance(p, str):
            rejected["schema"] += 1
            continue
        # each new principle passed the prose rule when its operation was parsed; the parent's own (e.g. a
        # user's fixed root "Be brief.") are kept as they are
        clean = clean_principle(p, settings.max_principle_words, rejected, prose=False)
        if clean is None:
            continue
        # duplicates up to case, spacing and punctuation: "Check the units." == "check the units" (Qwen 0.5B's
        # revision returned exactly that pair)
        key = " ".join(re.sub(r"[\W_]+", " ", clean.casefold()).split())
        if key in seen:
            rejected["duplicate"] += 1
            continue
        seen.add(key)
        out.append(clean)
    if not out:
        return None, "empty"
    if settings.max_principles and len(out) > settings.max_principles:  # 0: no cap, as in the reference
        return None, "too_many_principles"
    if tuple(out) == tuple(parent):
        return None, "unchanged"
    return tuple(out), "ok"


_INSTRUCTION_NGRAMS = _ngrams(_instruction_text())
# the quoted placeholder values of the prompts' JSON examples, as words: "the new principle", ...
_EXAMPLES = (CRITIQUE_FINISH, REVISION_FINISH, CROSSOVER_FINISH, ANALYSIS_FINISH, CRITIQUE_EXAMPLE, REVISION_EXAMPLE,
             CROSSOVER_EXAMPLE)
_EXAMPLE_VALUES = {" ".join(_WORD.findall(v.casefold())) for t in _EXAMPLES for v in re.findall(r':\s*"([^"]{12,})"', t)}


# ---- constrained decoding --------------------------------------------------------------------------------

JsonGenerate = Callable[[Sequence[Sequence[Message]], SamplingParams, Sequence[dict]], list[str]]


def json_backend(policy: Any) -> JsonGenerate | None:
    """A function generating schema-constrained JSON with this policy (`JsonPolicy.generate_json`: xgrammar
    for HF, `response_format` for servers), or None when the policy has no grammar support."""
    if not isinstance(policy, JsonPolicy):
        return None
    try:  # an empty call sets the backend's grammar machinery up (xgrammar's compiler for HF)
        policy.generate_json([], SamplingParams(), [])
    except ImportError as exc:  # xgrammar missing: fall back to free text, counted as unconstrained
        log.warning("xgrammar unavailable (%s); mutator replies are NOT grammar-constrained", exc)
        return None
    return policy.generate_json


# ---- the LLM mutator --------------------------------------------------------------------------------------


class MutatorCallFailed(Exception):
    """An LLM call of the mutator failed (after the backend's retries); `reason` is the mutation outcome it
    becomes: "mutator_" + the backend's ErrorKind ("mutator_timeout", "mutator_context_overflow", ...)."""

    def __init__(self, cause: GenerationError):
        kinds = sorted(cause.failed_kinds) or ["error"]
        super().__init__(f"mutator_{kinds[0]}")
        self.reason = f"mutator_{kinds[0]}"
        self.cause = cause


def label(principles: Sequence[str], prefix: str = "G") -> dict[str, str]:
    return {f"{prefix}{i}": p for i, p in enumerate(principles)}


def render_labelled(items: dict[str, str], set_label: str = "") -> str:
    if not items:
        return "None"
    return "\n".join(f"[{set_label}{k}]. {v}" for k, v in items.items())


def render_episode(trajectory: Trajectory) -> str:
    """The whole episode as text: every message, tool calls and tool results included. The system message
    too: under placement "system" it holds the principles, which the summary prompt asks about (the
    reference's summariser sees them in the rollout's user turn, where it puts them)."""
    lines = []
    for m in trajectory.messages:
        role = m.get("role", "?")
        content = m.get("content") or ""
        if m.get("tool_calls"):
            calls = "; ".join(
                f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments')})" for c in m["tool_calls"]
            )
            content = f"{content}\n[tool calls] {calls}".strip()
        lines.append(f"[{role}] {content}")
    return "\n".join(lines)


def verdict(trajectory: Trajectory) -> str:
    """"correct" when the env says so (its reason), else by reward (>= 1 counts as correct)."""
    if trajectory.reason:
        return "correct" if trajectory.reason == "correct" else "wrong"
    return "correct" if trajectory.reward >= 1.0 else "wrong"


def grade_text(trajectory: Trajectory) -> str:
    return f"This trajectory delivers a **{verdict(trajectory)}** answer (reward {trajectory.reward:g}, {trajectory.reason})."


class LLMMutator:
    """The reference's reflection pipeline driven by any `Policy` (by default the frozen base model).

    mutate: (a) keep problems whose mean reward is strictly between 0 and 1, (b) summarise each of their
    rollouts, (c) one critique per problem ending in <= max_ops JSON operations, (d) adds become candidates
    C0.., one revision call returns modify/merge operations, (e) renumber G0.. (done by the pool order).
    A critique's principles may exceed `max_principle_words` (the revision shortens them, as in the
    reference); the word limit holds for the final child. With `constrained` and a backend that supports
    grammars, every JSON-producing call is decoded under the operations' JSON schema (the ids allowed are an
    enum): the list alone (`reflection = "json_only"`, the prompt asks for the JSON only) or an object whose
    first field is the analysis (`"reason_then_json"`, the prompt keeps the reference's reasoning steps).
    """

    def __init__(self, policy: Policy, settings: MutatorSettings = MutatorSettings()):
        self.policy = policy
        self.settings = settings
        self._json = json_backend(policy) if settings.constrained else None

    # -- LLM calls --
    def _params(self, max_new_tokens: int, seed: int) -> SamplingParams:
        s = self.settings
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=max_new_tokens, seed=seed)

    def _chat(self, prompts: Sequence[str], max_new_tokens: int, seed: int, calls: list) -> list[str]:
        if not prompts:
            return []
        convs: list[list[Message]] = [[{"role": "user", "content": p}] for p in prompts]
        try:
            completions: list[Completion] = self.policy.generate(convs, self._params(max_new_tokens, seed))
        except GenerationError as exc:
            raise MutatorCallFailed(exc) from exc
        replies = [c.text for c in completions]
        calls.extend(zip(prompts, replies))
        return replies

    def _chat_json(self, prompts: Sequence[str], schemas: Sequence[dict], max_new_tokens: int, seed: int, calls: list) -> list[str]:
        if not prompts:
            return []
        if self._json is None:
            return self._chat(prompts, max_new_tokens, seed, calls)
        convs: list[list[Message]] = [[{"role": "user", "content": p}] for p in prompts]
        try:
            replies = self._json(convs, self._params(max_new_tokens, seed), list(schemas))
        except GenerationError as exc:
            # only a refusal of the schema itself turns constrained decoding off (free text from now on);
            # any other failure (a prompt over the context, a timeout, a server error) is this mutation's
            # outcome, counted under its kind, and the next step tries constrained again
            if exc.failed_kinds != {"schema_refused"}:
                raise MutatorCallFailed(exc) from exc
            log.warning("the mutator's server refused JSON-schema replies (%s); continuing UNCONSTRAINED "
                        "(replies parsed and validated as free text)", next(e for e in exc.errors if e))
            self._json = None
            return self._chat(prompts, max_new_tokens, seed, calls)
        calls.extend(zip(prompts, replies))
        return replies

    def close(self) -> None:
        """Stops what the mutator's policy owns (e.g. the llama.cpp server of mutator = "llamacpp")."""
        self.policy.close()

    @property
    def constrained(self) -> bool:
        return self._json is not None

    def _finish(self, reasoned: str, example: str) -> str:
        """How a JSON-producing prompt ends (see `Reflection`)."""
        if not self.constrained:
            return reasoned  # free text: reason first, the ```json list last, as the reference asks
        if self.settings.reflection == "reason_then_json":
            return ANALYSIS_FINISH.format(example=example)
        return JSON_ONLY_FINISH

    def _reply_schema(self, operations: dict, max_new_tokens: int) -> dict:
        """The grammar of a JSON-producing call of `max_new_tokens`; replies are parsed against `operations`
        either way."""
        if self.settings.reflection == "reason_then_json":
            return with_analysis(operations, analysis_chars(max_new_tokens))
        return operations

    # -- step 6 --
    def mutate(self, parent: Sequence[str], groups: Sequence[RolloutGroup], seed: int) -> MutationResult:
        rejected: Counter = Counter()
        calls: list = []
        try:
            return self._mutate(parent, groups, seed, rejected, calls)
        except MutatorCallFailed as exc:  # the LLM failed: an outcome of this mutation, training goes on
            log.warning("mutation failed (%s): %s", exc.reason, exc.cause)
            rejected[exc.reason] += 1
            return MutationResult(None, exc.reason, dict(rejected), tuple(calls), self.constrained)

    def _mutate(self, parent: Sequence[str], groups: Sequence[RolloutGroup], seed: int, rejected: Counter,
                calls: list) -> MutationResult:
        s = self.settings
        mixed = [g for g in groups if g.mixed]  # (a) reference: mean strictly between 0 and 1 (0/1 rewards)
        if not mixed:
            return MutationResult(None, "no_mixed_problems", {}, (), self.constrained)
        # (b) one summary per rollout of a mixed problem
        flat = [(gi, t) for gi, g in enumerate(mixed) for t in g.trajectories]
        summaries = self._chat(
            [SUMMARY_PROMPT.format(trajectory=render_episode(t), grade=grade_text(t), answer=mixed[gi].answer) for gi, t in flat],
            s.summary_tokens, seed, calls,
        )
        per_group: list[list[str]] = [[] for _ in mixed]
        for (gi, t), summary in zip(flat, summaries):
            per_group[gi].append(f"Trajectory {len(per_group[gi]) + 1} (Answer {verdict(t)}):\n{summary}")
        # (c) one critique per problem
        parent_ids = label(parent)
        finish = self._finish(CRITIQUE_FINISH, CRITIQUE_EXAMPLE)
        schema = critique_schema(list(parent_ids), s.max_ops_per_problem)
        critiques = self._chat_json(
            [
                CRITIQUE_PROMPT.format(
                    max_operations=s.max_ops_per_problem, finish=finish, problem=g.problem,
                    trajectories="\n\n".join(summ), answer=g.answer, principles=render_labelled(parent_ids),
                )
                for g, summ in zip(mixed, per_group)
            ],
            [self._reply_schema(schema, s.critique_tokens)] * len(mixed), s.critique_tokens, seed + 1, calls,
        )
        # (d) adds become candidates C0.., modifications become suggestions for the revision call; no word
        # limit yet: shortening them is the revision's job (the reference states the limit only there)
        candidates = dict(parent_ids)
        suggestions: list[dict] = []
        n_added = 0
        for reply in critiques:
            for op in parse_operations(reply, schema, rejected):
                text = clean_principle(op["principle"], None, rejected)
                if text is None:
                    continue
                if op["operation"] == "add":
                    candidates[f"C{n_added}"] = text
                    n_added += 1
                else:
                    suggestions.append({"operation": "modify", "modified_from": op["modified_from"], "principle": text})
        if n_added == 0 and not suggestions:
            return MutationResult(None, "no_valid_operations", dict(rejected), tuple(calls), self.constrained)
        revised = dict(candidates)
        rschema = revision_schema(list(candidates))
        plan_reply = self._chat_json(
            [
                REVISION_PROMPT.format(
                    max_words=s.max_principle_words, principles=render_labelled(candidates),
                    updates="\n".join(json.dumps(u, ensure_ascii=False) for u in suggestions) or "None",
                    finish=self._finish(REVISION_FINISH, REVISION_EXAMPLE),
                )
            ],
            [self._reply_schema(rschema, s.revision_tokens)], s.revision_tokens, seed + 2, calls,
        )[0]
        next_c = n_added
        for op in parse_operations(plan_reply, rschema, rejected):
            text = clean_principle(op["principle"], s.max_principle_words, rejected)
            if text is None:
                continue
            if op["operation"] == "modify":
                if op["modified_from"] not in revised:  # merged away by an earlier operation
                    rejected["unknown_id"] += 1
                    continue
                revised[op["modified_from"]] = text
            else:
                ids = list(dict.fromkeys(op["merged_from"]))
                if len(ids) < 2 or any(i not in revised for i in ids):
                    rejected["unknown_id"] += 1
                    continue
                for i in ids:
                    del revised[i]
                revised[f"C{next_c}"] = text
                next_c += 1
        # (e) renumbering G0.. happens by order: the child is the list of the revised values; a candidate still
        # over the word limit after the revision is dropped there (counted "too_long")
        child, reason = validate_principles(list(revised.values()), parent, s, rejected)
        return MutationResult(child, reason, dict(rejected), tuple(calls), self.constrained)

    # -- step 7 --
    def crossover(self, parents: Sequence[Sequence[str]], wins: Sequence[Sequence[str]], seed: int) -> MutationResult:
        rejected: Counter = Counter()
        calls: list = []
        try:
            return self._crossover(parents, wins, seed, rejected, calls)
        except MutatorCallFailed as exc:
            log.warning("crossover failed (%s): %s", exc.reason, exc.cause)
            rejected[exc.reason] += 1
            return MutationResult(None, exc.reason, dict(rejected), tuple(calls), self.constrained)

    def _crossover(self, parents: Sequence[Sequence[str]], wins: Sequence[Sequence[str]], seed: int,
                   rejected: Counter, calls: list) -> MutationResult:
        s = self.settings
        prompt = CROSSOVER_HEAD
        for k, principles in enumerate(parents):
            name = chr(ord("A") + k)
            prompt += f"Principle Set {name}:\n<principles>\n{render_labelled(label(principles), name + '.')}\n</principles>\n\n"
        prompt += "Below are the questions each principle set did best on.\n"
        q = 0
        for k, questions in enumerate(wins):
            prompt += f"\nQuestions that Principle Set {chr(ord('A') + k)} did best on:\n<questions>\n"
            for question in questions:
                prompt += f"Q.{q}: {question.strip()}\n"
                q += 1
            prompt += "</questions>\n"
        prompt += "\n" + CROSSOVER_TASK.format(finish=self._finish(CROSSOVER_FINISH, CROSSOVER_EXAMPLE))
        a_ids = label(parents[0])
        schema = crossover_schema(list(a_ids))
        reply = self._chat_json([prompt], [self._reply_schema(schema, s.crossover_tokens)], s.crossover_tokens, seed, calls)[0]
        child = dict(a_ids)
        n_new = len(a_ids)
        for op in parse_operations(reply, schema, rejected):
            if op["operation"] == "remove":
                child.pop(op["remove_id"].split(".")[-1], None)
                continue
            text = clean_principle(op["principle"], s.max_principle_words, rejected)
            if text is None:
                continue
            if op["operation"] == "add":
                child[f"G{n_new}"] = text
                n_new += 1
            elif op["modified_from"].split(".")[-1] in child:
                child[op["modified_from"].split(".")[-1]] = text
            else:
                rejected["unknown_id"] += 1
        result, reason = validate_principles(list(child.values()), parents[0], s, rejected)
        return MutationResult(result, reason, dict(rejected), tuple(calls), self.constrained)


# ---- the scripted stand-in for tests ---------------------------------------------------------------------


class ScriptedLLM:
    """A scripted fake LLM (not a model): replies come from `script(prompt) -> str`. For tests that must
    drive the mutator with replies a real tiny model cannot be made to produce (fuzzing, exact cases)."""

    name = "scripted-llm"
    tokens_generated = 0  # a script generates no tokens

    def __init__(self, script: Callable[[str], str]):
        self.script = script

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        tools: Sequence[dict[str, Any]] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        return [Completion(message={"role": "assistant", "content": self.script(c[-1]["content"])}) for c in conversations]

    def close(self) -> None:
        pass


class ScriptedMutator(LLMMutator):
    """The LLM mutator's real parsing and validation driven by a scripted fake LLM (tests only)."""

    def __init__(self, script: Callable[[str], str], settings: MutatorSettings = MutatorSettings(constrained=False)):
        super().__init__(ScriptedLLM(script), settings)
