"""`espl/ToolMath-v0`: arithmetic a small model cannot do in its head, with a calculator (and Python) tool.

Tasks are reasoning-gym problems where exact arithmetic is the hard part: products of 3-4 digit numbers,
products of three 2-digit numbers, and 3-5 term expressions with precedence and negative numbers. Tools:

- `calculator(expression)`: evaluates arithmetic with a whitelist walk over Python's AST (numbers,
  + - * / // % **, `^` as power, parentheses, abs/round/sqrt/floor/ceil/min/max/log/exp); no `eval`, with
  limits on length, size of powers and of results. An expression that is already a number is an error that
  says to answer (a small model fed its own result back to it until the turns ran out).
- `python(code)`: runs code in the Docker sandbox (`espl.sandboxes.python_tool.run_python`) and returns its
  output. Offered only when the sandbox is available (`python_tool="auto"`, the default; a log line says
  when it is left out); `python_tool="on"` makes a missing sandbox an error, `"off"` never offers it.
  A sandbox failure during an episode (`SandboxError`) raises from `step` instead of being scored.

The final reply (the first without a tool call) is graded with envs/answers.py (`grade_reply`: the last
`\\boxed{}`, else `Answer:` line, else last number; compared exactly as a number). Splits: a problem belongs
to the test split when the SHA-256 of its text is 0 mod 5, so train and test never share a problem.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import logging
import math
import operator
from functools import lru_cache
from typing import Any, Callable, ClassVar, Literal, Sequence

from espl.envs.answers import grade_reply
from espl.envs.core import Split, Task
from espl.envs.tool_env import ToolEnv

log = logging.getLogger(__name__)

PythonTool = Literal["auto", "on", "off"]

# (reasoning-gym dataset, its config): exact arithmetic a 135M model gets wrong without a tool
GENERATORS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("products", {"min_terms": 2, "max_terms": 2, "min_digits": 3, "max_digits": 4}),
    ("products", {"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2}),
    ("basic_arithmetic", {"min_terms": 3, "max_terms": 5, "min_digits": 2, "max_digits": 3}),
)
GENERATOR_SEED = 20_240  # fixed: the task set is part of the env's version (v0)
TEST_MODULUS = 5  # one problem in five (by text hash) is a test problem

PROMPT = (
    "{question}\n\nUse the tools to compute the result exactly. When you have it, reply without a tool call "
    "and end with the line 'Answer: <number>'."
)


# ---- the calculator (pure, unit-tested) -----------------------------------------------------------------
MAX_EXPRESSION_CHARS = 500
MAX_NODES = 200
MAX_RESULT_DIGITS = 1000


class CalculatorError(ValueError):
    """An expression the calculator will not evaluate; the message says why, for the model."""


def _pow(base: Any, exp: Any) -> Any:
    if isinstance(exp, (int, float)) and abs(exp) > 10_000:
        raise CalculatorError("exponent too large (limit 10000)")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and base not in (0, 1, -1):
        if exp * math.log10(abs(base)) > MAX_RESULT_DIGITS:
            raise CalculatorError(f"result too large (more than {MAX_RESULT_DIGITS} digits)")
    return operator.pow(base, exp)


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _pow,
    ast.BitXor: _pow,  # `^` means power on a calculator, and that is what a model means by it
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "sqrt": math.sqrt, "floor": math.floor, "ceil": math.ceil, "min": min,
    "max": max, "log": math.log, "exp": math.exp,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _eval_node(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
            if len(str(abs(left))) + len(str(abs(right))) > MAX_RESULT_DIGITS + 1:
                raise CalculatorError(f"result too large (more than {MAX_RESULT_DIGITS} digits)")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        return _FUNCTIONS[node.func.id](*(_eval_node(a) for a in node.args))
    what = type(node).__name__
    if isinstance(node, ast.Name):
        what = f"name {node.id!r}"
    elif isinstance(node, ast.Call):
        what = "that function call"
    raise CalculatorError(
        f"{what} is not allowed; use numbers, + - * / // % ** ^, parentheses and "
        f"{', '.join(_FUNCTIONS)}")


def format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError(f"the result is not a number: {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("the result is not finite")
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return format(value, ".12g")
    return str(value)


def _parse(expression: str) -> ast.Expression:
    """The expression's AST, after the calculator's normalisation (× ÷ − as * / -, a trailing "=")."""
    text = (expression.replace("×", "*").replace("÷", "/").replace("−", "-")
            .strip().rstrip("=").strip())
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"cannot parse {expression!r}: {exc.msg}") from None


def safe_eval(expression: str) -> str:
    """Evaluate an arithmetic expression without `eval`: parse it and walk a whitelist of AST nodes."""
    return _evaluate(_checked_tree(expression))


def _checked_tree(expression: str) -> ast.Expression:
    """The expression's AST after the calculator's limits (empty, length, parse, size); CalculatorError else."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tree = _parse(expression)
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression too complex (more than {MAX_NODES} parts)")
    return tree


def _evaluate(tree: ast.Expression) -> str:
    try:
        return format_number(_eval_node(tree))
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("result too large") from None
    except TypeError as exc:  # e.g. sqrt() with no argument
        raise CalculatorError(str(exc)) from None


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Args:
        expression: The arithmetic to compute, e.g. "(361 * 220) - 17 / 4" (+ - * / // % **, sqrt, abs, round).
    """
    tree = _checked_tree(expression)
    result = _evaluate(tree)
    if _is_number(tree):
        # Qwen2.5-Coder-0.5B fed its own result back until max_turns (11 of 32 episodes): say what to do instead
        raise CalculatorError(f"{expression.strip()} is already a number, there is nothing to compute; if it is "
                              f"the result, reply without a tool call and end with the line 'Answer: {result}'")
    return result


def _is_number(tree: ast.Expression) -> bool:
    """A plain (signed) number: what `safe_eval` returns unchanged."""
    node = tree.body
    while isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


# ---- the python tool (sandboxed) -------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _python_sandbox() -> tuple[Callable[..., str] | None, str]:
    """(run_python, "") when the Docker sandbox can run code, else (None, why not). Checked once per process."""
    try:
        from espl.sandboxes.python_tool import run_python, sandbox_available
    except ImportError as exc:
        return None, f"espl.sandboxes.python_tool cannot be imported ({exc})"
    if not sandbox_available():
        return None, "the Docker sandbox is not available (`espl sandbox doctor` says why)"
    return run_python, ""


def _make_python_tool(run_python: Callable[..., str], timeout_s: float) -> Callable[[str], str]:
    def python(code: str) -> str:
        """Run Python code in an isolated sandbox (no network) and return what it prints.

        Args:
            code: A Python program; print() the values you need, e.g. "print(361 * 220)".
        """
        return run_python(code, timeout_s=timeout_s)

    return python


# ---- tasks ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _dataset(kind: int):
    import reasoning_gym

    name, config = GENERATORS[kind]
    return reasoning_gym.create_dataset(name, seed=GENERATOR_SEED + kind, size=1, **config)


def task_split(question: str) -> Split:
    digest = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return "test" if digest % TEST_MODULUS == 0 else "train"


# ---- the env ---------------------------------------------------------------------------------------------
class ToolMathEnv(ToolEnv):
    """Multi-digit arithmetic with a calculator tool (and a sandboxed python tool when Docker is up)."""

    family: ClassVar[str] = "tool"
    description: ClassVar[str] = "Tool use: multi-digit arithmetic with a calculator (and sandboxed python) tool"
    default_max_turns: ClassVar[int] = 6

    def __init__(self, *, split: Split = "train", max_turns: int | None = None, python_tool: PythonTool = "auto",
                 python_timeout_s: float = 5.0, describe_tools_in_prompt: bool = False,
                 render_mode: str | None = None):
        if python_tool not in ("auto", "on", "off"):
            raise ValueError(f"python_tool: must be 'auto', 'on' or 'off', got {python_tool!r}")
        self._run_python: Callable[..., str] | None = None
        if python_tool != "off":
            run, why = _python_sandbox()
            if run is None and python_tool == "on":
                raise RuntimeError(f"python_tool='on' but {why}; use python_tool='auto' or 'off'")
            if run is None:
                log.info("ToolMath: the python tool is not offered: %s; calculator only", why)
            else:
                from espl.sandboxes.core import SandboxError

                # the sandbox failing (daemon gone, container lost) is not the model's mistake: let it raise
                self.infrastructure_errors = (SandboxError,)
            self._run_python = run
        self.python_timeout_s = python_timeout_s
        super().__init__(split=split, max_turns=max_turns, describe_tools_in_prompt=describe_tools_in_prompt,
                         render_mode=render_mode)

    def tool_functions(self) -> Sequence[Callable[..., Any]]:
        tools: list[Callable[..., Any]] = [calculator]
        if self._run_python is not None:
            tools.append(_make_python_tool(self._run_python, self.python_timeout_s))
        return tools

    def make_task(self, index: int) -> Task:
        kind = index % len(GENERATORS)
        ds = _dataset(kind)
        # candidates index*64, index*64+1, ...: the first one of this split (the split is a hash of the text)
        for k in itertools.count():
            item = ds[(index // len(GENERATORS)) * 64 + k]
            if task_split(item["question"]) == self.split:
                break
        name = GENERATORS[kind][0]
        return Task(id=f"toolmath-{self.split}-{index}", prompt=PROMPT.format(question=item["question"]),
                    answer=str(item["answer"]), data={"generator": name, "question": item["question"]})

    def grade_answer(self, text: str, task: Task) -> tuple[float, str, dict[str, Any]]:
        extraction, verdict = grade_reply(text, task.answer)
        return (1.0 if verdict.correct else 0.0), verdict.reason, {
            "extracted": extraction.answer, "extraction": extraction.source}
