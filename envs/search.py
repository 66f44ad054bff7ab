"""`espl/Search-v0`: agentic search over an offline corpus with BM25 retrieval (the E-SPL paper's search setting).

The agent gets a two-hop question about a fictional world (envs/search_corpus.py), and two tools:
`search(query)` returns the top-k articles (id, title, best-matching sentence) ranked by BM25 (`bm25s`), and
`open(doc_id)` returns an article's full text. The answer is only in the corpus. A reply without a tool call is
the final answer; it is read from its last `Answer:` line (else `\\boxed{}`, else its last line) and checked
against the gold answer (and its aliases) after SQuAD-style normalisation (lower case, no punctuation, no
articles, single spaces):

- `reward="em"` (default): 1.0 on a normalised exact match, else 0.0.
- `reward="f1"`: the token-level F1 between the prediction and the best alias (partial credit).

`info` always carries both `em` and `f1`. The BM25 index is built once per process and world (cached);
`search_index().build_seconds` says how long that took.
"""

from __future__ import annotations

import random
import re
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, ClassVar, Literal, Sequence

from espl.envs.core import Split, Task
from espl.envs.search_corpus import Document, World, build_world
from espl.envs.tool_env import ToolEnv

RewardKind = Literal["em", "f1"]
SNIPPET_CHARS = 200

PROMPT = (
    "Answer the question using the search tools. The answer is in the document collection, not in your "
    "memory: use search(query) to find documents and open(doc_id) to read one. When you know the answer, "
    "reply without a tool call and end with a line 'Answer: <answer>'.\n\nQuestion: {question}"
)


# ---- answer checking (pure functions) -------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ANSWER_LINE = re.compile(r"answer\s*[:：]\s*(.+)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def extract_text_answer(reply: str) -> str | None:
    """The answer a reply states: its last `Answer:` line, else its last `\\boxed{}`, else its last non-empty
    line; None for an empty reply."""
    lines = _ANSWER_LINE.findall(reply or "")
    if lines:
        return lines[-1].strip()
    boxed = _BOXED.findall(reply or "")
    if boxed:
        return boxed[-1].strip()
    rest = [ln.strip() for ln in (reply or "").splitlines() if ln.strip()]
    return rest[-1] if rest else None


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best token-level F1 (SQuAD) between the prediction and any gold alias."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref or common == 0:
            continue
        p, r = common / len(pred), common / len(ref)
        best = max(best, 2 * p * r / (p + r))
    return best


# ---- the index ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    doc: Document
    score: float
    snippet: str


class SearchIndex:
    """BM25 over a world's documents (title + text), built once; `search` is safe to call from threads."""

    def __init__(self, world: World):
        import bm25s
        from bm25s.tokenization import Tokenizer

        start = time.perf_counter()
        self.world = world
        self.docs = world.documents
        self._by_id = {d.id: d for d in self.docs}
        self._by_title = {d.title.lower(): d for d in self.docs}
        self._tokenizer = Tokenizer(stopwords="en")
        tokens = self._tokenizer.tokenize([f"{d.title}. {d.text}" for d in self.docs], show_progress=False)
        self._bm25 = bm25s.BM25()
        self._bm25.index(tokens, show_progress=False)
        self._lock = threading.Lock()  # bm25s' tokenizer keeps internal state; keep queries one at a time
        self.build_seconds = time.perf_counter() - start  # measured, reported; never put in env info

    def search(self, query: str, k: int = 5) -> list[Hit]:
        with self._lock:
            q = self._tokenizer.tokenize([query], update_vocab=False, show_progress=False)
            if not any(len(t) for t in q):  # only stopwords or unknown words
                return []
            ids, scores = self._bm25.retrieve(q, k=min(k, len(self.docs)), show_progress=False, n_threads=0)
        words = set(normalize_answer(query).split())
        hits = []
        for idx, score in zip(ids[0], scores[0]):
            if score <= 0:
                continue
            doc = self.docs[int(idx)]
            hits.append(Hit(doc, float(score), _best_sentence(doc.text, words)))
        return hits

    def get(self, doc_id_or_title: str) -> Document | None:
        key = doc_id_or_title.strip()
        return self._by_id.get(key) or self._by_id.get(key.lower()) or self._by_title.get(key.lower())


def _best_sentence(text: str, words: set[str]) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", text)
    best = max(sentences, key=lambda s: len(words & set(normalize_answer(s).split())))  # first one on ties
    return best if len(best) <= SNIPPET_CHARS else best[: SNIPPET_CHARS - 3] + "..."


@lru_cache(maxsize=4)
def search_index(world_seed: int = 0) -> SearchIndex:
    """The BM25 index of a world, built on first use in the process and cached."""
    return SearchIndex(build_world(world_seed))


# ---- the env ------------------------------------------------------------------------------------------
class SearchEnv(ToolEnv):
    """Two-hop questions about a fictional world; search(query) and open(doc_id) tools over a BM25 corpus."""

    family: ClassVar[str] = "search"
    description: ClassVar[str] = (
        "Agentic search: two-hop questions answered from an offline fictional corpus with BM25 search/open tools")
    default_max_turns: ClassVar[int] = 8

    def __init__(self, *, split: Split = "train", max_turns: int | None = None, reward: RewardKind = "em",
                 top_k: int = 5, world_seed: int = 0, describe_tools_in_prompt: bool = False,
                 render_mode: str | None = None):
        if reward not in ("em", "f1"):
            raise ValueError(f"reward: must be 'em' or 'f1', got {reward!r}")
        if not isinstance(top_k, int) or not 1 <= top_k <= 50:
            raise ValueError(f"top_k: must be an int in [1, 50], got {top_k!r}")
        self.reward_kind: RewardKind = reward
        self.top_k = top_k
        self.index = search_index(world_seed)
        questions = list(self.index.world.split_questions(split))
        # a fixed shuffle, so consecutive seeds do not ask the same company's seven questions in a row
        random.Random(f"espl-search-{split}").shuffle(questions)
        self.questions = tuple(questions)
        super().__init__(split=split, max_turns=max_turns, describe_tools_in_prompt=describe_tools_in_prompt,
                         render_mode=render_mode)

    def tool_functions(self) -> Sequence[Callable[..., Any]]:
        index, top_k = self.index, self.top_k

        def search(query: str) -> str:
            """Search the document collection; returns the best-matching documents with a snippet each.

            Args:
                query: Keywords to look for, e.g. a name and what you want to know about it.
            """
            hits = index.search(query, k=top_k)
            if not hits:
                return f"No documents match {query!r}. Try other keywords (names work best)."
            return "\n".join(f"[{h.doc.id}] {h.doc.title}: {h.snippet}" for h in hits)

        def open(doc_id: str) -> str:  # noqa: A001 - the tool's name, as the paper's agent calls it
            """Open a document and return its full text.

            Args:
                doc_id: The document id shown by search, e.g. "d0042" (a document title also works).
            """
            doc = index.get(doc_id)
            if doc is None:
                raise KeyError(f"no document {doc_id!r}; use an id from the search results, e.g. 'd0042'")
            return f"[{doc.id}] {doc.title}\n{doc.text}"

        return [search, open]

    def num_tasks(self) -> int:
        return len(self.questions)

    def make_task(self, index: int) -> Task:
        q = self.questions[index % len(self.questions)]
        return Task(id=f"search-{self.split}-{q.id}", prompt=PROMPT.format(question=q.question), answer=q.answer,
                    data={"question": q.question, "aliases": list(q.aliases), "kind": q.kind, "hops": list(q.hops)})

    def grade_answer(self, text: str, task: Task) -> tuple[float, str, dict[str, Any]]:
        pred = extract_text_answer(text)
        if pred is None:
            return 0.0, "no_answer", {"em": 0.0, "f1": 0.0, "prediction": None}
        golds = task.data["aliases"]
        em, f1 = exact_match(pred, golds), token_f1(pred, golds)
        reward = em if self.reward_kind == "em" else f1
        return reward, ("correct" if em == 1.0 else "wrong_answer"), {"em": em, "f1": f1, "prediction": pred}
