"""Checkpoints written atomically: everything goes to a fresh temporary directory, which is then renamed
over the old checkpoint. A kill -9 at any moment leaves either the previous checkpoint or the new one.

RUN_DIR/checkpoint/
    state.json       step, pool, metrics rows, config
    adapter.safetensors   the trainable (LoRA) parameters by name
    optimizer.pt     the Adam state
    rng.pt           torch / python / numpy RNG states
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "checkpoint"
OLD = "checkpoint.old"


@dataclass(frozen=True)
class Checkpoint:
    state: dict[str, Any]
    tensors: dict[str, Any]
    optimizer: dict[str, Any] | None
    rng: dict[str, Any] | None


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


def exists(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / NAME / "state.json").is_file() or (run_dir / OLD / "state.json").is_file()


def save(run_dir: Path, state: dict, tensors: dict, optimizer: dict | None, rng: dict | None) -> Path:
    import torch
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    for stale in run_dir.glob(".checkpoint.*"):  # left by a save that was killed part-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".checkpoint."))
    try:
        if tensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "adapter.safetensors"))
        if optimizer is not None:
            torch.save(optimizer, tmp / "optimizer.pt")
        if rng is not None:
            torch.save(rng, tmp / "rng.pt")
        # state.json last: its presence marks a complete checkpoint directory
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        final, old = run_dir / NAME, run_dir / OLD
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)  # a crash right here leaves checkpoint.old, which `load` uses
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load(run_dir: Path) -> Checkpoint:
    import torch
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    for name in (NAME, OLD):
        path = run_dir / name
        if (path / "state.json").is_file():
            break
    else:
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected {run_dir / NAME}/state.json)")
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    tensors = load_file(str(path / "adapter.safetensors")) if (path / "adapter.safetensors").is_file() else {}
    optimizer = torch.load(path / "optimizer.pt", weights_only=False) if (path / "optimizer.pt").is_file() else None
    rng = torch.load(path / "rng.pt", weights_only=False) if (path / "rng.pt").is_file() else None
    return Checkpoint(state, tensors, optimizer, rng)
