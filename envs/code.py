"""espl/Code-v0: the model writes a Python function; hidden unit tests run in a Docker sandbox.

    env = gymnasium.make("espl/Code-v0", split="test")              # HumanEval's 164 problems
    env = gymnasium.make("espl/Code-v0", max_turns=3)               # failing test output comes back
    env = gymnasium.make("espl/Code-v0", reward="all_pass")         # 1.0 only when every test passes

- Problems: split="train" draws from an unlimited procedural generator (15 families, random specs,
  reference solutions, tests from running the reference); split="test" is HumanEval (default) or, with
  test_source="generated", generated specs held out of train. The two splits never share a problem
  (code_problems.py says how).
- The reply: the code of the last ```python block that defines the entry point (else the last block; a
  reply without fences counts only if it is all valid Python defining the function). No code ->
  reason "no_code"; code that does not parse -> "syntax_error"; no `def <entry point>` -> "missing_function".
  These score 0 and never raise.
- Reward (reward=): "fraction" (default) = tests passed / tests; "all_pass" = 1.0 if every test passed,
  else 0.0. Reasons: "correct" (all passed), "wrong_answer", "timeout" (the run hit its time limit),
  "runtime_error" (the code raised while loading).
- Multi-turn (max_turns > 1): a reply that does not pass every test gets, as the next observation, a user
  message with the score, the first failing test and its error, and the program's stderr tail; the
  episode ends on all-pass or at the last turn, rewarded by the last attempt. Rewards before the last
  step are 0.
- Tests run in the process's shared `SandboxPool` (see sandboxes/shared.py; ESPL_SANDBOX_POOL_SIZE sets
  how many run at once). If Docker is unusable, `step` raises SandboxUnavailable saying the fix; replies
  that need no run (no code) are scored without Docker.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from pathlib import Path
from typing import Any, ClassVar, Literal

from espl.envs.code_problems import CodeProblem, generate_problem, humaneval_problems, instrument_tests
from espl.envs.core import MultiTurnEnv, Outcome, Split, Task
from espl.types import Message

RewardMode = Literal["fraction", "all_pass"]
TestSource = Literal["humaneval", "generated"]
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
PY_LANGS = ("python", "py", "python3", "")
FEEDBACK_STDERR_CHARS = 1500
INSTRUCTION = ("Write the Python function below. Reply with the complete function (and any imports it needs) in "
               "one ```python code block.")


def extract_code(text: str, entry_point: str) -> tuple[str | None, str]:
    """(code, "") or (None, reason) with reason in no_code / syntax_error / missing_function."""
    blocks = [body for lang, body in FENCE.findall(text) if lang.lower() in PY_LANGS and body.strip()]
    if not blocks:
        if f"def {entry_point}" in text and _parse(text) is not None:  # bare code, no fences
            blocks = [text]
        else:
            return None, "no_code"
    defining = [b for b in blocks if f"def {entry_point}" in b]
    code = (defining or blocks)[-1]
    tree = _parse(code)
    if tree is None:
        return None, "syntax_error"
    if not any(_defines(node, entry_point) for node in tree.body):
        return None, "missing_function"
    return code, ""


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes
        return None


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    return False


class CodeEnv(MultiTurnEnv):
    """Write a Python function; hidden unit tests run in a Docker sandbox (HumanEval + generated problems)."""

    family: ClassVar[str] = "code"
    description: ClassVar[str] = "Write a Python function; hidden unit tests run in a Docker sandbox (HumanEval test, generated train)."
    default_max_turns: ClassVar[int] = 1

    def __init__(self, *, split: Split = "train", max_turns: int = 1, reward: RewardMode = "fraction",
                 test_source: TestSource = "humaneval", timeout_s: float = 10.0, per_test_timeout_s: float = 3.0,
                 sandbox: Any = None, render_mode: str | None = None):
        super().__init__(split=split, max_turns=max_turns, render_mode=render_mode)
        if reward not in ("fraction", "all_pass"):
            raise ValueError(f"reward: must be 'fraction' or 'all_pass', got {reward!r}")
        if test_source not in ("humaneval", "generated"):
            raise ValueError(f"test_source: must be 'humaneval' or 'generated', got {test_source!r}")
        for name, value in (("timeout_s", timeout_s), ("per_test_timeout_s", per_test_timeout_s)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: must be a number of seconds > 0, got {value!r}")
        self.reward_mode: RewardMode = reward
        self.test_source: TestSource = test_source
        self.timeout_s = float(timeout_s)
        self.per_test_timeout_s = float(per_test_timeout_s)
        self._sandbox = sandbox  # any Sandbox; None = the process's shared pool, made on the first run

    # ---- tasks ---------------------------------------------------------------------------------------------------
    def problem(self, index: int) -> CodeProblem:
        if self.split == "test" and self.test_source == "humaneval":
            problems = humaneval_problems()
            return problems[index % len(problems)]
        return generate_problem(self.split, index)

    def num_tasks(self) -> int | None:
        if self.split == "test" and self.test_source == "humaneval":
            return len(humaneval_problems())
        return None  # generated per seed

    def make_task(self, index: int) -> Task:
        p = self.problem(index)
        tests = instrument_tests(p.tests)
        prompt = f"{INSTRUCTION}\n\n```python\n{p.stub.rstrip()}\n```"
        return Task(id=p.id, prompt=prompt, answer=p.reference, data={
            "stub": p.stub, "entry_point": p.entry_point, "tests": tests.source, "test_texts": p.test_texts(tests),
            "source": p.source,
        })

    # ---- grading -------------------------------------------------------------------------------------------------
    def evaluate(self, reply: Message, task: Task, turn: int) -> Outcome:
        last = turn >= self.max_turns
        code, why = extract_code(reply.get("content") or "", task.data["entry_point"])
        n = len(task.data["test_texts"])
        if code is None:
            hint = {
                "no_code": "I found no code. Reply with the complete function in one ```python code block.",
                "syntax_error": "Your code does not parse as Python. Reply with valid, complete code in one "
                                "```python code block.",
                "missing_function": f"Your code does not define `{task.data['entry_point']}`. Reply with that "
                                    "complete function in one ```python code block.",
            }[why]
            return self._outcome(0, n, why, last, hint)
        passed, failures, load_error, timed_out, stderr = self.run_tests(code, task)
        if passed == n:
            return Outcome(reward=1.0, reason="correct", done=True, info={"passed": n, "total": n})
        reason = "timeout" if timed_out else "runtime_error" if load_error else "wrong_answer"
        return self._outcome(passed, n, reason, last, self._feedback(task, passed, failures, load_error,
                                                                     timed_out, stderr))

    def _outcome(self, passed: int, n: int, reason: str, last: bool, feedback: str) -> Outcome:
        info = {"passed": passed, "total": n}
        if last:
            reward = passed / n if self.reward_mode == "fraction" else 0.0
            return Outcome(reward=reward, reason=reason, done=True, info=info)
        return Outcome(reward=0.0, reason=reason, done=False, info={**info, "attempt_reason": reason},
                       messages=({"role": "user", "content": feedback},))

    def run_tests(self, code: str, task: Task) -> tuple[int, dict[int, str], str | None, bool, str]:
        """Run the hidden tests on `code` in the sandbox: (passed, {test: error}, load error, timed out, stderr)."""
        token = secrets.token_hex(16)
        problem = {"stub": task.data["stub"], "entry_point": task.data["entry_point"], "tests": task.data["tests"],
                   "per_test_timeout_s": self.per_test_timeout_s}
        result = self.sandbox.run(
            _harness_source(), files={"solution.py": code, "problem.json": json.dumps(problem)},
            stdin=token + "\n", timeout_s=self.timeout_s,
        )
        n = len(task.data["test_texts"])
        verdicts: dict[int, str | None] = {}
        load_error = None
        for line in result.stdout.splitlines():
            if token not in line:
                continue  # only the harness knows the token: anything else is the model's doing
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("t") != token:
                continue
            if "load_error" in msg:
                load_error = str(msg["load_error"])
            elif isinstance(msg.get("i"), int) and 0 <= msg["i"] < n and msg["i"] not in verdicts:
                verdicts[msg["i"]] = None if msg.get("ok") is True else str(msg.get("err", "failed"))
        passed = sum(1 for v in verdicts.values() if v is None)
        failures = {i: (verdicts.get(i) or "no verdict (the program stopped before this test)")
                    for i in range(n) if i not in verdicts or verdicts[i] is not None}
        return passed, failures, load_error, result.timed_out, result.stderr

    def _feedback(self, task: Task, passed: int, failures: dict[int, str], load_error: str | None,
                  timed_out: bool, stderr: str) -> str:
        n = len(task.data["test_texts"])
        lines = [f"Your code passed {passed} of {n} tests."]
        if load_error:
            lines.append(f"Loading your code raised {load_error}")
        elif timed_out:
            lines.append(f"The tests ran out of time ({self.timeout_s:g} s): look for an infinite loop or a slow "
                         "algorithm.")
        if failures and not load_error:
            i = min(failures)
            lines.append(f"First failing test:\n```python\n{task.data['test_texts'][i]}\n```\nError: {failures[i]}")
        tail = stderr.strip()[-FEEDBACK_STDERR_CHARS:]
        if tail:
            lines.append(f"Output (stderr and prints):\n```\n{tail}\n```")
        lines.append("Fix the function and reply with the complete corrected code in one ```python code block.")
        return "\n\n".join(lines)

    @property
    def sandbox(self):
        if self._sandbox is None:
            from espl.sandboxes.core import SandboxUnavailable
            from espl.sandboxes.shared import shared_pool

            try:
                self._sandbox = shared_pool()
            except SandboxUnavailable as exc:
                raise SandboxUnavailable(f"espl/Code-v0 runs its tests in a Docker sandbox. {exc}") from None
        return self._sandbox


_HARNESS: str | None = None


def _harness_source() -> str:
    global _HARNESS
    if _HARNESS is None:
        _HARNESS = Path(__file__).with_name("code_harness.py").read_text()
    return _HARNESS
