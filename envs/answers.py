"""Answer extraction and grading for math envs: pure, typed functions.

    extract_answer("... so 3 * 4 = 12.\\nAnswer: 12")   -> Extraction("12", "answer_line")
    grade("12", "12")                                  -> Grade(True, "correct", "numeric")
    grade_reply(text, gold)                            -> (Extraction, Grade)

Extraction, in priority order (the first that finds something wins):
  1. "boxed":        the last `\\boxed{...}` (or `\\fbox{...}`), nested braces allowed;
  2. "answer_line":  the last line with `Answer:` (any case, `Final answer:`, `**Answer:**` too);
                     an empty `Answer:` line takes the next non-empty line; the format's
                     placeholder copied as is (`Answer: <answer>`) does not count;
  3. "last_number":  the last number in the text: integers, negatives, decimals, fractions like 3/4 and
                     thousands separators (1,234 -> 1234). Small models rarely write an `Answer:` line
                     (measured with SmolLM2-135M, issue 3), so a reward that demands the format is 0
                     everywhere and teaches nothing; the fallback keeps the signal.

Grading, in order:
  - no answer (None, empty)                    -> "no_answer";
  - an answer longer than MAX_ANSWER_CHARS     -> "wrong_answer" (detail "answer_too_long");
  - gold and answer both plain numbers         -> exact comparison as rationals ("numeric"):
                                                  0.5 == 1/2 == 0.50, but 0.33 != 1/3;
  - a word gold ("Yes", "Alice")               -> normalised string comparison ("string"), because
                                                  math-verify reads bare words as products of symbols
                                                  (`yes` == `sey`); "Yes, because ..." counts as "yes";
  - anything else                              -> math-verify ("math_verify"), run in a worker thread
                                                  under our own time limit (its signal-based timeouts
                                                  raise outside the main thread, so they are off). A
                                                  time-out is "wrong_answer" with detail "timeout".
    When the gold is a plain number the answer must be a number too: an unevaluated expression such as
    `3 * 4` or `2+3` is not accepted, so copying the question is never rewarded.
    Numbers too large to evaluate (`10^{10^{10}}`, `(10^8)!`) are "wrong_answer" with detail
    "answer_too_large", checked before sympy would try to build them (a thread cannot be stopped).

A reply that cannot be parsed is an outcome with a reason, never an exception; a bug in this module is
not caught anywhere here (math-verify's own parse failures come back from it as "no parse", which is the
only failure we expect from it).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable, Literal

log = logging.getLogger(__name__)

Source = Literal["boxed", "answer_line", "last_number"]
Reason = Literal["correct", "wrong_answer", "no_answer"]
Detail = Literal[
    "numeric", "string", "math_verify", "no_answer", "answer_too_long", "answer_too_large", "timeout"
]

MAX_ANSWER_CHARS = 1_000  # an extracted answer longer than this is not an answer; never sent to math-verify
MAX_BOX_CHARS = 10_000  # how far a `\boxed{` is followed to find its closing brace
MAX_BOXES_TRIED = 20  # only the last few `\boxed{` of a reply are tried (bounded work on hostile text)
MAX_DIGITS = 10_000  # an answer whose value has more digits than this is "answer_too_large"
DEFAULT_TIMEOUT_S = 5.0  # per grade() call, for the math-verify part


@dataclass(frozen=True)
class Extraction:
    """The answer found in a reply (None when there is none) and where it came from."""

    answer: str | None
    source: Source | None


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer. `detail` says which check decided it (or why it is wrong)."""

    correct: bool
    reason: Reason
    detail: Detail


# ---- 1. extraction -----------------------------------------------------------------------------------
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"\\[{}]|[{}]")
_ANSWER_RE = re.compile(r"\banswer\b[^\S\n]*(?:\*\*|__)?[^\S\n]*[:：]", re.IGNORECASE)
# A number: optional sign (a minus right after a digit, letter or closing bracket is subtraction, not a
# sign), digits with optional thousands separators, optional decimals, optional /denominator.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}])[-−])?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?"
)
_PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[+-]?\.\d+")


def _to_text(text: str | bytes) -> str:
    """Text safe for regexes and sympy: bytes decoded, lone surrogates and bad bytes replaced."""
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _balanced_content(text: str, start: int) -> str | None:
    """The text from `start` up to the brace closing the one just before it, or None if unclosed."""
    depth = 1
    for m in _BRACE_RE.finditer(text, start, min(len(text), start + MAX_BOX_CHARS)):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return text[start:m.start()]
    return None


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    for start in reversed(starts[-MAX_BOXES_TRIED:]):  # a truncated last box falls back to the one before
        content = _balanced_content(text, start)
        if content is not None and content.strip():
            return content.strip()
    return None


def _last_answer_line(text: str) -> str | None:
    last = None
    for m in _ANSWER_RE.finditer(text):
        last = m
    if last is None:
        return None
    line_end = text.find("\n", last.end())
    rest = _strip_wrappers(text[last.end():] if line_end < 0 else text[last.end():line_end])
    if not rest and line_end >= 0:  # "Answer:\n42": the answer is on the next non-empty line
        for line in text[line_end + 1:].split("\n", 4)[:4]:
            rest = _strip_wrappers(line)
            if rest:
                break
    if rest.lower() == "answer":  # the format's placeholder copied as is ("Answer: <answer>"): no answer
        return None
    return rest or None


def _last_number(text: str) -> str | None:
    last = None
    for m in _NUMBER_RE.finditer(text):
        last = m
    if last is None:
        return None
    return last.group().replace("−", "-").replace(",", "")


def _strip_wrappers(s: str) -> str:
    """Markdown/LaTeX wrappers around an answer: `**42**`, `$42$`, `\\(42\\)`, `42.`, `<42>` (the format's brackets)."""
    s = s.strip()
    for _ in range(3):
        before = s
        s = s.strip().strip("*_`").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("<", ">")):
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                s = s[len(left):len(s) - len(right)].strip()
        s = s.rstrip(".").rstrip()
        if s == before:
            break
    return s


def extract_answer(text: str | bytes) -> Extraction:
    """The answer of a reply: last `\\boxed{}`, else last `Answer:` line, else last number (see module doc)."""
    text = _to_text(text)
    for source, find in _EXTRACTORS:
        answer = find(text)
        if answer:
            return Extraction(answer, source)
    return Extraction(None, None)


_EXTRACTORS: tuple[tuple[Source, Callable[[str], str | None]], ...] = (
    ("boxed", _last_boxed),
    ("answer_line", _last_answer_line),
    ("last_number", _last_number),
)


# ---- 2. grading --------------------------------------------------------------------------------------
_MATH_WORDS = frozenset(
    "sqrt sin cos tan cot sec csc log ln exp pi inf infty floor ceil sum prod lim min max gcd lcm mod frac".split()
)
_WORD_GOLD_RE = re.compile(r"[^\W\d_]+(?:[ '\-][^\W\d_]+)*")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_CLAUSE_RE = re.compile(r"[,.;:!?(]| - | because ")


def _plain_number(s: str) -> Fraction | None:
    """The exact value of a plain number string ('-1,234.5', '3/4', '.5'), else None."""
    s = _strip_wrappers(s).replace("−", "-")
    if not _PLAIN_NUMBER_RE.fullmatch(s):
        return None
    s = s.replace(",", "")
    if len(s) > 4_000:  # Python refuses int() of longer digit strings; such a number is not an answer
        return None
    num, _, den = s.partition("/")
    if den and int(den) == 0:
        return None
    return Fraction(num) / (Fraction(den) if den else 1)


def _normalise_words(s: str) -> str:
    s = _TEXT_CMD_RE.sub(r"\1", _strip_wrappers(s))
    s = s.replace("\\", " ").replace("$", " ").replace('"', " ").replace("*", " ")
    return " ".join(s.lower().split()).strip(" .!'")


def is_word_answer(gold: str) -> bool:
    """True for golds like 'Yes', 'Alice', 'No solution': words, not math (a lone letter 'x' is math)."""
    norm = _normalise_words(gold)
    if not _WORD_GOLD_RE.fullmatch(norm):
        return False
    return any(len(tok) >= 2 and tok not in _MATH_WORDS for tok in re.split(r"[ '\-]", norm))


def _words_match(predicted: str, gold: str) -> bool:
    want, got = _normalise_words(gold), _normalise_words(predicted)
    first_clause = _CLAUSE_RE.split(got, 1)[0].strip()
    return got == want or first_clause == want


def grade(predicted: str | bytes | None, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Grade:
    """Is `predicted` (an extracted answer) equivalent to `gold`? See the module doc for the order of checks."""
    if predicted is None:
        return Grade(False, "no_answer", "no_answer")
    predicted = _to_text(predicted).strip()
    if not predicted:
        return Grade(False, "no_answer", "no_answer")
    if len(predicted) > MAX_ANSWER_CHARS:
        return Grade(False, "wrong_answer", "answer_too_long")
    gold_value = _plain_number(gold)
    pred_value = _plain_number(predicted)
    if gold_value is not None and pred_value is not None:
        return _verdict(gold_value == pred_value, "numeric")
    if is_word_answer(gold):
        return _verdict(_words_match(predicted, gold), "string")
    result = _run_with_timeout(lambda: _math_verify_equal(predicted, gold, gold_value is not None), timeout_s)
    if result is _TIMED_OUT:
        return Grade(False, "wrong_answer", "timeout")
    if result == "too_large":
        return Grade(False, "wrong_answer", "answer_too_large")
    return _verdict(bool(result), "math_verify")


def grade_reply(text: str | bytes, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[Extraction, Grade]:
    """Extract the answer of a whole reply and grade it."""
    extraction = extract_answer(text)
    return extraction, grade(extraction.answer, gold, timeout_s=timeout_s)


def _verdict(ok: bool, detail: Detail) -> Grade:
    return Grade(ok, "correct" if ok else "wrong_answer", detail)


# ---- 3. math-verify under our own time limit -----------------------------------------------------------
_TIMED_OUT = object()
_abandoned_threads = 0


def _run_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    """fn() in a daemon thread; _TIMED_OUT if it has not finished in time. Its exceptions re-raise here.

    A Python thread cannot be stopped, so a timed-out computation keeps running in the background; the
    size guard (`_too_large`) keeps the known runaway cases from starting, and we log each abandoned one.
    """
    global _abandoned_threads
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below, not swallowed
            box["error"] = exc

    thread = threading.Thread(target=target, name="espl-math-verify", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _abandoned_threads += 1
        log.warning("math-verify did not finish in %.1fs; graded wrong_answer/timeout (%d such threads still "
                    "running in the background)", timeout_s, _abandoned_threads)
        return _TIMED_OUT
    if "error" in box:
        raise box["error"]
    return box["value"]


class _QuietTimeoutWarning(logging.Filter):
    # math-verify warns once that its timeouts are off; they are off on purpose (we enforce our own).
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_quiet = _QuietTimeoutWarning()
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_quiet)


def _mv_parse(s: str) -> list:
    """math-verify's reading of an answer: the whole string as LaTeX math first, then its own extraction."""
    from math_verify import parse  # lazy: sympy is slow to import

    found: list = []
    for text in (f"${s}$", s):
        found.extend(x for x in parse(text, parsing_timeout=None) if not isinstance(x, str))
    return found


@lru_cache(maxsize=4096)
def _mv_gold(gold: str) -> tuple:
    from math_verify import parse

    parsed = [x for x in parse(f"${gold}$", parsing_timeout=None) if not isinstance(x, str)]
    return tuple(parsed or [x for x in parse(gold, parsing_timeout=None) if not isinstance(x, str)])


def _math_verify_equal(predicted: str, gold: str, numeric_gold: bool) -> bool | str:
    from math_verify import verify

    golds = list(_mv_gold(gold))
    if not golds:
        raise ValueError(f"gold answer {gold!r} cannot be read by math-verify; the task data is broken")
    candidates = _mv_parse(predicted)
    if any(_too_large(c) for c in candidates):
        return "too_large"
    if numeric_gold:  # a number is wanted: `3 * 4` must not pass for 12
        candidates = [c for c in candidates if _is_number_literal(c)]
    return bool(candidates) and verify(golds, candidates, timeout_seconds=None)


def _is_number_literal(expr: Any) -> bool:
    """A number as written: 12, -3/4, 0.75, 50% (Mul(50, 1/100)), or `x = 12`."""
    import sympy

    if isinstance(expr, sympy.Eq):
        return isinstance(expr.lhs, sympy.Symbol) and _is_number_literal(expr.rhs)
    if isinstance(expr, sympy.Number):
        return True
    if isinstance(expr, sympy.Mul):  # an unevaluated fraction p * q**-1 or a percent p * (1/100), signed
        args = [a for a in expr.args if a != -1]
        if len(expr.args) - len(args) > 1 or len(args) != 2:
            return False
        numerator, other = args
        return isinstance(numerator, sympy.Integer) and (
            (isinstance(other, sympy.Pow) and isinstance(other.base, sympy.Integer) and other.exp == -1)
            or (isinstance(other, sympy.UnevaluatedExpr) and other.args[0] == sympy.Rational(1, 100))
        )
    return False


def _too_large(expr: Any) -> bool:
    """True if evaluating `expr` would build a number of more than MAX_DIGITS digits."""
    try:
        return _log10_bound(expr) > MAX_DIGITS
    except RecursionError:  # a pathologically deep expression is too large to handle
        return True


def _log10_bound(expr: Any) -> float:
    """An upper bound on log10 |value| of the numeric parts of `expr` (symbols count as 1)."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return 0.0
    if isinstance(expr, sympy.Integer):
        return (abs(int(expr.p)).bit_length() + 1) * math.log10(2)
    if isinstance(expr, sympy.Rational):
        return max(_log10_bound(sympy.Integer(expr.p)), _log10_bound(sympy.Integer(expr.q)))
    if isinstance(expr, sympy.Float):
        value = abs(float(expr))
        return math.log10(value + 1) if math.isfinite(value) else math.inf
    if not expr.args:
        return 0.0
    bounds = [_log10_bound(a) for a in expr.args]
    if isinstance(expr, sympy.Pow):
        base, exp = bounds
        return math.inf if exp > 15 else (10.0**exp) * max(base, 1.0)
    if isinstance(expr, _growth_functions()):  # factorial(n) and kin grow at most like n**n
        top = max(bounds)
        return math.inf if top > 15 else (10.0**top) * (top + 1.0)
    if isinstance(expr, sympy.Mul):
        return sum(bounds)
    return max(bounds) + 1.0  # sums, sets, tuples, relations: no bigger than their largest part, about


@lru_cache(maxsize=1)
def _growth_functions() -> tuple[type, ...]:
    import sympy

    return (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.binomial, sympy.gamma,
            sympy.RisingFactorial, sympy.FallingFactorial)

