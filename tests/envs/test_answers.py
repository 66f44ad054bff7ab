"""Answer extraction and grading (envs/answers.py): table-driven cases, hostile replies, time limit."""

from __future__ import annotations

import threading
import time

import pytest

from espl.envs import answers
from espl.envs.answers import Extraction, Grade, extract_answer, grade, grade_reply

# ---- extraction: (reply, expected answer, expected source) ----
EXTRACTION = [
    ("The answer is 12.", "12", "last_number"),
    ("3 * 4 = 12\nAnswer: 12", "12", "answer_line"),
    ("answer: 7\nANSWER: 8", "8", "answer_line"),
    ("**Answer:** $-5$", "-5", "answer_line"),
    ("Final answer:\n\n 42", "42", "answer_line"),
    ("Answer: \\(\\frac{3}{4}\\).", "\\frac{3}{4}", "answer_line"),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "boxed"),
    ("\\boxed{\\frac{\\sqrt{3}}{3}}", "\\frac{\\sqrt{3}}{3}", "boxed"),
    ("Answer: 5, but formally $\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}", "boxed"),
    ("\\boxed{7} and a cut-off \\boxed{\\frac{1}{", "7", "boxed"),
    ("\\fbox{9}", "9", "boxed"),
    ("Answer: <42>", "42", "answer_line"),
    ("3 * 4 = 12\nAnswer: <answer>", "12", "last_number"),
    ("10-3 = 7", "7", "last_number"),
    ("It is -3.", "-3", "last_number"),
    ("x = −4", "-4", "last_number"),
    ("we get 1,234 apples", "1234", "last_number"),
    ("so x = 3/4", "3/4", "last_number"),
    ("pi is about 3.14.", "3.14", "last_number"),
    ("1,2,3", "3", "last_number"),
    ("I do not know.", None, None),
    ("", None, None),
    ("\\boxed{}", None, None),
]


@pytest.mark.parametrize("reply,answer,source", EXTRACTION)
def test_extract_answer(reply, answer, source):
    assert extract_answer(reply) == Extraction(answer, source)


# ---- grading: (predicted, gold, correct, reason) ----
GRADING = [
    # integers and negatives
    ("12", "12", True, "correct"),
    ("13", "12", False, "wrong_answer"),
    ("-3", "-3", True, "correct"),
    ("−3", "-3", True, "correct"),
    ("3", "-3", False, "wrong_answer"),
    ("1,234", "1234", True, "correct"),
    ("007", "7", True, "correct"),
    ("1 2", "12", False, "wrong_answer"),
    # decimals and fractions
    ("12.0", "12", True, "correct"),
    ("0.5", "1/2", True, "correct"),
    ("1/2", "0.5", True, "correct"),
    ("2/4", "1/2", True, "correct"),
    ("0.75", "3/4", True, "correct"),
    # wrong but close
    ("0.33", "1/3", False, "wrong_answer"),
    ("0.333333", "1/3", False, "wrong_answer"),
    ("12.01", "12", False, "wrong_answer"),
    ("3/5", "3/4", False, "wrong_answer"),
    # LaTeX
    ("\\frac{3}{4}", "3/4", True, "correct"),
    ("\\frac{3}{4}", "0.75", True, "correct"),
    ("-\\frac{1}{2}", "-1/2", True, "correct"),
    ("\\frac{1}{\\sqrt{3}}", "sqrt(3)/3", True, "correct"),
    ("\\frac{\\sqrt{3}}{3}", "1/sqrt(3)", True, "correct"),
    ("\\sqrt{2}", "sqrt(3)", False, "wrong_answer"),
    ("2^{n-1}", "2^(n-1)", True, "correct"),
    ("\\frac{n(n-3)}{2}", "n(n-3)/2", True, "correct"),
    ("2^{n}", "2^(n-1)", False, "wrong_answer"),
    ("$42$", "42", True, "correct"),
    ("x = 12", "12", True, "correct"),
    ("50\\%", "0.5", True, "correct"),
    # an unevaluated expression is not a number: copying the question never pays
    ("3 \\cdot 4", "12", False, "wrong_answer"),
    ("2+3", "5", False, "wrong_answer"),
    # sets, tuples, intervals, systems
    ("\\{2, 1\\}", "\\{1, 2\\}", True, "correct"),
    ("\\{1, 3\\}", "\\{1, 2\\}", False, "wrong_answer"),
    ("1, 19", "1, 19", True, "correct"),
    ("625, 376", "376, 625", True, "correct"),
    ("376 and 625", "376, 625", True, "correct"),
    ("625", "376, 625", False, "wrong_answer"),
    ("376, 625", "376625", False, "wrong_answer"),
    ("(1, 2)", "(1, 2)", True, "correct"),
    ("[-1, 1]", "[-1, 1]", True, "correct"),
    ("[-1, 2]", "[-1, 1]", False, "wrong_answer"),
    ("x=6, y=5", "x=6, y=5", True, "correct"),
    ("x=5, y=6", "x=6, y=5", False, "wrong_answer"),
    # words: math-verify would read `yes` as y*e*s
    ("yes", "Yes", True, "correct"),
    ("sey", "yes", False, "wrong_answer"),
    ("No", "yes", False, "wrong_answer"),
    ("Yes, because 2 divides it", "Yes", True, "correct"),
    ("\\text{Alice}", "Alice", True, "correct"),
    ("Bob", "Alice", False, "wrong_answer"),
    # garbage and empty
    ("garbage !!", "5", False, "wrong_answer"),
    ("}{)(\\frac{", "5", False, "wrong_answer"),
    ("", "5", False, "no_answer"),
    ("   ", "5", False, "no_answer"),
    (None, "5", False, "no_answer"),
    # too large to evaluate, too long to read
    ("10^{10^{10}}", "5", False, "wrong_answer"),
    ("(10^{8})!", "5", False, "wrong_answer"),
    ("9" * 5000, "5", False, "wrong_answer"),
    # bad bytes / lone surrogates
    ("\ud800 5", "5", True, "correct"),
    (b"\xff\xfe 7", "7", True, "correct"),
]


@pytest.mark.parametrize("predicted,gold,correct,reason", GRADING)
def test_grade(predicted, gold, correct, reason):
    result = grade(predicted, gold)
    assert (result.correct, result.reason) == (correct, reason), result


def test_there_are_at_least_40_cases():
    assert len(GRADING) + len(EXTRACTION) >= 60 and len(GRADING) >= 40


@pytest.mark.parametrize("predicted,detail", [
    ("12", "numeric"), ("yes", "string"), ("\\frac{24}{2}", "math_verify"),
    ("10^{10^{10}}", "answer_too_large"), ("1" * 2000, "answer_too_long"), (None, "no_answer"),
])
def test_grade_detail_says_which_check_decided(predicted, detail):
    assert grade(predicted, "12" if detail != "string" else "yes").detail == detail


# ---- whole replies, hostile ones included ----
REPLIES = [
    ("Let me think. 3 * 4 is 12. Answer: 12", "12", True, "correct", "answer_line"),
    ("3 * 4 = 12", "12", True, "correct", "last_number"),
    ("The result is \\boxed{12}. Earlier I wrote 13.", "12", True, "correct", "boxed"),
    ("I have no idea", "12", False, "no_answer", None),
    ("Answer: yes", "Yes", True, "correct", "answer_line"),
    ("Answer: sey", "Yes", False, "wrong_answer", "answer_line"),
]


@pytest.mark.parametrize("reply,gold,correct,reason,source", REPLIES)
def test_grade_reply(reply, gold, correct, reason, source):
    extraction, result = grade_reply(reply, gold)
    assert extraction.source == source
    assert (result.correct, result.reason) == (correct, reason)


@pytest.mark.parametrize("reply", [
    "x" * 1_000_000,
    "1" * 1_000_000,
    "\\boxed{" * 100_000,
    "Answer: " * 100_000,
    "-" * 1_000_000,
    "1," * 500_000,
    "{" * 500_000 + "}" * 500_000,
    "\udcff" * 200_000 + " 5",
])
def test_megabyte_replies_are_scored_quickly(reply):
    start = time.perf_counter()
    extraction, result = grade_reply(reply, "5")
    assert isinstance(result, Grade) and result.reason in ("correct", "wrong_answer", "no_answer")
    assert time.perf_counter() - start < 10  # generous: a shared CI core; typical runs take ~0.1 s


def test_last_number_of_a_megabyte_reply():
    extraction, result = grade_reply("blah " * 200_000 + "so 7", "7")
    assert extraction == Extraction("7", "last_number") and result.correct


def test_math_verify_runs_in_worker_threads():
    # math-verify's own signal-based timeouts raise outside the main thread; ours must not
    results = []
    threads = [threading.Thread(target=lambda: results.append(grade("\\frac{6}{2}", "3"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.correct for r in results] == [True] * 4


def test_timeout_is_a_wrong_answer(monkeypatch):
    stop = threading.Event()

    def slow(*args, **kwargs):
        stop.wait(5)  # a verify that does not finish in time
        return True

    monkeypatch.setattr(answers, "_math_verify_equal", slow)
    try:
        start = time.perf_counter()
        result = grade("\\frac{24}{2}", "12", timeout_s=0.2)
        assert result == Grade(False, "wrong_answer", "timeout")
        assert time.perf_counter() - start < 2
    finally:
        stop.set()


def test_a_bug_in_grading_is_not_swallowed(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(answers, "_math_verify_equal", broken)
    with pytest.raises(KeyError):
        grade("\\frac{24}{2}", "12")


def test_unreadable_gold_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="gold answer"):
        grade("\\frac{1}{2}", "}{")


@pytest.mark.parametrize("gold,expected", [
    ("Yes", True), ("no", True), ("Alice", True), ("No solution", True),
    ("x", False), ("12", False), ("sqrt(2)", False), ("n!", False), ("\\pi", False),
])
def test_is_word_answer(gold, expected):
    assert answers.is_word_answer(gold) is expected
