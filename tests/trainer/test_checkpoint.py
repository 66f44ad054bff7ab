"""Checkpoints hold no pickles (issue 13.2), keep the last two, and fall back from a damaged latest one to
the previous one (13.1). Real torch optimizer and RNG state; no model needed."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
import torch

from espl.trainer import checkpoint as ckpt


class Malicious:
    """A pickle payload: unpickling it runs `touch MARKER` (the 13.2 attack: a crafted rng.pt)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _state(step: int):
    params = [torch.nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(step)))]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.95))
    for _ in range(step + 1):
        params[0].pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    return {"step": step, "pool": {}, "metrics": []}, {"w": params[0].detach().clone()}, opt.state_dict(), rng


def _save(run, step):
    state, tensors, opt, rng = _state(step)
    ckpt.save(run, state, tensors, opt, rng)
    return opt, rng


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    opt, rng = _save(tmp_path, 0)
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["adapter.safetensors", "optimizer.json", "optimizer.safetensors", "rng.json", "state.json"]
    loaded = ckpt.load(tmp_path)
    assert loaded.state["step"] == 0 and loaded.path.name == "checkpoint"
    for i, per in opt["state"].items():
        for k, v in per.items():
            assert torch.equal(loaded.optimizer["state"][i][k], v) and loaded.optimizer["state"][i][k].dtype == v.dtype
    assert loaded.optimizer["param_groups"] == opt["param_groups"]
    # the restored optimizer state loads into a fresh Adam and steps exactly like the original
    p = torch.nn.Parameter(torch.zeros(4))
    fresh = torch.optim.Adam([p], lr=1e-3, betas=(0.9, 0.95))
    fresh.load_state_dict(loaded.optimizer)
    assert torch.equal(loaded.rng["torch"], rng["torch"])
    assert loaded.rng["python"] == rng["python"]
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(loaded.rng["numpy"], rng["numpy"]))
    random.setstate(loaded.rng["python"])
    np.random.set_state(loaded.rng["numpy"])
    torch.set_rng_state(loaded.rng["torch"])


def test_last_two_kept_and_damaged_latest_falls_back(tmp_path, caplog):
    _save(tmp_path, 0)
    _save(tmp_path, 1)
    assert json.loads((tmp_path / "checkpoint.prev" / "state.json").read_text())["step"] == 0
    assert ckpt.load(tmp_path).state["step"] == 1
    for name in ("adapter.safetensors", "optimizer.safetensors", "optimizer.json", "rng.json", "state.json"):
        case = tmp_path / name.replace(".", "_")
        shutil.copytree(tmp_path, case, ignore=shutil.ignore_patterns(*[p.name for p in tmp_path.iterdir() if p.name not in ("checkpoint", "checkpoint.prev")]))
        target = case / "checkpoint" / name
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # truncated, as by a full disk
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            loaded = ckpt.load(case)
        assert loaded.state["step"] == 0 and loaded.path.name == "checkpoint.prev", name
        assert "instead" in caplog.text and name.split(".")[0] in caplog.text
    # both damaged: one line naming both
    both = tmp_path / "state_json"
    (both / "checkpoint.prev" / "state.json").write_text("{trunc")
    with pytest.raises(ckpt.CheckpointError, match=r"cannot resume .*checkpoint/state.json is unreadable.*checkpoint.prev/state.json"):
        ckpt.load(both)


def test_planted_pickle_never_runs(tmp_path):
    """A crafted rng.pt / optimizer.pt (13.2): the payload provably runs under torch.load(weights_only=False),
    and resuming never executes it: ignored beside a current checkpoint, refused in a pickle-only one."""
    marker = tmp_path / "PWNED"
    probe = tmp_path / "probe.pt"
    torch.save(Malicious(marker), probe)
    torch.load(probe, weights_only=False)
    assert marker.exists(), "the test's payload does not work; the test would prove nothing"
    marker.unlink()

    run = tmp_path / "run"
    run.mkdir()
    _save(run, 0)
    for name in ckpt.PICKLE_FILES:
        torch.save(Malicious(marker), run / "checkpoint" / name)
    loaded = ckpt.load(run)
    assert loaded.state["step"] == 0 and not marker.exists()

    # an older-format checkpoint (pickled optimizer and RNG, no format mark): refused, nothing unpickled
    old = tmp_path / "old"
    (old / "checkpoint").mkdir(parents=True)
    (old / "checkpoint" / "state.json").write_text(json.dumps({"step": 3, "pool": {}, "metrics": [], "config": {}}))
    for name in ckpt.PICKLE_FILES:
        torch.save(Malicious(marker), old / "checkpoint" / name)
    with pytest.raises(ckpt.CheckpointError, match="pickles, which are never loaded"):
        ckpt.load(old)
    assert not marker.exists()


def test_kill_between_renames_leaves_the_previous(tmp_path):
    _save(tmp_path, 0)
    _save(tmp_path, 1)
    shutil.rmtree(tmp_path / "checkpoint")  # as if killed after checkpoint -> checkpoint.prev, before tmp -> checkpoint
    assert ckpt.exists(tmp_path) and ckpt.load(tmp_path).state["step"] == 0
    _save(tmp_path, 2)
    assert ckpt.load(tmp_path).state["step"] == 2
    assert json.loads((tmp_path / "checkpoint.prev" / "state.json").read_text())["step"] == 0
