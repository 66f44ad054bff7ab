"""`espl/Premise-v0`: conversions between two invented units whose factor is a seeded fact (issue 16).

The test of E-SPL's premise (../shared/ESPL_SPEC.md): a system prompt can carry declarative knowledge that
the weights lack. Every task asks to convert a quantity of one invented unit into another ("A sack holds 6
zorbs of rice. How many gliks of rice are in the sack?"). The answer is quantity x factor, where the factor
is a fixed fact of the env config, drawn from `rule_seed`: one sentence states it ("1 zorb is exactly 7
gliks."), nothing in a task reveals it, so a model that is not told must guess, and RL on the weights can
only find it by trial. The arithmetic is one small product, so a 0.5B model that is told the rule gets most
tasks right; told another seed's rule (a wrong principle) it answers with the wrong factor.

    env = gym.make("espl/Premise-v0", rule_seed=3, split="test")
    env.unwrapped.rule_text()        # the correct one-sentence principle, e.g. "1 zorb is exactly 4 gliks."
    env.unwrapped.wrong_rule_text()  # the rule of the next seed with another factor (the wrong principle)
    obs, info = env.reset(seed=0, options={"system_prompt": env.unwrapped.rule_text()})

- kwargs: `rule_seed` (int >= 0; which factor, see FACTORS), `units` (the source and target unit names,
  default ("zorb", "glik"); plurals add "s"), `max_quantity` (quantities are 2..max_quantity, default 12),
  `answer_format` (appended to each task, `{source}`/`{target}` replaced by the unit names; None: nothing;
  the default asks for one line '<zorbs> zorbs x <gliks per zorb> = <total> gliks'), `split`.
- Tasks: every distinct text of TEMPLATES x ITEMS x NAMES x quantities. A text is in the test split iff its
  SHA-256 is 0 mod TEST_MODULUS, so train and test never share a task; each split is a fixed list,
  templates interleaved round robin (so the first tasks mix every template), and reset seed n is task n mod
  the list's length. The texts do not depend on `rule_seed`, only the answers do. Task ids:
  "premise/<split>/<n mod length>".
- Reward: 1.0 when the answer is quantity x factor, else 0.0 (single turn). The answer is read by
  `grade_conversion`: the last `\\boxed{}`, else `Answer:` line, else last number of the reply
  (envs/answers.py's `extract_answer`), and of that the last number ("42 gliks", "6 zorbs = 42 gliks" -> 42),
  compared exactly. `info["reason"]`: "correct", "wrong_answer" or "no_answer" (no number anywhere);
  `info` also has `answer`, `answer_source` and `quantity`. A reply is scored, never an exception.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import ClassVar, Literal, Sequence

from espl.envs.answers import Source, extract_answer
from espl.envs.core import MultiTurnEnv, Outcome, Split, Task
from espl.types import Message

# One small factor: the product stays one-digit x small-number arithmetic a 0.5B model does reliably. 10 is
# left out: it is the factor a model guesses for metric-looking units, so it would not need the rule.
FACTORS: tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9)
DEFAULT_UNITS = ("zorb", "glik")
DEFAULT_MAX_QUANTITY = 12
# The env states the procedure (multiply by the target units per source unit), so the one thing a model lacks is
# the fact. Measured with Qwen2.5-Coder-0.5B and the correct rule (issue 16): "Show your working, then
# 'Answer: <number>'" gave long replies that ran past 96 tokens and quoted the factor last (1 of 20 correct); a
# bare "Answer: <number>" 3 of 10 (answers such as 2.7 for 7 zorbs); this one line 9 of 10, then 85 of 100
# (docs/envs.md, benchmarks/premise_bounds.py).
DEFAULT_ANSWER_FORMAT = "Reply with one line: '<{source}s> {source}s x <{target}s per {source}> = <total> {target}s'."
TEST_MODULUS = 5  # one task text in five (by SHA-256) is a test task, as in espl/ToolMath-v0
_RULE_SALT = "espl-premise-rule-v0"  # part of the env's version: changing it changes every seed's factor

# {n} quantity, {src}/{tgt} the plural unit names, {item} a substance, {name} a person. No template states or
# hints at the factor (a test checks that no task text contains the rule).
TEMPLATES: tuple[str, ...] = (
    "How many {tgt} are {n} {src}?",
    "Convert {n} {src} into {tgt}.",
    "{name} has {n} {src} of {item}. How many {tgt} of {item} does {name} have?",
    "A sack holds {n} {src} of {item}. How many {tgt} of {item} are in the sack?",
    "A recipe needs {n} {src} of {item}. How many {tgt} of {item} is that?",
    "{name} buys {n} {src} of {item} at the market. What is that amount in {tgt}?",
    "A shelf holds {n} {src} of {item}. Express this amount in {tgt}.",
    "{name} measured {n} {src} of {item}. How many {tgt} is that?",
)
ITEMS = ("rice", "sand", "flour", "salt", "wool", "copper")
NAMES = ("Mia", "Ravi", "Lena", "Tom", "Ada", "Kofi")

MAX_NUMBER_CHARS = 40  # a longer number is a wrong answer, never converted (golds have at most 4 digits)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_UNIT_NAME = re.compile(r"[a-z]{2,20}")
GradeReason = Literal["correct", "wrong_answer", "no_answer"]


# ---- 1. the rule: one seeded fact per env config --------------------------------------------------------
@dataclass(frozen=True)
class PremiseRule:
    """The fact of one config: 1 `source` = `factor` `target`s."""

    seed: int
    factor: int
    source: str
    target: str

    @property
    def text(self) -> str:
        """The one-sentence principle that states the rule."""
        return f"1 {self.source} is exactly {self.factor} {self.target}s."

    def convert(self, quantity: int) -> int:
        return quantity * self.factor


def _digest(*parts: object) -> int:
    """A big integer from the parts, the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()[:8], "big")


def _check_seed(name: str, seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{name}: must be an int >= 0, got {seed!r}")
    return seed


def premise_rule(seed: int, units: Sequence[str] = DEFAULT_UNITS) -> PremiseRule:
    """The rule of `rule_seed=seed`: its factor is FACTORS[sha256(salt, seed) mod len(FACTORS)]."""
    _check_seed("rule_seed", seed)
    source, target = _check_units(units)
    return PremiseRule(seed, FACTORS[_digest(_RULE_SALT, seed) % len(FACTORS)], source, target)


def wrong_rule_seed(seed: int) -> int:
    """The first seed after `seed` whose factor differs: its rule is the wrong principle for `seed`."""
    factor = premise_rule(seed).factor
    other = seed + 1
    while premise_rule(other).factor == factor:  # ends: the seeds' factors are spread over all of FACTORS
        other += 1
    return other


def _check_units(units: Sequence[str]) -> tuple[str, str]:
    if isinstance(units, str) or not isinstance(units, (list, tuple)) or len(units) != 2:
        raise ValueError(f"units: must be two unit names (source, target), e.g. ('zorb', 'glik'); got {units!r}")
    source, target = units
    for name in (source, target):
        if not isinstance(name, str) or not _UNIT_NAME.fullmatch(name):
            raise ValueError(f"units: each name must be 2-20 lowercase letters (the plural adds 's'), got {name!r}")
    if source == target:
        raise ValueError(f"units: the source and target units must differ, got {source!r} twice")
    return source, target


# ---- 2. the checker: pure, never raises on a reply ------------------------------------------------------
@dataclass(frozen=True)
class ConversionGrade:
    """The verdict on one reply: the number read (None: none), where it came from, and the reason."""

    answer: str | None
    source: Source | None
    reason: GradeReason

    @property
    def correct(self) -> bool:
        return self.reason == "correct"


def grade_conversion(text: str, gold: int) -> ConversionGrade:
    """Grade a reply against the gold number (see the module doc for which number is read)."""
    extraction = extract_answer(text)
    if extraction.answer is None:
        return ConversionGrade(None, None, "no_answer")
    numbers = _NUMBER.findall(extraction.answer)
    if not numbers:  # "Answer: I need the conversion factor": an answer line without a number
        return ConversionGrade(extraction.answer, extraction.source, "no_answer")
    number = numbers[-1].replace(",", "")
    if len(number) > MAX_NUMBER_CHARS:  # Python refuses int() of > 4300 digits; no gold is that long anyway
        return ConversionGrade(number[:MAX_NUMBER_CHARS] + "...", extraction.source, "wrong_answer")
    reason: GradeReason = "correct" if Fraction(number) == gold else "wrong_answer"
    return ConversionGrade(number, extraction.source, reason)


def _format_answer_format(template: str, units: tuple[str, str]) -> str:
    try:
        return template.format(source=units[0], target=units[1])
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"answer_format: only {{source}} and {{target}} may be replaced (write other braces as "
                         f"{{{{ }}}}), got {template!r} ({type(exc).__name__}: {exc})") from None


# ---- 3. the tasks: a fixed list per split ---------------------------------------------------------------
def _render(template: str, n: int, units: tuple[str, str], item: str, name: str) -> str:
    return template.format(n=n, src=units[0] + "s", tgt=units[1] + "s", item=item, name=name)


@lru_cache(maxsize=16)
def task_list(split: Split, units: tuple[str, str], max_quantity: int) -> tuple[tuple[str, int, int], ...]:
    """(text, quantity, template index) of every task of `split`, templates interleaved round robin, each in
    a fixed order."""
    per_template = []
    for k, template in enumerate(TEMPLATES):
        texts: dict[str, int] = {}
        for n, item, name in itertools.product(range(2, max_quantity + 1), ITEMS, NAMES):
            texts.setdefault(_render(template, n, units, item, name), n)  # templates without {item} repeat
        chosen = [(t, n, k) for t, n in texts.items()
                  if (_digest("espl-premise-split", t) % TEST_MODULUS == 0) == (split == "test")]
        per_template.append(sorted(chosen, key=lambda tn: _digest("espl-premise-order", tn[0])))
    longest = max(map(len, per_template))
    return tuple(lst[i] for i in range(longest) for lst in per_template if i < len(lst))


class PremiseEnv(MultiTurnEnv):
    """Convert invented units whose factor is a seeded fact (`rule_seed`); the module doc has the details."""

    family: ClassVar[str] = "premise"
    description: ClassVar[str] = "Invented-unit conversions whose factor is a seeded fact (E-SPL premise test)"
    default_max_turns: ClassVar[int] = 1

    def __init__(
        self,
        *,
        split: Split = "train",
        rule_seed: int = 0,
        units: Sequence[str] = DEFAULT_UNITS,
        max_quantity: int = DEFAULT_MAX_QUANTITY,
        answer_format: str | None = DEFAULT_ANSWER_FORMAT,
        render_mode: str | None = None,
    ):
        super().__init__(split=split, max_turns=1, render_mode=render_mode)
        if isinstance(max_quantity, bool) or not isinstance(max_quantity, int) or not 3 <= max_quantity <= 99:
            raise ValueError(f"max_quantity: must be an int in [3, 99] (quantities run 2..max_quantity), "
                             f"got {max_quantity!r}")
        if answer_format is not None and not isinstance(answer_format, str):
            raise ValueError(f"answer_format: must be a str or None, got {type(answer_format).__name__}")
        self.units = _check_units(units)
        self.rule = premise_rule(rule_seed, self.units)
        self.max_quantity = max_quantity
        self.answer_format = _format_answer_format(answer_format, self.units) if answer_format else None
        self.tasks = task_list(split, self.units, max_quantity)

    # ---- the principles a benchmark or test builds its bounds from ------------------------------------
    def rule_text(self, seed: int | None = None) -> str:
        """The rule sentence of `seed` (default: this env's `rule_seed`, the correct principle) in its units."""
        return premise_rule(self.rule.seed if seed is None else seed, self.units).text

    def wrong_rule_text(self) -> str:
        """The rule of the next seed with another factor: a principle that is confidently wrong for this env."""
        return self.rule_text(wrong_rule_seed(self.rule.seed))

    # ---- MultiTurnEnv ----------------------------------------------------------------------------------
    def num_tasks(self) -> int:
        return len(self.tasks)

    def make_task(self, index: int) -> Task:
        position = index % len(self.tasks)
        text, quantity, template = self.tasks[position]
        return Task(id=f"premise/{self.split}/{position}", prompt=text, answer=self.rule.convert(quantity),
                    data={"quantity": quantity, "template": template})

    def task_messages(self, task: Task) -> list[Message]:
        text = task.prompt if not self.answer_format else f"{task.prompt}\n\n{self.answer_format}"
        return [{"role": "user", "content": text}]

    def evaluate(self, reply: Message, task: Task, turn: int) -> Outcome:
        verdict = grade_conversion(reply.get("content") or "", task.answer)
        info = {"answer": verdict.answer, "answer_source": verdict.source, "quantity": task.data["quantity"]}
        return Outcome(1.0 if verdict.correct else 0.0, verdict.reason, True, info=info)
