"""Checkpoints: atomic, the last two kept, and no pickles.

RUN_DIR/checkpoint/           the latest checkpoint
RUN_DIR/checkpoint.prev/      the one before it (the fallback when the latest is damaged)
    state.json                step, pool, metrics rows, config, and the sha256 of every other file (written last)
    adapter.safetensors       the trainable (LoRA) parameters by name
    optimizer.safetensors     the optimizer's per-parameter tensors ("state/<index>/<name>")
    optimizer.json            the optimizer's param_groups and any non-tensor state
    rng.json                  torch / python / numpy RNG states as numbers

RUN_DIR/best/                 the checkpoint after the step with the best held-out score (`save_best`): the same
    best.json                 files, plus the record of why: step, score, which prompt (trainer/heldout.py)

Nothing here is unpickled: tensors are safetensors, the rest is JSON, so a shared or downloaded run dir cannot
run code when it is resumed (`torch.load` of a pickle can). Files such as `optimizer.pt` / `rng.pt` (older
espl-gym versions wrote them) are never opened; a checkpoint made only of such files is refused.

Each save writes a fresh temporary directory, then renames `checkpoint` to `checkpoint.prev` and the temporary
directory to `checkpoint`: a kill -9 at any moment leaves at least one complete checkpoint. `load` checks the
latest against the hashes in its state.json and falls back to the previous one, saying why, when it is damaged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from espl.agents.models import file_sha256

log = logging.getLogger(__name__)

NAME = "checkpoint"
PREVIOUS = "checkpoint.prev"
OLD = PREVIOUS  # the name other modules read as "the fallback checkpoint"
_LEGACY_OLD = "checkpoint.old"  # a save of an older version killed between its two renames leaves this
FORMAT = 2  # state.json "format"; checkpoints without it are the older pickle-based layout
PICKLE_FILES = ("optimizer.pt", "rng.pt")


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message says why in one line."""


@dataclass(frozen=True)
class Checkpoint:
    state: dict[str, Any]
    tensors: dict[str, Any]
    optimizer: dict[str, Any] | None  # a torch optimizer state_dict
    rng: dict[str, Any] | None  # {"torch": ByteTensor, "python": random state tuple, "numpy": numpy state tuple}
    path: Path  # the directory it was read from (checkpoint or checkpoint.prev)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` via a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _candidates(run_dir: Path) -> list[Path]:
    return [run_dir / n for n in (NAME, PREVIOUS, _LEGACY_OLD) if (run_dir / n / "state.json").is_file()]


def exists(run_dir: Path) -> bool:
    return bool(_candidates(Path(run_dir)))


# ---- optimizer and RNG state without pickles ----------------------------------------------------------------


def _split_optimizer(sd: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """A torch optimizer state_dict as (tensors for safetensors, JSON-able rest)."""
    import torch

    tensors: dict[str, Any] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def _join_optimizer(tensors: dict[str, Any], rest: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest.get("plain_state", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for g in rest["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):  # JSON has no tuples; Adam's betas are a tuple
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _rng_to_json(rng: dict) -> dict:
    version, internal, gauss = rng["python"]
    name, keys, pos, has_gauss, cached = rng["numpy"]
    return {"torch": [int(b) for b in rng["torch"].tolist()],
            "python": [version, list(internal), gauss],
            "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}


def _rng_from_json(data: dict) -> dict:
    import numpy as np
    import torch

    version, internal, gauss = data["python"]
    name, keys, pos, has_gauss, cached = data["numpy"]
    return {"torch": torch.tensor(data["torch"], dtype=torch.uint8),
            "python": (int(version), tuple(int(x) for x in internal), gauss),
            "numpy": (str(name), np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))}


# ---- save / load --------------------------------------------------------------------------------------------


def _write_dir(tmp: Path, state: dict, tensors: dict, optimizer: dict | None, rng: dict | None,
               extra: dict[str, Any] | None = None) -> None:
    """A checkpoint's files into the (new, empty) directory `tmp`; `extra`: more JSON files by name."""
    from safetensors.torch import save_file

    if tensors:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "adapter.safetensors"))
    if optimizer is not None:
        opt_tensors, opt_rest = _split_optimizer(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_rest), encoding="utf-8")
    if rng is not None:
        (tmp / "rng.json").write_text(json.dumps(_rng_to_json(rng)), encoding="utf-8")
    for name, data in (extra or {}).items():
        (tmp / name).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
    # state.json last: its presence marks a complete checkpoint directory; its hashes cover the others
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        json.dump({**state, "format": FORMAT, "files": files}, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)


def save(run_dir: Path, state: dict, tensors: dict, optimizer: dict | None, rng: dict | None) -> Path:
    run_dir = Path(run_dir)
    for stale in run_dir.glob(".checkpoint.*"):  # left by a save that was killed part-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".checkpoint."))
    try:
        _write_dir(tmp, state, tensors, optimizer, rng)
        final, prev = run_dir / NAME, run_dir / PREVIOUS
        if final.exists():
            if prev.exists():
                shutil.rmtree(prev)
            os.replace(final, prev)  # a crash right here leaves checkpoint.prev, which `load` uses
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        shutil.rmtree(run_dir / _LEGACY_OLD, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


BEST = "best"
_BEST_PREV = "best.prev"  # the best checkpoint being replaced; exists only if a save_best was killed mid-way
BEST_RECORD = "best.json"


def save_best(run_dir: Path, record: dict[str, Any], state: dict, tensors: dict, optimizer: dict | None,
              rng: dict | None) -> Path:
    """Replace RUN_DIR/best with this checkpoint and its `record` (best/best.json: step, score, prompt), atomically:
    the new one is complete in a temporary directory before the old one is renamed away, and `read_best` falls
    back to that old one when a kill lands between the two renames."""
    run_dir = Path(run_dir)
    for stale in run_dir.glob(".best.*"):  # left by a save_best that was killed part-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".best."))
    try:
        _write_dir(tmp, state, tensors, optimizer, rng, {BEST_RECORD: record})
        final, prev = run_dir / BEST, run_dir / _BEST_PREV
        if final.exists():
            if prev.exists():
                shutil.rmtree(prev)
            os.replace(final, prev)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        shutil.rmtree(prev, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_best(run_dir: Path) -> dict[str, Any] | None:
    """best/best.json of a run (None when it has no best checkpoint yet), checked with the rest of that
    checkpoint; a damaged best/ falls back to best.prev, else is ignored with a warning (a new best replaces it)."""
    run_dir = Path(run_dir)
    for name in (BEST, _BEST_PREV):
        path = run_dir / name
        if not (path / "state.json").is_file():
            continue
        try:
            _load_dir(path)
            record = json.loads((path / BEST_RECORD).read_text(encoding="utf-8"))
            float(record["score"]), int(record["step"])
            return dict(record)
        except (CheckpointError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("best checkpoint %s is unusable (%s); the next held-out improvement replaces it", path, exc)
    return None


def _load_dir(path: Path) -> Checkpoint:
    """One checkpoint directory, checked; CheckpointError (one line) when it is incomplete or damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name}/state.json is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path.name}/state.json is not a checkpoint state (no 'step')")
    if state.get("format") != FORMAT:
        pickles = [n for n in PICKLE_FILES if (path / n).exists()]
        raise CheckpointError(
            f"{path.name} was written by an older espl-gym ({', '.join(pickles) or 'no format mark'}): its optimizer "
            "and RNG state are pickles, which are never loaded because a pickle can run code; start a new run "
            "(or evaluate it with `espl eval --from-run`, which reads only the adapter and the pool)")
    for name, digest in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path.name}/{name} is missing")
        if file_sha256(file) != digest:
            raise CheckpointError(f"{path.name}/{name} is damaged (its sha256 differs from state.json's)")
    ignored = [n for n in PICKLE_FILES if (path / n).exists()]
    if ignored:
        log.warning("checkpoint %s: ignoring %s (pickles are never loaded)", path, ", ".join(ignored))
    files = state.get("files", {})
    try:
        tensors = load_file(str(path / "adapter.safetensors")) if "adapter.safetensors" in files else {}
        optimizer = None
        if "optimizer.safetensors" in files:
            rest = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
            optimizer = _join_optimizer(load_file(str(path / "optimizer.safetensors")), rest)
        rng = _rng_from_json(json.loads((path / "rng.json").read_text(encoding="utf-8"))) if "rng.json" in files else None
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path.name} is damaged ({type(exc).__name__}: {exc})") from None
    return Checkpoint(state, tensors, optimizer, rng, path)


def load(run_dir: Path, warn: bool = True) -> Checkpoint:
    """The latest usable checkpoint of a run: `checkpoint`, else (with a warning saying why, unless `warn` is
    False) `checkpoint.prev`."""
    run_dir = Path(run_dir)
    candidates = _candidates(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {run_dir / NAME}/state.json)")
    problems = []
    for path in candidates:
        try:
            loaded = _load_dir(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if problems and warn:
            log.warning("the latest checkpoint is unusable (%s); resuming from %s (step %s) instead",
                        "; ".join(problems), path, loaded.state["step"])
        return loaded
    raise CheckpointError(f"cannot resume {run_dir}: " + "; ".join(problems))
