"""Math envs: `espl/Math-v0` (reasoning-gym procedural tasks) and `espl/MathCompetition-v0` (CHAMP problems).

Both are `AnswerCheckedEnv`s, so they share one reward and one attempt rule:

- The env owns the user message: the problem text (reasoning-gym phrases such as "Give only the result as
  your final answer." are removed, since they stop a model from showing its working) followed by
  `answer_format`, by default "Show your working, then end with a line 'Answer: <answer>'." (None: nothing).
- The answer is the last `\\boxed{}`, else the last `Answer:` line, else the last number of the reply
  (envs/answers.py); it is graded with exact numbers, normalised words or math-verify.
- Reward (episodic, on the last step): 1.0 if correct, minus `attempt_penalty` for each extra attempt used
  (never below 0), plus `format_bonus` when the answer came from `Answer:` or `\\boxed{}` (correct or not);
  0.0 + that bonus when the last attempt is wrong. `reward_range` is (0, 1 + format_bonus).
- `max_attempts` (default 1) > 1 makes an episode multi-turn: a wrong or missing answer is answered with
  a feedback user message (it never reveals the gold answer) and another turn, reward 0 on that step.
  After the last wrong attempt the episode terminates with `info["reason"]` "wrong_answer" or
  "no_answer"; `max_turns` equals `max_attempts`, so episodes are never truncated.
- `info` on each step: `answer`, `answer_source` ("boxed", "answer_line", "last_number" or None),
  `grade` ("correct", "wrong_answer", "no_answer"), `grade_detail` (which check decided), `attempt`.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import math
import operator
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, fields
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, ClassVar, Mapping, Sequence

from espl.envs.answers import grade, grade_reply, is_word_answer
from espl.envs.core import MultiTurnEnv, Outcome, Split, Task
from espl.types import Message

DEFAULT_ANSWER_FORMAT = "Show your working, then end with a line 'Answer: <answer>'."

# Phrases of reasoning-gym questions that ask for the bare result (and so for no working), removed from
# the user message. Each removes one sentence.
_BARE_ANSWER_PHRASES = re.compile(
    r"\s*(?:"
    r"(?:give|provide|return|output)\s+(?:only|just)\b[^.\n]*"
    r"|(?:respond|reply|answer)\s+(?:with\s+)?only\b[^.\n]*"
    r"|(?:respond|reply|answer)\s+with\s+(?:just|nothing but)\b[^.\n]*"
    r"|do\s+not\s+(?:include|show|explain|give)\b[^.\n]*"
    r")(?:\.|$)",
    re.IGNORECASE,
)


def strip_bare_answer_phrases(question: str) -> str:
    """The question without sentences like 'Give only the result as your final answer.'"""
    return _BARE_ANSWER_PHRASES.sub("", question).strip()


def _check_float(name: str, value: Any, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        raise ValueError(f"{name}: must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _stable_unit(*parts: object) -> float:
    """A number in [0, 1) from the parts, the same in every process (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# ---- 1. the shared rule: an answer-checked env with attempts and a format bonus --------------------------
class AnswerCheckedEnv(MultiTurnEnv):
    """A single-answer problem env: reward, attempts and format bonus as in this module's doc.

    Subclasses implement `make_task(index) -> Task` with `task.answer` the gold answer string and
    `task.prompt` the problem text (this class appends `answer_format`).
    """

    family: ClassVar[str] = "math"
    default_max_turns: ClassVar[int] = 1

    def __init__(
        self,
        *,
        split: Split = "train",
        answer_format: str | None = DEFAULT_ANSWER_FORMAT,
        format_bonus: float = 0.0,
        max_attempts: int = 1,
        attempt_penalty: float = 0.0,
        render_mode: str | None = None,
    ):
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts: must be an int >= 1, got {max_attempts!r}")
        if answer_format is not None and not isinstance(answer_format, str):
            raise ValueError(f"answer_format: must be a str or None, got {type(answer_format).__name__}")
        super().__init__(split=split, max_turns=max_attempts, render_mode=render_mode)
        self.answer_format = answer_format or None
        self.format_bonus = _check_float("format_bonus", format_bonus, 0.0, 1.0)
        self.attempt_penalty = _check_float("attempt_penalty", attempt_penalty, 0.0, 1.0)
        self.max_attempts = max_attempts
        self.reward_range = (0.0, 1.0 + self.format_bonus)  # type: ignore[misc]  # per instance: depends on the bonus

    def task_messages(self, task: Task) -> list[Message]:
        text = task.prompt if not self.answer_format else f"{task.prompt}\n\n{self.answer_format}"
        return [{"role": "user", "content": text}]

    def evaluate(self, reply: Message, task: Task, turn: int) -> Outcome:
        extraction, verdict = grade_reply(reply.get("content") or "", task.answer)
        bonus = self.format_bonus if extraction.source in ("boxed", "answer_line") else 0.0
        info = {
            "answer": extraction.answer,
            "answer_source": extraction.source,
            "grade": verdict.reason,
            "grade_detail": verdict.detail,
            "attempt": turn,
        }
        high = self.reward_range[1]
        if verdict.correct:
            reward = max(0.0, 1.0 - self.attempt_penalty * (turn - 1)) + bonus
            return Outcome(min(reward, high), "correct", True, info=info)
        if turn >= self.max_attempts:
            return Outcome(min(bonus, high), verdict.reason, True, info=info)
        return Outcome(0.0, verdict.reason, False, messages=(self.feedback(verdict.reason, turn),), info=info)

    def feedback(self, reason: str, turn: int) -> Message:
        """The user message after a wrong or missing answer (never the gold answer)."""
        head = ("That answer is not correct." if reason == "wrong_answer"
                else "I could not find an answer in your reply.")
        left = self.max_attempts - turn
        tail = f" Try again ({left} attempt{'s' if left > 1 else ''} left)."
        if self.answer_format:
            tail += f" {self.answer_format}"
        return {"role": "user", "content": head + tail}


# ---- 2. espl/Math-v0: reasoning-gym procedural tasks -------------------------------------------------
# The default mix: base success ~15-30 % for SmolLM2-135M-Instruct (measured by hand, issue 3).
DEFAULT_TASKS: dict[str, dict[str, Any]] = {
    "products": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    "basic_arithmetic": {
        "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
        "operators": ("+", "-"), "allow_parentheses": False, "allow_negation": False,
    },
    "gcd": {"min_numbers": 2, "max_numbers": 2, "min_value": 1, "max_value": 30},
    "count_bits": {"min_n": 1, "max_n": 64},
}
TEST_FRACTION = 0.2  # share of each task's question texts held out for the test split (by hash)
CHUNK = 500  # reasoning-gym's default dataset size; items are drawn from seeded chunks of this size
MAX_PROBES = 32  # draws per train index before giving up on finding a question outside the test bucket
_ENV_OWNED_FIELDS = ("seed", "size")  # set by the env per chunk
_UNSUPPORTED_TASKS = {"composite": "it mixes tasks itself; list the tasks in `tasks` with `weights` instead"}


@dataclass(frozen=True)
class TaskSource:
    """One reasoning-gym task as the env uses it: its name, dataset class and validated config."""

    name: str
    dataset_cls: type
    config: Any


def _rg_datasets() -> dict[str, tuple[type, type]]:
    from reasoning_gym.factory import DATASETS  # lazy: importing reasoning-gym takes ~2.5 s

    return {name: (ds, cfg) for name, (ds, cfg, *_) in DATASETS.items() if name not in _UNSUPPORTED_TASKS}


def _check_traps(name: str, cfg: Any) -> None:
    """reasoning-gym configs that pass its own validate() but hang or fail later (found by hand, issue 3)."""
    if name == "base_conversion" and cfg.min_base == cfg.max_base:
        raise ValueError(
            f"tasks['base_conversion']: min_base == max_base ({cfg.min_base}) never ends (reasoning-gym "
            "redraws until source and target bases differ); set max_base > min_base"
        )
    if name == "simple_equations" and len(cfg.operators) != len(cfg.operators_weights):
        raise ValueError(
            f"tasks['simple_equations']: operators {tuple(cfg.operators)} need one weight each in "
            f"operators_weights (got {list(cfg.operators_weights)}); give both, with weights summing to 1"
        )


def build_task_sources(tasks: Mapping[str, Any] | Sequence[str] | None) -> tuple[TaskSource, ...]:
    """Validate `tasks` (names, or name -> config overrides on top of DEFAULT_TASKS) into TaskSources."""
    if tasks is None:
        tasks = DEFAULT_TASKS
    if isinstance(tasks, str) or not isinstance(tasks, (Mapping, list, tuple)):
        raise ValueError(f"tasks: must be a dict of task name -> config overrides, or a list of names; "
                         f"got {type(tasks).__name__}")
    items = list(tasks.items()) if isinstance(tasks, Mapping) else [(name, {}) for name in tasks]
    if not items:
        raise ValueError("tasks: must name at least one task")
    known = _rg_datasets()
    sources = []
    for name, overrides in items:
        if name in _UNSUPPORTED_TASKS:
            raise ValueError(f"tasks: {name!r} is not supported: {_UNSUPPORTED_TASKS[name]}")
        if name not in known:
            close = difflib.get_close_matches(str(name), list(known), n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ValueError(f"tasks: unknown task {name!r}{hint}; known: {', '.join(sorted(known))}")
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, Mapping):
            raise ValueError(f"tasks[{name!r}]: must be a dict of config overrides, got {type(overrides).__name__}")
        dataset_cls, config_cls = known[name]
        allowed = [f.name for f in fields(config_cls) if f.name not in _ENV_OWNED_FIELDS]
        for key in overrides:
            if key in _ENV_OWNED_FIELDS:
                raise ValueError(f"tasks[{name!r}].{key}: set by the env (use data_seed to change the data)")
            if key not in allowed:
                raise ValueError(f"tasks[{name!r}]: unknown field {key!r}; allowed: {', '.join(allowed)}")
        cfg = config_cls(**{**DEFAULT_TASKS.get(name, {}), **overrides})
        try:
            cfg.validate()
        except AssertionError as exc:  # reasoning-gym validates configs with assert
            raise ValueError(f"tasks[{name!r}]: {exc}; allowed fields: {', '.join(allowed)}") from None
        _check_traps(name, cfg)
        sources.append(TaskSource(name, dataset_cls, cfg))
    return tuple(sources)


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY: dict[type[ast.unaryop], Callable[[Fraction], Fraction]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def eval_arithmetic(expression: str) -> Fraction:
    """The exact value of + - * / arithmetic on integers, with true precedence (safe: no eval)."""

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        raise ValueError(f"not plain arithmetic: {ast.dump(node)[:80]}")

    return value(ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval"))


def _fraction_text(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _gold_answer(name: str, entry: Mapping[str, Any]) -> str | None:
    """The gold answer of a reasoning-gym item; None when the item is unusable."""
    if name == "basic_arithmetic":
        # reasoning-gym computes allow_parentheses=False expressions left to right (gold of `8 + 2 * 4` is
        # 40); recompute every one with true precedence and exact division.
        try:
            return _fraction_text(eval_arithmetic(entry["metadata"]["expression"]))
        except ZeroDivisionError:
            return None
    return str(entry["answer"])


class MathEnv(AnswerCheckedEnv):
    """Procedural math problems from reasoning-gym (default: products, basic_arithmetic, gcd, count_bits).

    kwargs (besides AnswerCheckedEnv's answer_format, format_bonus, max_attempts, attempt_penalty):
      tasks:     list of reasoning-gym task names, or dict name -> config overrides (applied on top of
                 DEFAULT_TASKS for the default four, else on reasoning-gym's defaults). `seed`/`size` are
                 the env's. Unknown names or fields raise ValueError naming the allowed values.
      weights:   sampling weight per task for the train split (dict name -> weight or a list in task
                 order); default equal. The test split is the whole fixed test list, weights ignored.
      split:     "train" or "test". A question text is in the test split iff a hash of (task, text) falls
                 in the first TEST_FRACTION (20 %) of the range, so the splits never share a question,
                 whatever the configs. The test split is a fixed list per task, at most `test_size`
                 distinct questions drawn with the test seed (fewer when the task has fewer: 1-digit
                 products have 100 questions, so ~20 test ones); tasks are interleaved round robin.
      data_seed: changes which items the train stream and the test list contain (not the split).
    Task ids: "<task>/<split>/<n>" (train: n is the reset seed; test: the position in that task's list).
    """

    description: ClassVar[str] = "Procedural math from reasoning-gym (default: products, +/-, gcd, bit counts)"

    def __init__(
        self,
        *,
        tasks: Mapping[str, Any] | Sequence[str] | None = None,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        split: Split = "train",
        answer_format: str | None = DEFAULT_ANSWER_FORMAT,
        format_bonus: float = 0.0,
        max_attempts: int = 1,
        attempt_penalty: float = 0.0,
        data_seed: int = 0,
        test_size: int = 500,
        render_mode: str | None = None,
    ):
        super().__init__(split=split, answer_format=answer_format, format_bonus=format_bonus,
                         max_attempts=max_attempts, attempt_penalty=attempt_penalty, render_mode=render_mode)
        if isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < 0:
            raise ValueError(f"data_seed: must be an int >= 0, got {data_seed!r}")
        if isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 1:
            raise ValueError(f"test_size: must be an int >= 1, got {test_size!r}")
        self.sources = build_task_sources(tasks)
        self.weights = self._check_weights(weights)
        self.data_seed = data_seed
        self.test_size = test_size
        self._chunks: OrderedDict[tuple[str, str, int], Any] = OrderedDict()
        self._test_list: list[tuple[TaskSource, int, dict[str, Any], int]] | None = None
        if split == "test":
            self._test_list = self._build_test_list()

    # ---- kwargs ----
    def _check_weights(self, weights: Mapping[str, float] | Sequence[float] | None) -> tuple[float, ...]:
        names = [s.name for s in self.sources]
        if weights is None:
            return tuple(1.0 for _ in names)
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValueError(f"weights: unknown tasks {unknown}; the tasks are {names}")
            values = [weights.get(n, 0.0) for n in names]
        elif isinstance(weights, (list, tuple)):
            if len(weights) != len(names):
                raise ValueError(f"weights: need one weight per task {names}, got {len(weights)}")
            values = list(weights)
        else:
            raise ValueError(f"weights: must be a dict task -> weight or a list, got {type(weights).__name__}")
        checked = tuple(_check_float(f"weights[{n!r}]", w, 0.0) for n, w in zip(names, values))
        if not sum(checked) > 0:
            raise ValueError(f"weights: at least one task needs a weight > 0, got {dict(zip(names, checked))}")
        return checked

    # ---- items ----
    def _entry(self, source: TaskSource, split: str, k: int) -> dict[str, Any]:
        """Item k of the task's seeded stream for a split: chunk k // CHUNK, position k % CHUNK."""
        key = (source.name, split, k // CHUNK)
        dataset = self._chunks.get(key)
        if dataset is None:
            seed = int(_stable_unit("espl-math", self.data_seed, *key) * 2**32)
            config = type(source.config)(**{**source.config.__dict__, "seed": seed, "size": CHUNK})
            dataset = source.dataset_cls(config)
            self._chunks[key] = dataset
            if len(self._chunks) > 64:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(key)
        return dataset[k % CHUNK]

    @staticmethod
    def in_test_split(task_name: str, question: str) -> bool:
        """Whether a question text belongs to the test split (a fixed hash; the same for every config)."""
        return _stable_unit("espl-math-split", task_name, question) < TEST_FRACTION

    def _task(self, source: TaskSource, entry: dict[str, Any], task_id: str, k: int, gold: str) -> Task:
        question = entry["question"]
        data = {"task": source.name, "question": question, "item": k}
        if gold != str(entry["answer"]):
            data["reasoning_gym_answer"] = str(entry["answer"])  # kept to show what was corrected
        return Task(id=task_id, prompt=strip_bare_answer_phrases(question), answer=gold, data=data)

    def _build_test_list(self) -> list[tuple[TaskSource, int, dict[str, Any], int]]:
        per_task = []
        for source in self.sources:
            seen: set[str] = set()
            items: list[tuple[TaskSource, int, dict[str, Any], int]] = []
            for k in range(self.test_size * 20):  # tiny question spaces run out long before test_size
                entry = self._entry(source, "test", k)
                q = entry["question"]
                if q in seen or not self.in_test_split(source.name, q) or _gold_answer(source.name, entry) is None:
                    continue
                seen.add(q)
                items.append((source, k, entry, len(items)))
                if len(items) == self.test_size:
                    break
            if not items:
                raise ValueError(f"tasks[{source.name!r}]: no test questions found in {self.test_size * 20} draws; "
                                 "the config's question space is too small to split")
            per_task.append(items)
        # round robin, so the first n test tasks cover every task
        return [lst[i] for i in range(max(map(len, per_task))) for lst in per_task if i < len(lst)]

    @property
    def test_set_size(self) -> int:
        """How many distinct test tasks there are (test split only; reset seeds beyond it wrap around)."""
        if self._test_list is None:
            raise AttributeError("test_set_size: only the test split has a fixed list (split='test')")
        return len(self._test_list)

    def num_tasks(self) -> int | None:
        return len(self._test_list) if self._test_list is not None else None  # train: generated per seed

    def make_task(self, index: int) -> Task:
        if self._test_list is not None:
            source, k, entry, position = self._test_list[index % len(self._test_list)]
            gold = _gold_answer(source.name, entry)
            assert gold is not None  # _build_test_list keeps only entries with a gold answer
            return self._task(source, entry, f"{source.name}/test/{position}", k, gold)
        rng = random.Random(f"espl-math/{self.data_seed}/train/{index}")  # str seeds are stable across runs
        source = rng.choices(self.sources, weights=self.weights)[0]
        for probe in range(MAX_PROBES):
            k = index * MAX_PROBES + probe
            entry = self._entry(source, "train", k)
            gold = _gold_answer(source.name, entry)
            if gold is not None and not self.in_test_split(source.name, entry["question"]):
                return self._task(source, entry, f"{source.name}/train/{index}", k, gold)
        raise RuntimeError(f"tasks[{source.name!r}]: {MAX_PROBES} draws in a row fell in the test split; "
                           "the config's question space is too small to split")


# ---- 3. espl/MathCompetition-v0: CHAMP competition problems -------------------------------------------
CHAMP_DATA = "champ_answers.json"  # envs/data/: the usable CHAMP problems and their cleaned gold answers
CHAMP_TRAIN_FRACTION = 0.7
_MATH_NAMES = frozenset({"sqrt", "floor", "ceil", "sum", "log", "ln", "sin", "cos", "tan", "pi", "exp"})
# Cleaning of CHAMP's answer texts into gold answers: the last of several equivalent forms, without the
# remark in brackets, without the prose around the value.
_CHAMP_PROSE = (
    r"(.+) is the only possible value",
    r"The limit exists and is equal to (.+)",
    r"The only possible value for the limit is (.+)",
    r"(\S+) (?:values?|pairs?|roots?|inequalities|times|numbers?)",
)


def clean_champ_answer(raw: str) -> str:
    """CHAMP's answer text as a gold answer: 'C(10, 5), or equivalently 252' -> '252', '98 values' -> '98'."""
    s = " ".join(raw.split())
    m = re.fullmatch(r"(.+?), or approximately .+", s)  # an approximation is not an equivalent form
    if m:
        s = m.group(1)
    s = re.split(r", or equivalently |, or an equivalent form such as ", s)[-1]
    s = re.sub(r"\s+\((?:i\.e\.|none\b|no\b)[^)]*\)$", "", s)
    for pattern in _CHAMP_PROSE:
        m = re.fullmatch(pattern, s)
        if m:
            s = m.group(1)
            break
    if re.fullmatch(r"[-\d, ]+ and -?\d+", s):  # '1, 4 and 9' -> '1, 4, 9' (a set)
        s = s.replace(" and ", ", ")
    return s.strip()


def champ_gold_is_reliable(gold: str) -> bool:
    """Whether answers to this gold can be checked reliably: Yes/No, or math that math-verify reads whole.

    Math golds must contain no prose, parse, render back with all their numbers and letters (so nothing
    was dropped: math-verify reads '2^floor(n/2)*floor(n/2)!' as 2), and verify against themselves and
    against their own LaTeX rendering.
    """
    if is_word_answer(gold):
        return gold.strip().lower() in ("yes", "no")  # other prose answers have too many correct wordings
    if any(w not in _MATH_NAMES for w in re.findall(r"[A-Za-z]{2,}", gold)):
        return False
    import sympy
    from math_verify import parse

    parsed = [x for x in parse(f"${gold}$", parsing_timeout=None) if not isinstance(x, str)]
    if not parsed:
        return False
    rendering = sympy.latex(parsed[0])

    def tokens(s: str) -> set[str]:
        return set(re.findall(r"[A-Za-z]+|\d+", s.replace(",", "")))

    if tokens(gold) - tokens(rendering) - _MATH_NAMES:
        return False
    return grade(gold, gold).correct and grade(rendering, gold).correct


def build_champ_answers() -> dict[str, Any]:
    """Recompute envs/data/champ_answers.json from the champ-dataset package (takes a few seconds)."""
    import champ_dataset

    problems = champ_dataset.load("v0").problems
    kept = {}
    for pid, problem in problems.items():
        gold = clean_champ_answer(problem.answer)
        if champ_gold_is_reliable(gold):
            kept[pid] = gold
    return {"source": "champ-dataset v0", "total": len(problems), "kept": len(kept), "answers": kept}


@lru_cache(maxsize=1)
def load_champ() -> tuple[tuple[str, str, str], ...]:
    """(problem id, problem text, gold answer) of every usable CHAMP problem, in id order."""
    import champ_dataset

    data = json.loads(resources.files("espl.envs").joinpath("data").joinpath(CHAMP_DATA).read_text("utf-8"))
    problems = champ_dataset.load("v0").problems
    return tuple((pid, problems[pid].text, gold) for pid, gold in sorted(data["answers"].items()))


class MathCompetitionEnv(AnswerCheckedEnv):
    """Competition problems from the CHAMP dataset (champ-dataset package), those with reliably checkable answers.

    Of CHAMP's 270 problems, those whose answer math-verify reads reliably are kept (see
    `champ_gold_is_reliable`; the list is envs/data/champ_answers.json, rebuilt with
    `python -m espl.envs.math`). The split is by a hash of the problem id: ~70 % train, ~30 % test.
    Task ids: "champ/<problem id>"; reset seed n gives problem n mod the split's size (a fixed order).
    Same answer/attempt/format kwargs as MathEnv.
    """

    description: ClassVar[str] = "Competition math (CHAMP), answers checked with math-verify"

    def __init__(
        self,
        *,
        split: Split = "train",
        answer_format: str | None = DEFAULT_ANSWER_FORMAT,
        format_bonus: float = 0.0,
        max_attempts: int = 1,
        attempt_penalty: float = 0.0,
        render_mode: str | None = None,
    ):
        super().__init__(split=split, answer_format=answer_format, format_bonus=format_bonus,
                         max_attempts=max_attempts, attempt_penalty=attempt_penalty, render_mode=render_mode)
        want_train = split == "train"
        problems = [p for p in load_champ()
                    if (_stable_unit("espl-champ-split", p[0]) < CHAMP_TRAIN_FRACTION) == want_train]
        # a fixed shuffle, so consecutive seeds do not walk one category
        self.problems = sorted(problems, key=lambda p: _stable_unit("espl-champ-order", p[0]))

    def num_tasks(self) -> int:
        return len(self.problems)

    def make_task(self, index: int) -> Task:
        pid, text, gold = self.problems[index % len(self.problems)]
        return Task(id=f"champ/{pid}", prompt=text, answer=gold, data={"problem_id": pid})


if __name__ == "__main__":  # python -m espl.envs.math: rebuild envs/data/champ_answers.json
    import pathlib

    out = pathlib.Path(__file__).with_name("data") / CHAMP_DATA
    out.parent.mkdir(exist_ok=True)
    built = build_champ_answers()
    out.write_text(json.dumps(built, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"kept {built['kept']} of {built['total']} CHAMP problems -> {out}")
