"""Rollouts on a Ray cluster: `RayRollout.rollout(...)` is a drop-in for `espl.agents.rollout.rollout`.

    rr = RayRollout(WorkerPolicy.hf("smollm2-135m", lora=LoraSettings(r=16)), num_workers=4)
    trajs = rr.rollout("espl/Math-v0", policy, episodes, params)   # same arguments, same result
    rr.close()

- **Workers.** Each Ray actor builds its policy once (an `HFPolicy` on its own device, or an `OpenAIPolicy`
  talking to a server) from a picklable recipe (`WorkerPolicy`, or any zero-argument callable returning a
  `Policy`), and runs the ordinary `rollout` on the episodes it is given: env stepping, tools and sandboxes
  all happen on the worker, generation is batched across the worker's episodes as it is locally.
- **Same results as the local backend.** Episodes are split into contiguous chunks after each got its own
  sampling seed (`with_sample_seeds`: from `params.seed` and its index in the whole request), and every
  episode samples from its own seed stream, so a chunk on a worker gives the trajectories the same
  episodes give in one local call (token ids identical; log-probs equal up to float rounding of batched
  matmuls). Trajectories come back in episode order.
- **Weights.** When the `policy` passed to `rollout` carries a LoRA adapter (a trainable `HFPolicy`), its
  adapter weights are pushed to every worker before the episodes are (one `ray.put`, fetched by each
  worker), so rollouts after a trainer update always use the updated weights. `sync_weights(state_dict)`
  pushes explicitly.
- **Faults.** A worker that dies mid-rollout (killed, node lost, out of memory) is replaced by a fresh one
  (with the current adapter weights) and its unfinished chunk is queued again; a chunk's result is
  accepted once, so nothing is counted twice, and the call completes. A chunk that fails `max_attempts`
  times raises `RolloutError` with the trajectories finished so far. An error raised by the rollout
  itself (a bug, a backend that stayed down) is not retried: it is raised with the finished trajectories.

Network: a cluster started here (`address=None`) binds to 127.0.0.1 only and has Ray's usage-stats reporting
turned off (`RAY_USAGE_STATS_ENABLED=0`) unless the environment says otherwise.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from espl.agents.errors import RolloutError
from espl.agents.policy import AdapterFilePolicy, Policy, PolicySpec, TrainablePolicy, build_policy
from espl.agents.rollout import Episode, RolloutStats, rollout, with_sample_seeds
from espl.types import SamplingParams, Trajectory

log = logging.getLogger(__name__)

def write_peft_adapter(directory: str | os.PathLike, config: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """Write a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) from a LoRA config
    dict and a PEFT state dict: what engines that load adapters from disk (vLLM) take."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(dict(config), default=_jsonable, indent=1))
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "adapter_model.safetensors"))
    return str(d)


def _jsonable(x: Any) -> Any:
    if isinstance(x, (set, frozenset, tuple)):
        return sorted(x) if isinstance(x, (set, frozenset)) else list(x)
    return str(x)


@dataclass(frozen=True)
class WorkerPolicy:
    """How each worker builds its policy: a `PolicySpec`, built there by `build_policy`.

    The driver's policy object never travels (a model does not pickle cheaply); each worker builds its own.
    `torch_threads` caps the CPU threads of a worker's torch (one per CPU Ray gives the worker is right).
    """

    spec: PolicySpec
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.spec, PolicySpec):
            raise ValueError(f"spec: must be a PolicySpec (backend, model, ...), got {self.spec!r}")
        if self.spec.backend == "llamacpp":
            raise ValueError("backend: a llama.cpp server per Ray worker is not supported; start one server and "
                             "give the workers PolicySpec(backend='openai', base_url=its URL)")

    @property
    def backend(self) -> str:
        return self.spec.backend

    @classmethod
    def hf(cls, model: str = "smollm2-135m", **spec_fields: Any) -> "WorkerPolicy":
        """An HF policy on each worker (e.g. `lora=LoraSettings(...)`, `device="cuda"`): PolicySpec fields."""
        return cls(PolicySpec(backend="hf", model=model, **spec_fields))

    @classmethod
    def vllm(cls, model: str = "smollm2-135m", **spec_fields: Any) -> "WorkerPolicy":
        """A vLLM engine on each worker (its own GPU: `gpus_per_worker=1`); the driver's LoRA adapter reaches
        it as a PEFT directory written on the worker (`load_adapter`)."""
        return cls(PolicySpec(backend="vllm", model=model, **spec_fields))

    @classmethod
    def openai(cls, **spec_fields: Any) -> "WorkerPolicy":
        """An OpenAI-compatible client on each worker (base_url, model, tool_format, ...: PolicySpec fields)."""
        return cls(PolicySpec(backend="openai", **spec_fields))

    @classmethod
    def from_policy(cls, policy: Any, device: str | None = None) -> "WorkerPolicy":
        """The recipe that rebuilds `policy` on a worker: its `policy_spec()` (HF loaded by name, or a client)."""
        if isinstance(policy, RebuildablePolicy):
            return cls(policy.policy_spec(device))
        raise ValueError(f"policy: cannot derive a worker recipe from a {type(policy).__name__}; pass "
                         "policy_factory=WorkerPolicy(PolicySpec(...)) or a zero-argument callable returning a Policy")

    def build(self) -> Policy:
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        return build_policy(self.spec)


@runtime_checkable
class RebuildablePolicy(Protocol):
    """A policy that can say how to build it again elsewhere (HFPolicy loaded by name, OpenAIPolicy)."""

    def policy_spec(self, device: str | None = None) -> PolicySpec: ...


PolicyFactory = WorkerPolicy | Callable[[], Policy]


def loopback_only() -> None:
    """Make a Ray instance started by this process bind 127.0.0.1 and send no usage statistics.

    Ray binds a local instance to the host's address unless it runs in its single-machine mode, which it
    reads from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 when `ray` is first imported; worker processes inherit
    the variable. The environment wins where the user set these variables.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if "ray" in sys.modules and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        from ray._private import ray_constants  # imported before we set the variable: apply it here too

        ray_constants.ENABLE_RAY_CLUSTER = False


class RolloutWorker:
    """The Ray actor: one policy, built once; runs `rollout` on the chunks it is sent."""

    def __init__(self, factory: PolicyFactory, adapter: dict[str, Any] | None = None):
        import espl  # noqa: F401  (registers the espl/* envs in this worker process)

        self.policy = factory.build() if isinstance(factory, WorkerPolicy) else factory()
        self.adapter_version = -1
        self._adapter_root: str | None = None  # PEFT directories written for AdapterFilePolicy engines
        self.working = 0  # episodes of the chunk in progress (read by `busy` from Ray's second actor thread)
        if adapter is not None:
            self.load_adapter(adapter)

    def pid(self) -> int:
        return os.getpid()

    def busy(self) -> int:
        """How many episodes this worker is rolling out right now (0: idle)."""
        return self.working

    def version(self) -> int:
        """The version of the last adapter loaded (-1: none)."""
        return self.adapter_version

    def load_adapter(self, adapter: dict[str, Any]) -> int:
        """Load LoRA weights ({"version": int, "state": PEFT state dict, "config": LoRA config dict}) into
        this worker's policy: in place for a trainable policy (HF + PEFT), through a PEFT directory for engines
        that load adapters from disk (vLLM)."""
        if isinstance(self.policy, TrainablePolicy):
            self.policy.load_peft_adapter(adapter["state"])
        elif isinstance(self.policy, AdapterFilePolicy):
            import tempfile

            if self._adapter_root is None:
                self._adapter_root = tempfile.mkdtemp(prefix="espl-ray-adapter-")
            path = write_peft_adapter(os.path.join(self._adapter_root, f"v{adapter['version']}"),
                                      adapter["config"], adapter["state"])
            self.policy.load_adapter(path)
        else:
            raise ValueError(f"adapter: this worker's {type(self.policy).__name__} takes no LoRA adapter; give the "
                             "workers a spec with lora=LoraSettings(...) matching the driver's")
        self.adapter_version = int(adapter["version"])
        return self.adapter_version

    def run(self, env: Any, episodes: list[Episode], params: SamplingParams, env_kwargs: dict[str, Any] | None,
            max_batch: int | None) -> tuple[list[Trajectory], RolloutStats, int]:
        st = RolloutStats()
        self.working = len(episodes)
        try:
            trajs = rollout(env, self.policy, episodes, params, env_kwargs=env_kwargs, max_batch=max_batch, stats=st)
        finally:
            self.working = 0
        return trajs, st, os.getpid()


@dataclass
class DistributedStats:
    """What the last `rollout` call did on the cluster."""

    chunks: int = 0
    retried_chunks: int = 0
    dead_workers: int = 0
    seconds: float = 0.0
    worker_pids: dict[int, int] = field(default_factory=dict)  # chunk -> pid of the worker that finished it


def _merge(into: RolloutStats, part: RolloutStats) -> None:
    into.generate_s += part.generate_s
    into.env_s += part.env_s
    into.render_s += part.render_s
    into.rounds += part.rounds
    into.generated_tokens += part.generated_tokens
    into.batch_sizes.extend(part.batch_sizes)


class RayRollout:
    """`rollout(...)` over `num_workers` Ray actors; see the module docstring.

    address: None starts a private local Ray instance on 127.0.0.1 (shut down by `close()`); "auto" or
    "HOST:PORT" / "ray://HOST:PORT" joins a running cluster, whose nodes must have espl-gym installed (or
    pass `runtime_env`). If Ray is already initialised in this process, that cluster is used as it is.
    chunk_size: episodes per task (default: an even split, one chunk per worker: the largest batches).
    on_dispatch(chunk_index, actor): called after a chunk is sent to an actor (tests use it to kill one).
    """

    def __init__(
        self,
        policy_factory: PolicyFactory,
        *,
        address: str | None = None,
        num_workers: int = 2,
        cpus_per_worker: float = 1,
        gpus_per_worker: float = 0,
        chunk_size: int | None = None,
        max_attempts: int = 3,
        runtime_env: dict[str, Any] | None = None,
        init_kwargs: dict[str, Any] | None = None,
        on_dispatch: Callable[[int, Any], None] | None = None,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers: must be >= 1, got {num_workers}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {max_attempts}")
        if not isinstance(policy_factory, WorkerPolicy) and not callable(policy_factory):
            raise TypeError("policy_factory: must be a WorkerPolicy or a zero-argument callable returning a Policy")
        if isinstance(policy_factory, WorkerPolicy) and policy_factory.torch_threads is None and gpus_per_worker == 0:
            policy_factory = replace(policy_factory, torch_threads=max(1, int(cpus_per_worker)))
        if address is None:
            loopback_only()
        import ray

        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if address is None:
                kw["num_cpus"] = max(1, math.ceil(num_workers * cpus_per_worker))
                if gpus_per_worker:
                    kw["num_gpus"] = math.ceil(num_workers * gpus_per_worker)
            else:
                kw = {"address": address}
            if runtime_env:
                kw["runtime_env"] = runtime_env
            kw.update(init_kwargs or {})
            ray.init(**kw)
            self._owns_ray = True
        self._factory = policy_factory
        # max_concurrency=2: `busy`/`pid` answer while `run` works (the driver never sends two runs at once)
        self._actor_cls = ray.remote(  # type: ignore[call-overload]  # ray's stubs lack max_concurrency
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0,
            max_concurrency=2)(RolloutWorker)
        self.num_workers = num_workers
        self.chunk_size = chunk_size
        self.max_attempts = max_attempts
        self.on_dispatch = on_dispatch
        self._adapter_ref: Any = None
        self._adapter_version = 0
        self._actors = [self._new_actor() for _ in range(num_workers)]
        ray.get([a.pid.remote() for a in self._actors])  # fail here, not mid-rollout, if a worker cannot start
        self.last = DistributedStats()

    # ---- workers and weights ----------------------------------------------------------------------------
    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self._factory, self._adapter_ref)

    @property
    def actors(self) -> list[Any]:
        return list(self._actors)

    @property
    def adapter_version(self) -> int:
        """How many adapter pushes this RayRollout made (0: none yet)."""
        return self._adapter_version

    def sync_weights(self, state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> None:
        """Push LoRA adapter weights (a PEFT state dict, `get_peft_model_state_dict(model)`) to every worker;
        workers started later (replacements) load them too. `config` (the LoRA config as a dict) is needed
        by workers that load adapters from disk (vLLM)."""
        self._adapter_version += 1
        state = {k: v.detach().to("cpu") for k, v in state_dict.items()}
        self._adapter_ref = self._ray.put({"version": self._adapter_version, "state": state,
                                           "config": dict(config) if config is not None else None})
        self._ray.get([a.load_adapter.remote(self._adapter_ref) for a in self._actors])

    def _sync_from(self, policy: Any) -> None:
        adapter = policy.peft_adapter() if isinstance(policy, TrainablePolicy) else None
        if adapter is not None:
            self.sync_weights(*adapter)

    # ---- the rollout -------------------------------------------------------------------------------------
    def rollout(
        self,
        env: Any,
        policy: Policy | None,
        episodes: Sequence[Episode],
        params: SamplingParams,
        *,
        env_kwargs: dict[str, Any] | None = None,
        max_batch: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        stats: RolloutStats | None = None,
    ) -> list[Trajectory]:
        """Same contract as `espl.agents.rollout.rollout`. `policy` (the driver's) is used only for its LoRA
        weights, pushed to the workers first; generation happens on the workers' own policies."""
        ray = self._ray
        t_start = time.perf_counter()
        episodes = with_sample_seeds(list(episodes), params)
        if params.seed is None:  # fixed here, so a chunk that is retried samples what it would have sampled
            episodes = [ep if ep.sample_seed is not None else replace(ep, sample_seed=random.getrandbits(62))
                        for ep in episodes]
        if not episodes:
            return []
        if policy is not None:
            self._sync_from(policy)
        size = self.chunk_size or math.ceil(len(episodes) / self.num_workers)
        chunks = [list(range(i, min(i + size, len(episodes)))) for i in range(0, len(episodes), size)]
        run = DistributedStats(chunks=len(chunks))
        self.last = run  # filled in as the call goes, so it also describes a call that raised
        queue = deque(range(len(chunks)))
        idle = deque(range(len(self._actors)))
        in_flight: dict[Any, tuple[int, int]] = {}  # object ref -> (chunk, actor slot)
        attempts = [0] * len(chunks)
        results: dict[int, list[Trajectory]] = {}
        st = stats if stats is not None else RolloutStats()
        actor_died = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)

        def finished() -> dict[int, Trajectory]:
            return {i: t for c, ts in results.items() for i, t in zip(chunks[c], ts)}

        while len(results) < len(chunks):
            while queue and idle:
                c, slot = queue.popleft(), idle.popleft()
                attempts[c] += 1
                actor = self._actors[slot]
                ref = actor.run.remote(env, [episodes[i] for i in chunks[c]], params, env_kwargs, max_batch)
                in_flight[ref] = (c, slot)
                if self.on_dispatch is not None:
                    self.on_dispatch(c, actor)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                c, slot = in_flight.pop(ref)
                try:
                    trajs, part, pid = ray.get(ref)
                except actor_died as exc:
                    run.dead_workers += 1
                    log.warning("ray worker %d died during chunk %d (%s); starting a replacement and retrying "
                                "the chunk", slot, c, type(exc).__name__)
                    self._actors[slot] = self._new_actor()
                    idle.append(slot)
                    if attempts[c] >= self.max_attempts:
                        raise RolloutError(f"rollout stopped: chunk {c} ({len(chunks[c])} episodes) lost its worker "
                                           f"{attempts[c]} times (max_attempts)", finished(), exc) from exc
                    run.retried_chunks += 1
                    queue.appendleft(c)
                    continue
                except ray.exceptions.RayTaskError as exc:  # the rollout itself raised: not a worker fault
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    done = finished()
                    if isinstance(cause, RolloutError):
                        done.update({chunks[c][i]: t for i, t in cause.trajectories.items()})
                    raise RolloutError(f"rollout stopped on a worker: {cause}", done, cause) from exc
                idle.append(slot)
                if c in results:  # a chunk is counted once, whatever happened to earlier attempts
                    continue
                results[c] = trajs
                run.worker_pids[c] = pid
                _merge(st, part)
                if progress is not None:
                    progress(sum(len(chunks[k]) for k in results), len(episodes))
        run.seconds = time.perf_counter() - t_start
        st.total_s += run.seconds
        out = finished()
        return [out[i] for i in range(len(episodes))]

    __call__ = rollout

    # ---- lifetime ----------------------------------------------------------------------------------------
    def close(self) -> None:
        for a in self._actors:
            try:
                self._ray.kill(a)
            except Exception:  # already dead
                pass
        self._actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> "RayRollout":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
