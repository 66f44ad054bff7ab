"""`espl report RUN_DIR`: one static HTML page of an E-SPL run (docs/training.md, "The run report").

The page shows what a run dir records: the reward curve and held-out curves, each prompt's TrueSkill μ ± σ
over steps, the lineage tree with each child's change from its parent, every prompt's score history, the
mutation outcome of every step with its reasons, and a few sample trajectories. GEPA draws a candidate
tree; this page shows a rated population evolving beside the weights.

Reading (`load_run`): JSON, CSV and TOML only, never pickle or code, into the small frozen dataclasses
below. pool.json is required (falling back to checkpoint/state.json's pool); every other file is optional
and its absence is a note on the page. A jsonl line cut off at the end (a killed run) is skipped with a
note; a malformed line elsewhere is skipped with a note naming the line and the field.

Rendering (`render_report`): a Jinja2 template with autoescape on, so model text (principles, replies,
mutator calls) is always text, never markup; the charts are inline SVG built here from numbers; the one
inline script is ours and is pinned by its hash in the page's Content-Security-Policy, so nothing from the
run could execute even if it slipped past the escaping. No network: the page works from file://.

Steps are shown counted from 1, as `espl train` prints them ("step 1/3"); the files count from 0. A value
"after step s" sits at x = s + 1, and x = 0 is before training (the root prompt's starting rating).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

MAX_TEXT = 4000  # characters of one message or mutator call shown; the rest is counted, not shown
MAX_CALL_STEPS = 20  # steps whose mutator prompts and replies are shown (the latest); mutations.jsonl has all
MAX_CHART_PROMPTS = 10  # rating and score charts: the best prompts by μ − 2σ (the tables list them all)
PALETTE = ("#3b5bdb", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#0c8599", "#f08c00", "#5c940d", "#862e9c",
           "#495057")


class ReportError(Exception):
    """A run dir that cannot be reported on (one line: what is missing and what to do)."""


# ---- what a run dir holds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRow:
    """One row of metrics.csv (the fields the report shows)."""

    step: int
    mean_reward: float
    pool_size: int
    best_id: int
    selected: tuple[int, ...]
    prompt_scores: tuple[float, ...]
    skip_ratio: float
    loss: float
    mutation: str
    mutation_rejected_ops: int
    child_id: int
    crossover: str
    test_reward: float  # nan unless evaluated this step
    time_total: float


@dataclass(frozen=True)
class Prompt:
    """One prompt of pool.json (live or evicted)."""

    id: int
    principles: tuple[str, ...]
    mu: float
    sigma: float
    parents: tuple[int, ...]
    op: str
    birth_step: int
    scores: tuple[tuple[int, float], ...]  # (step, mean reward that step)
    ratings: tuple[tuple[int, float, float], ...]  # (step, μ, σ) after that step; birth first
    evicted: bool = False

    @property
    def exploit(self) -> float:
        return self.mu - 2.0 * self.sigma


@dataclass(frozen=True)
class LLMCall:
    prompt: str
    reply: str


@dataclass(frozen=True)
class Crossover:
    reason: str
    parents: tuple[int, ...]
    principles: tuple[str, ...] | None
    calls: tuple[LLMCall, ...] = ()


@dataclass(frozen=True)
class MutationRecord:
    """One line of mutations.jsonl: the mutation of step `step`'s best prompt (and its crossover, if drawn)."""

    step: int
    parent: int
    reason: str
    rejected: tuple[tuple[str, int], ...]  # dropped operations by reason
    constrained: bool
    principles: tuple[str, ...] | None
    calls: tuple[LLMCall, ...] = ()
    crossover: Crossover | None = None

    @property
    def rejected_total(self) -> int:
        return sum(n for _, n in self.rejected)

    @property
    def all_calls(self) -> tuple[LLMCall, ...]:
        """The mutation's LLM calls, then the crossover's."""
        return self.calls + (self.crossover.calls if self.crossover is not None else ())


@dataclass(frozen=True)
class Message:
    role: str
    content: str  # tool calls are shown as their JSON


@dataclass(frozen=True)
class Sample:
    """One line of samples.jsonl: an episode of a step, every message."""

    step: int
    prompt_id: int
    problem: str
    reward: float
    reason: str
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class EvalPoint:
    """One held-out evaluation: of prompt `kind` (newest / best / none) after step `step`."""

    step: int
    kind: str
    mean: float
    prompt_id: int | None = None
    n: int | None = None
    pass_at_k: tuple[tuple[int, float], ...] = ()
    ci95: float = math.nan  # half-width of the 95 % interval of the mean


@dataclass(frozen=True)
class BestCheckpoint:
    """RUN_DIR/best/best.json: the checkpoint kept for the best held-out mean (of `prompt`)."""

    step: int
    score: float
    prompt: str
    prompt_id: int | None


@dataclass(frozen=True)
class Run:
    path: Path
    config: dict[str, Any]
    steps: tuple[StepRow, ...]
    prompts: tuple[Prompt, ...]
    mutations: tuple[MutationRecord, ...]
    samples: tuple[Sample, ...]
    evals: tuple[EvalPoint, ...]
    eval_source: str  # "evals.jsonl", "metrics.csv test_reward" or "" (none)
    notes: tuple[str, ...] = ()  # what was missing or skipped while reading
    best: BestCheckpoint | None = None

    @property
    def steps_done(self) -> int:
        if self.steps:
            return max(r.step for r in self.steps) + 1
        marks = [s for p in self.prompts for s, _ in p.scores] + [p.birth_step for p in self.prompts]
        return max(marks, default=-1) + 1

    def prompt(self, prompt_id: int) -> Prompt | None:
        return next((p for p in self.prompts if p.id == prompt_id), None)


# ---- reading ------------------------------------------------------------------------------------------------


class _Bad(ValueError):
    """A field of a record that is missing or of the wrong type (its message names the field)."""


def _get(d: Any, key: str) -> Any:
    if not isinstance(d, dict):
        raise _Bad("not a JSON object")
    if key not in d:
        raise _Bad(f"field {key!r} is missing")
    return d[key]


def _number(d: Any, key: str, convert: Callable[[Any], Any], what: str) -> Any:
    v = _get(d, key)
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _Bad(f"field {key!r} is not {what}")
    try:
        return convert(v)
    except ValueError:
        raise _Bad(f"field {key!r} is not {what}") from None


def _int(d: Any, key: str) -> int:
    return int(_number(d, key, int, "an integer"))


def _float(d: Any, key: str) -> float:
    return float(_number(d, key, float, "a number"))


def _str(d: Any, key: str, default: str | None = None) -> str:
    if default is not None and isinstance(d, dict) and d.get(key) is None:
        return default
    v = _get(d, key)
    if not isinstance(v, str):
        raise _Bad(f"field {key!r} is not a string")
    return v


def _texts(v: Any, key: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _Bad(f"field {key!r} is not a list of strings")
    return tuple(v)


def _calls(v: Any) -> tuple[LLMCall, ...]:
    if not isinstance(v, list):
        raise _Bad("field 'calls' is not a list")
    return tuple(LLMCall(_str(c, "prompt"), _str(c, "reply")) for c in v)


def _jsonl(path: Path, notes: list[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each line; a cut-off last line and malformed lines are skipped with a
    note (a kill can leave a partial line at the end; nothing else should)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        notes.append(f"{path.name}: not readable ({exc.strerror}); left out")
        return
    lines = text.split("\n")
    cut = lines[-1] != ""  # no final newline: the writer was stopped in the middle of that line
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except ValueError:
            last = i == len(lines) and cut
            notes.append(f"{path.name}: line {i} " + ("is cut off (the run was stopped while writing it); skipped"
                                                      if last else "is not valid JSON; skipped"))


def _read_pool(run_dir: Path, notes: list[str]) -> list[Prompt]:
    path = run_dir / "pool.json"
    data: Any = None
    problem = ""
    if path.is_file():
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            problem = f"{path} is not valid JSON ({exc})"
    if data is None:  # the checkpoint holds the pool of the last checkpointed step
        state = run_dir / "checkpoint" / "state.json"
        if state.is_file():
            try:
                data = json.loads(state.read_bytes().decode("utf-8")).get("pool")
                notes.append(f"pool.json {'unreadable' if problem else 'missing'}: the prompts are the pool of "
                             "checkpoint/state.json (the last checkpointed step)")
            except (UnicodeDecodeError, ValueError, AttributeError):
                data = None
    if data is None:
        if problem:
            raise ReportError(f"{problem}; no readable checkpoint/state.json either, so there is no pool to show")
        if not run_dir.is_dir():
            raise ReportError(f"RUN_DIR {run_dir} does not exist; give a directory written by `espl train --out`")
        if (run_dir / "config.toml").is_file():
            raise ReportError(f"{run_dir} holds a run that has not finished a step yet (no pool.json); "
                              "report on it after its first step")
        raise ReportError(f"{run_dir} is not a RUN_DIR written by `espl train` (no pool.json, no config.toml)")
    prompts = []
    try:
        for key, evicted in (("evicted", True), ("prompts", False)):
            rows = data.get(key, []) if key == "evicted" else _get(data, key)
            if not isinstance(rows, list):
                raise _Bad(f"field {key!r} is not a list")
            for r in rows:
                prompts.append(Prompt(
                    id=_int(r, "id"), principles=_texts(_get(r, "principles"), "principles"),
                    mu=_float(r, "mu"), sigma=_float(r, "sigma"),
                    parents=tuple(int(p) for p in r.get("parents", ())), op=_str(r, "op", "root"),
                    birth_step=int(r.get("birth_step", -1)),
                    scores=tuple((int(s), float(v)) for s, v in r.get("scores", ())),
                    ratings=tuple((int(s), float(m), float(g)) for s, m, g in r.get("rating_history", ())),
                    evicted=evicted))
    except (_Bad, TypeError, ValueError, AttributeError) as exc:
        raise ReportError(f"{path}: a prompt record is malformed ({exc}); was it written by `espl train`?") from None
    return sorted(prompts, key=lambda p: p.id)


def _split_ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(";") if x.strip())


def _split_floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(";") if x.strip())


def _read_metrics(run_dir: Path, notes: list[str]) -> list[StepRow]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        notes.append("metrics.csv missing: no reward curve and no per-step table")
        return []
    rows = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for i, r in enumerate(csv.DictReader(f), 2):
            try:
                rows.append(StepRow(
                    step=_int(r, "step"), mean_reward=_float(r, "mean_reward"), pool_size=_int(r, "pool_size"),
                    best_id=_int(r, "best_id"), selected=_split_ints(_str(r, "selected")),
                    prompt_scores=_split_floats(_str(r, "prompt_scores")), skip_ratio=_float(r, "skip_ratio"),
                    loss=_float(r, "loss"), mutation=_str(r, "mutation"),
                    mutation_rejected_ops=_int(r, "mutation_rejected_ops"), child_id=_int(r, "child_id"),
                    crossover=_str(r, "crossover", "off"), test_reward=_float(r, "test_reward"),
                    time_total=_float(r, "time_total")))
            except (_Bad, ValueError) as exc:
                notes.append(f"metrics.csv: line {i} skipped ({exc})")
    return rows


def _read_mutations(run_dir: Path, notes: list[str], mode: Any) -> list[MutationRecord]:
    path = run_dir / "mutations.jsonl"
    if not path.is_file():
        if mode != "rl":  # mode rl evolves no prompt: nothing is missing
            notes.append("mutations.jsonl missing: no mutation outcomes")
        return []
    out = []
    for i, d in _jsonl(path, notes):
        try:
            cross = None
            if isinstance(d, dict) and d.get("crossover") is not None:
                c = d["crossover"]
                cp = c.get("principles") if isinstance(c, dict) else None
                cross = Crossover(_str(c, "reason"), tuple(int(p) for p in _get(c, "parents")),
                                  None if cp is None else _texts(cp, "crossover.principles"),
                                  _calls(c.get("calls", [])))
            rejected = _get(d, "rejected")
            if not isinstance(rejected, dict):
                raise _Bad("field 'rejected' is not an object")
            principles = d.get("principles")
            out.append(MutationRecord(
                step=_int(d, "step"), parent=_int(d, "parent"), reason=_str(d, "reason"),
                rejected=tuple(sorted((str(k), int(v)) for k, v in rejected.items())),
                constrained=bool(d.get("constrained", False)),
                principles=None if principles is None else _texts(principles, "principles"),
                calls=_calls(d.get("calls", [])), crossover=cross))
        except (_Bad, TypeError, ValueError) as exc:
            notes.append(f"mutations.jsonl: line {i} skipped ({exc})")
    return out


def _message(m: Any) -> Message:
    role = _str(m, "role")
    content = m.get("content")
    text = content if isinstance(content, str) else "" if content is None else json.dumps(content, ensure_ascii=False)
    if m.get("tool_calls"):
        text += ("\n" if text else "") + "tool calls: " + json.dumps(m["tool_calls"], ensure_ascii=False)
    return Message(role, text)


def _read_samples(run_dir: Path, notes: list[str]) -> list[Sample]:
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        notes.append("samples.jsonl missing: no sample trajectories (output.trajectory_samples = 0?)")
        return []
    out = []
    for i, d in _jsonl(path, notes):
        try:
            msgs = _get(d, "messages")
            if not isinstance(msgs, list):
                raise _Bad("field 'messages' is not a list")
            out.append(Sample(_int(d, "step"), _int(d, "prompt_id"), str(_get(d, "problem")), _float(d, "reward"),
                              _str(d, "reason", ""), tuple(_message(m) for m in msgs)))
        except (_Bad, TypeError, ValueError, AttributeError) as exc:
            notes.append(f"samples.jsonl: line {i} skipped ({exc})")
    return out


def _read_evals(run_dir: Path, steps: Sequence[StepRow], notes: list[str]) -> tuple[list[EvalPoint], str]:
    """Held-out results: RUN_DIR/evals.jsonl (trainer/heldout.py `HeldOutResult.to_json`: one line per evaluation
    and prompt) when the run wrote it, else the newest prompt's `test_reward` column of metrics.csv."""
    path = run_dir / "evals.jsonl"
    if path.is_file():
        out = []
        for i, d in _jsonl(path, notes):
            try:
                if not isinstance(d, dict):
                    raise _Bad("not a JSON object")
                passes = d.get("pass_at_k") or {}
                if not isinstance(passes, dict):
                    raise _Bad("field 'pass_at_k' is not an object")
                pid, n, ci = d.get("prompt_id"), d.get("n"), d.get("ci95")
                mean = math.nan if d.get("mean", 0) is None else _float(d, "mean")  # null: nothing was scored
                out.append(EvalPoint(_int(d, "step"), _str(d, "prompt"), mean,
                                     None if pid is None else int(pid), None if n is None else int(n),
                                     tuple(sorted((int(k), float(v)) for k, v in passes.items())),
                                     math.nan if ci is None else float(ci)))
            except (_Bad, TypeError, ValueError) as exc:
                notes.append(f"evals.jsonl: line {i} skipped ({exc})")
        return out, "evals.jsonl"
    points = [EvalPoint(r.step, "newest", r.test_reward) for r in steps if not math.isnan(r.test_reward)]
    return points, ("metrics.csv test_reward" if points else "")


def _read_best(run_dir: Path, notes: list[str]) -> BestCheckpoint | None:
    path = run_dir / "best" / "best.json"
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
        pid = d.get("prompt_id") if isinstance(d, dict) else None
        return BestCheckpoint(_int(d, "step"), _float(d, "score"), _str(d, "prompt", "?"),
                              None if pid is None else int(pid))
    except (_Bad, UnicodeDecodeError, ValueError, TypeError) as exc:
        notes.append(f"best/best.json unreadable ({exc}); the best checkpoint is not shown")
        return None


def _read_config(run_dir: Path, notes: list[str]) -> dict[str, Any]:
    path = run_dir / "config.toml"
    if not path.is_file():
        notes.append("config.toml missing: the run's settings are not shown")
        return {}
    from espl.trainer.config import toml_module

    try:
        return toml_module().loads(path.read_bytes().decode("utf-8", errors="replace"))
    except ValueError as exc:  # TOMLDecodeError is a ValueError
        notes.append(f"config.toml is not valid TOML ({exc}); the run's settings are not shown")
        return {}


def load_run(run_dir: str | Path) -> Run:
    """Everything the report shows, read from `run_dir` (ReportError when it holds no pool at all)."""
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ReportError(f"RUN_DIR {path} is a file; give the directory written by `espl train --out`")
    notes: list[str] = []
    prompts = _read_pool(path, notes)
    config = _read_config(path, notes)
    steps = _read_metrics(path, notes)
    mutations = _read_mutations(path, notes, config.get("mode"))
    samples = _read_samples(path, notes)
    evals, source = _read_evals(path, steps, notes)
    best = _read_best(path, notes)
    return Run(path, config, tuple(steps), tuple(prompts), tuple(mutations), tuple(samples), tuple(evals), source,
               tuple(notes), best)


# ---- a child's change from its parent --------------------------------------------------------------------

ChangeKind = Literal["kept", "added", "modified", "merged", "removed"]
SIMILAR = 0.5  # a new principle that holds at least half of an old one's words is that one, rewritten
_STOPWORDS = frozenset("a an the and or of to in on for is are be it its with your you each every when that this "
                       "by as at from into than then if".split())


@dataclass(frozen=True)
class Change:
    """One principle of a child, or one of its parent's that the child dropped.

    `child` is its index in the child (None for "removed"); `sources` the parent indices it came from
    (one for kept / modified / removed, two or more for merged, none for added)."""

    kind: ChangeKind
    text: str
    child: int | None
    sources: tuple[int, ...] = ()


def _words(text: str) -> frozenset[str]:
    words = re.findall(r"[^\W_]+", text.casefold())
    content = [w for w in words if w not in _STOPWORDS]
    return frozenset(content or words)


def _coverage(old: str, new: str) -> float:
    """The share of `old`'s content words that `new` keeps."""
    w = _words(old)
    return len(w & _words(new)) / len(w) if w else 0.0


def principle_diff(parent: Sequence[str], child: Sequence[str]) -> tuple[Change, ...]:
    """How `child` differs from `parent`, principle by principle, from their texts alone (the pool keeps
    principles, not the operations that made them; mutations.jsonl keeps the raw replies).

    A child principle equal to a parent one (case and spacing aside) is kept, wherever it moved (the mutator
    renumbers G0..). Every other parent principle is attributed to the new child principle that keeps most of
    its words, when that share is at least `SIMILAR`; otherwise it was removed. A new principle with two or
    more attributed parents is merged, with one modified, with none added. A rewrite that keeps fewer than
    half of the old words therefore shows as removed + added. Child order first, then the removals."""
    def norm(s: str) -> str:
        return " ".join(s.casefold().split())

    left = list(range(len(parent)))
    kept: dict[int, int] = {}
    for ci, text in enumerate(child):
        pi = next((pi for pi in left if norm(parent[pi]) == norm(text)), None)
        if pi is not None:
            kept[ci] = pi
            left.remove(pi)
    sources: dict[int, list[int]] = {ci: [] for ci in range(len(child)) if ci not in kept}
    removed = []
    for pi in left:
        # the best-covering new principle; ties go to the earlier one
        best = max(sources, key=lambda ci: (_coverage(parent[pi], child[ci]), -ci), default=None)
        if best is not None and _coverage(parent[pi], child[best]) >= SIMILAR:
            sources[best].append(pi)
        else:
            removed.append(pi)
    changes = []
    for ci, text in enumerate(child):
        if ci in kept:
            changes.append(Change("kept", text, ci, (kept[ci],)))
        else:
            src = tuple(sources[ci])
            changes.append(Change("merged" if len(src) >= 2 else "modified" if src else "added", text, ci, src))
    changes.extend(Change("removed", parent[pi], None, (pi,)) for pi in removed)
    return tuple(changes)


# ---- charts (inline SVG, geometry computed here) ---------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    path: str  # SVG path data
    markers: tuple[Marker, ...] = ()
    band: str = ""  # SVG path data of a filled ± band
    dashed: bool = False
    prompt_id: int | None = None


@dataclass(frozen=True)
class Chart:
    title: str
    y_label: str
    series: tuple[Series, ...]
    x_ticks: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    note: str = ""
    width: int = 640
    height: int = 260
    left: int = 52
    right: int = 16
    top: int = 12
    bottom: int = 34

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom

    @property
    def plot_right(self) -> int:
        return self.width - self.right


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (at most n + 2 of them)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1.0):  # one value: a unit around it
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    count = math.ceil((hi - first) / step - 1e-9)
    return [round(first + i * step, 10) for i in range(count + 1)]


def _finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


class _Frame:
    """Data -> SVG coordinates for one chart."""

    def __init__(self, x_max: int, y_lo: float, y_hi: float, shape: Chart):
        self.x_max = max(x_max, 1)
        self.y_ticks = _nice_ticks(y_lo, y_hi)
        self.y_lo, self.y_hi = self.y_ticks[0], self.y_ticks[-1]
        self.s = shape

    def x(self, v: float) -> float:
        return round(self.s.left + (self.s.plot_right - self.s.left) * v / self.x_max, 2)

    def y(self, v: float) -> float:
        span = self.y_hi - self.y_lo or 1.0
        return round(self.s.plot_bottom - (self.s.plot_bottom - self.s.top) * (v - self.y_lo) / span, 2)

    def ticks(self) -> tuple[tuple[tuple[float, str], ...], tuple[tuple[float, str], ...]]:
        every = max(1, math.ceil(self.x_max / 10))
        xs = tuple((self.x(v), str(v)) for v in range(0, self.x_max + 1, every))
        ys = tuple((self.y(v), f"{v:g}") for v in self.y_ticks)
        return xs, ys


def _line(frame: _Frame, pts: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{'M' if i == 0 else 'L'}{frame.x(x)},{frame.y(y)}" for i, (x, y) in enumerate(pts))


def _chart(title: str, y_label: str, x_max: int, y_range: tuple[float, float],
           build: Callable[[_Frame], list[Series]], note: str = "") -> Chart:
    shape = Chart(title, y_label, (), (), ())
    frame = _Frame(x_max, *y_range, shape)
    xs, ys = frame.ticks()
    return Chart(title, y_label, tuple(build(frame)), xs, ys, note)


def color(prompt_id: int) -> str:
    return PALETTE[prompt_id % len(PALETTE)]


def reward_chart(run: Run) -> Chart:
    """Train mean reward per step, and the held-out means per prompt kind."""
    pts = [(r.step + 1, r.mean_reward) for r in run.steps if _finite(r.mean_reward)]
    kinds = sorted({e.kind for e in run.evals}, key=lambda k: ({"newest": 0, "best": 1, "none": 2}.get(k, 3), k))
    held = {k: [(e.step + 1, e.mean) for e in run.evals if e.kind == k and _finite(e.mean)] for k in kinds}
    values = [v for _, v in pts] + [v for ps in held.values() for _, v in ps]
    hi = max([1.0] + values) if values and max(values) > 1 else 1.0

    def build(f: _Frame) -> list[Series]:
        out = []
        if pts:
            out.append(Series("train mean reward", PALETTE[0], _line(f, pts),
                              tuple(Marker(f.x(x), f.y(y), f"step {x}: train mean reward {y:.3f}") for x, y in pts)))
        for i, k in enumerate(kinds):
            ps = sorted(held[k])
            label = f"held-out, {'no prompt' if k == 'none' else k + ' prompt'}"
            out.append(Series(label, PALETTE[(i + 1) % len(PALETTE)], _line(f, ps),
                              tuple(Marker(f.x(x), f.y(y), f"after step {x}: {label} {y:.3f}") for x, y in ps),
                              dashed=True))
        return out

    note = {"evals.jsonl": "held-out curves from evals.jsonl",
            "metrics.csv test_reward": "held-out curve: metrics.csv test_reward (the newest prompt)",
            "": "no held-out evaluation in this run (evaluation.every = 0, or not reached yet)"}[run.eval_source]
    return _chart("Reward per step", "mean reward", run.steps_done, (min([0.0] + values), hi), build, note)


def chart_prompts(run: Run) -> list[Prompt]:
    """The prompts drawn in the rating and score charts: the best `MAX_CHART_PROMPTS` by μ − 2σ, id order."""
    best = sorted(run.prompts, key=_rank, reverse=True)[:MAX_CHART_PROMPTS]
    return sorted(best, key=lambda p: p.id)


def _rank(p: Prompt) -> tuple[float, int]:
    """μ − 2σ, then the newer; a non-finite rating (a damaged pool.json) last."""
    return (p.exploit if _finite(p.exploit) else -math.inf, p.id)


def _rating_steps(p: Prompt, end: int) -> tuple[list[tuple[int, float, float]], int]:
    """The prompt's recorded ratings as (x, μ, σ), x = step + 1 (birth first), and the x its rating holds until:
    `end` for a live prompt, its last score or rating for an evicted one (the pool does not record when)."""
    hist = sorted((s + 1, m, g) for s, m, g in p.ratings if _finite(m, g))
    if not hist and _finite(p.mu, p.sigma):
        hist = [(p.birth_step + 1, p.mu, p.sigma)]
    if not hist:
        return [], 0
    last_seen = max([hist[-1][0]] + [s + 1 for s, _ in p.scores])
    return hist, (last_seen if p.evicted else max(end, hist[-1][0]))


def _steps_path(hist: Sequence[tuple[int, float]], until: int) -> list[tuple[float, float]]:
    """Vertices of a step function: each value held until the next one (or `until`)."""
    pts: list[tuple[float, float]] = []
    for i, (x, v) in enumerate(hist):
        nxt = hist[i + 1][0] if i + 1 < len(hist) else until
        pts += [(x, v), (max(nxt, x), v)]
    return pts


def rating_chart(run: Run) -> Chart:
    shown = chart_prompts(run)
    lines = {p.id: _rating_steps(p, run.steps_done) for p in shown}
    lo = min((m - g for ls, _ in lines.values() for _, m, g in ls), default=0.0)
    hi = max((m + g for ls, _ in lines.values() for _, m, g in ls), default=1.0)

    def build(f: _Frame) -> list[Series]:
        out = []
        for p in shown:
            hist, until = lines[p.id]
            if not hist:
                continue
            top = _steps_path([(x, m + g) for x, m, g in hist], until)
            bottom = _steps_path([(x, m - g) for x, m, g in hist], until)[::-1]
            out.append(Series(f"#{p.id} ({p.op})", color(p.id), _line(f, _steps_path([(x, m) for x, m, _ in hist], until)),
                              tuple(Marker(f.x(x), f.y(m), f"#{p.id} after step {x}: μ {m:.2f} ± σ {g:.2f}")
                                    for x, m, g in hist), _line(f, top + bottom) + " Z", prompt_id=p.id))
        return out

    more = len(run.prompts) - len(shown)
    note = ("μ ± σ from each prompt's rating_history: a point where it was recorded (at birth and after each "
            "match the prompt played), held flat until the next (a prompt that is not selected keeps its rating)")
    if more > 0:
        note += f"; the {len(shown)} best by μ − 2σ are drawn, {more} more are in the tables"
    return _chart("TrueSkill rating per prompt (μ ± σ)", "μ ± σ", run.steps_done, (lo, hi), build, note)


def score_chart(run: Run) -> Chart:
    scores = {p.id: sorted((s + 1, v) for s, v in p.scores if _finite(v)) for p in chart_prompts(run)}
    shown = [p for p in chart_prompts(run) if scores[p.id]]
    values = [v for p in shown for _, v in scores[p.id]]

    def build(f: _Frame) -> list[Series]:
        out = []
        for p in shown:
            ps = scores[p.id]
            out.append(Series(f"#{p.id} ({p.op})", color(p.id), _line(f, ps),
                              tuple(Marker(f.x(x), f.y(v), f"#{p.id} at step {x}: mean reward {v:.3f}") for x, v in ps),
                              prompt_id=p.id))
        return out

    hi = max([1.0] + values) if values and max(values) > 1 else 1.0
    return _chart("Score per prompt (mean reward on the step's batch)", "score", run.steps_done,
                  (min([0.0] + values), hi), build, "a prompt has a score at each step it was selected")


# ---- the page's view of the run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeNode:
    """One prompt of the lineage, in depth-first order: `depth` is its distance from its root."""

    prompt: Prompt
    depth: int
    changes: tuple[Change, ...]  # from `parent`
    parent: Prompt | None  # the one the diff is against (a crossover's set A)
    missing_parent: int | None = None  # a parent id that pool.json does not hold
    origins: dict[int, tuple[int, int]] = field(default_factory=dict)  # crossover: added child index -> (id, Gi)
    n_children: int = 0


def crossover_origins(changes: Sequence[Change], others: Sequence[Prompt]) -> dict[int, tuple[int, int]]:
    """For a crossover child: which other parent each added principle came from (the principle of another
    parent that it keeps the largest share of, at least `SIMILAR`), as (prompt id, principle index)."""
    out = {}
    for c in changes:
        if c.kind != "added" or c.child is None:
            continue
        scored = [(_coverage(text, c.text), -o.id, -i, o.id, i) for o in others for i, text in enumerate(o.principles)]
        best = max(scored, default=None)
        if best is not None and best[0] >= SIMILAR:
            out[c.child] = (best[3], best[4])
    return out


def lineage(run: Run) -> tuple[TreeNode, ...]:
    """The lineage forest, flat in depth-first order: each prompt under its first parent (a crossover child
    under its set A), children oldest first. Flat (an explicit stack, no recursion), because a long run's
    lineage can be a chain of hundreds of children."""
    by_id = {p.id: p for p in run.prompts}
    kids: dict[int, list[Prompt]] = {}
    roots = []
    for p in run.prompts:
        first = p.parents[0] if p.parents else None
        if first is not None and first in by_id and first != p.id:
            kids.setdefault(first, []).append(p)
        else:
            roots.append(p)
    out: list[TreeNode] = []
    seen: set[int] = set()
    # a parent cycle (only a hand-edited pool.json has one) is unreachable from the roots: shown as roots too
    for top in roots + [p for p in run.prompts if p not in roots]:
        stack = [(top, 0)]
        while stack:
            p, depth = stack.pop()
            if p.id in seen:
                continue
            seen.add(p.id)
            parent = by_id.get(p.parents[0]) if p.parents and depth > 0 else None
            changes = principle_diff(parent.principles, p.principles) if parent is not None else ()
            missing = p.parents[0] if p.parents and p.parents[0] not in by_id else None
            others = [by_id[q] for q in p.parents[1:] if q in by_id]
            children = kids.get(p.id, [])
            out.append(TreeNode(p, depth, changes, parent, missing,
                                crossover_origins(changes, others) if parent is not None and others else {},
                                len(children)))
            stack.extend((c, depth + 1) for c in reversed(children))
    return tuple(out)


@dataclass(frozen=True)
class Shown:
    """A text shown on the page, cut at `MAX_TEXT` characters."""

    text: str
    hidden: int = 0


def shown(text: str, limit: int = MAX_TEXT) -> Shown:
    return Shown(text, 0) if len(text) <= limit else Shown(text[:limit], len(text) - limit)


@dataclass(frozen=True)
class MutationRow:
    step: int
    record: MutationRecord | None
    metrics: StepRow | None
    children: tuple[Prompt, ...]  # prompts born this step (mutation and crossover children)
    show_calls: bool = True  # the mutator's prompts and replies are on the page (the latest steps only)


def mutation_rows(run: Run) -> list[MutationRow]:
    """One row per step. The mutator's calls (up to ~10 prompts and replies a step) are shown for the latest
    `MAX_CALL_STEPS` steps that made any, so a long run's page stays small; mutations.jsonl keeps them all."""
    by_step_m = {m.step: m for m in run.mutations}
    by_step_s = {r.step: r for r in run.steps}
    steps = sorted(set(by_step_m) | set(by_step_s))
    with_calls = [s for s in steps if s in by_step_m and by_step_m[s].all_calls]
    shown_calls = set(with_calls[-MAX_CALL_STEPS:])
    born: dict[int, list[Prompt]] = {}
    for p in run.prompts:
        if p.op in ("mutation", "crossover"):
            born.setdefault(p.birth_step, []).append(p)
    return [MutationRow(s, by_step_m.get(s), by_step_s.get(s), tuple(born.get(s, ())), s in shown_calls)
            for s in steps]


def pick_samples(samples: Sequence[Sample], k: int) -> list[Sample]:
    """`k` samples spread evenly over the file (the first and the last included)."""
    if k <= 0 or not samples:
        return []
    if len(samples) <= k:
        return list(samples)
    idx = sorted({round(i * (len(samples) - 1) / max(k - 1, 1)) for i in range(k)})
    return [samples[i] for i in idx]


def _script() -> str:
    return (resources.files("espl.trainer") / "templates" / "report.js").read_text(encoding="utf-8")


def render_report(run: Run, samples: int = 6) -> str:
    """The page's HTML (autoescaped: nothing from the run is markup)."""
    import jinja2

    script = _script()
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["shown"] = shown
    env.filters["color"] = color
    env.filters["step1"] = lambda s: s + 1
    template = env.from_string((resources.files("espl.trainer") / "templates" / "report.html.j2").read_text(encoding="utf-8"))
    cfg = run.config
    best = max(run.prompts, key=_rank) if run.prompts else None
    live = [p for p in run.prompts if not p.evicted]
    return template.render(
        run=run, title=run.path.resolve().name or str(run.path), cfg=cfg, best=best, live=live,
        newest=max(live, key=lambda p: p.id) if live else None,
        charts=[reward_chart(run), rating_chart(run), score_chart(run)], tree=lineage(run),
        mutations=mutation_rows(run), samples=pick_samples(run.samples, samples),
        evals=sorted(run.evals, key=lambda e: (e.step, e.kind)),
        pass_ks=sorted({k for e in run.evals for k, _ in e.pass_at_k}),
        script=script, csp_hash=f"sha256-{digest}",
    )


def write_report(run_dir: str | Path, out: str | Path | None = None, samples: int = 6) -> tuple[Path, Run]:
    """Write the report (default RUN_DIR/report.html); returns its path and what was read."""
    run = load_run(run_dir)
    path = Path(out).expanduser() if out is not None else run.path / "report.html"
    if path.is_dir():
        path = path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(run, samples), encoding="utf-8")
    tmp.replace(path)
    return path, run


__all__ = ["Change", "ReportError", "Run", "load_run", "principle_diff", "render_report", "write_report"]
