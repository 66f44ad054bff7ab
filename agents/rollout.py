"""The rollout loop: many episodes stepped concurrently, generation batched across all live episodes.

    trajs = rollout("espl/Math-v0", policy, [Episode(seed=i, system_prompt=p) for i in range(32)],
                    SamplingParams(temperature=0.7, max_new_tokens=256, seed=0))

- One `Trajectory` per `Episode`, in order. Each round, every live episode contributes one prompt and the
  policy gets them as one batch (`max_batch` caps how many episodes are live at once).
- Token-exact for trainable backends (`TokenPolicy`, e.g. `HFPolicy`): turn 1's prompt is rendered by the
  chat template; turn k>1's prompt is turn k-1's prompt ids + its generated ids + the tokens of the env's new
  messages alone (`ChatRenderer.continuation`), never the conversation re-tokenised from text.
  `Trajectory.token_ids` is the last prompt + last reply; `mask` is 1 exactly on policy-sampled tokens;
  `logprobs` their sampling-time log-probs (0.0 elsewhere); `rendered_prompt` the first prompt as the model
  saw it (with any default system message the template inserts, e.g. Qwen's "You are Qwen...").
- Other backends (OpenAI-compatible servers) get the conversation as messages; the token fields stay empty.
- Tools: when the env has `tools` (JSON schemas), they are passed to `policy.generate(tools=...)`. Tool
  calls that the env parsed out of the reply text (`info["parsed_tool_calls"]`) are attached to the
  assistant message kept in the trajectory.
- Tool grammar (`params.tool_grammar` not "off", agents/tool_grammar.py): every row with tools is decoded
  under the grammar of its env's tools (token backends get them per row, with the env's `parallel_tool_calls`
  and the reply's mode: "call_then_answer" is "required" for an episode's first reply, "answer" after); on the
  token-exact path the trajectory's `tool_grammar` records the tools and the token range and mode of each
  constrained reply, which `trajectory_logprobs` replays to rebuild the masks.
- A reply cut by the token budget (`finish_reason == "length"`) goes to the env as it is, to be scored;
  the trajectory's `info["truncated_reply"]` counts such replies.
- Each row has its own context budget. An episode whose next prompt fills the model's context (a token
  backend's `finish_reason == "context_overflow"`) ends there: `reason == "context_overflow"`,
  `truncated=True`, `info["context_overflow"] = True`, reward as accumulated so far; the other episodes
  of its batch are unaffected. (`evaluate` counts these episodes: `EvalResult.context_overflows`.)
- Reproducible, per episode: each episode samples from its own seed stream (`Episode.sample_seed`, or by
  default one derived from `params.seed` and the episode's index), turn k of it from a seed derived from
  that and k. So an episode's trajectory does not depend on which other episodes share its batch, and
  splitting the episodes across workers (agents/distributed.py) gives what one local call gives, up to
  float rounding of batched matmuls. `params.seed=None` samples freshly. (Text backends without per-row
  seeds get one seed per round.) OpenAI-compatible servers get the episode's seed in each request; whether
  the server's sampling then ignores its own batching is up to the server.
- A backend failure (after the backend's own retries) raises `RolloutError` carrying the trajectories that
  finished before it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

import gymnasium as gym

from espl.agents.errors import GenerationError, RolloutError
from espl.agents.policy import Policy, TokenPolicy
from espl.agents.tool_grammar import reply_mode
from espl.seeds import mix_seed
from espl.types import Completion, Message, SamplingParams, Trajectory


@dataclass(frozen=True)
class Episode:
    """One episode to run: the task seed and the system prompt (None: no system message), and where the prompt
    goes: "system" (a system message) or "user" (in the first user message, the E-SPL reference's placement
    and text; the env's reset option `system_prompt_placement`)."""

    seed: int
    system_prompt: str | None = None
    sample_seed: int | None = None  # this episode's sampling stream; None: derived from params.seed and index
    placement: Literal["system", "user"] = "system"


@dataclass
class RolloutStats:
    """Where a rollout's time went (filled when passed to `rollout(stats=...)`)."""

    generate_s: float = 0.0  # inside policy.generate / generate_tokens
    env_s: float = 0.0  # env reset + step (task generation, parsing, reward)
    render_s: float = 0.0  # chat-template rendering and tokenisation of prompts
    total_s: float = 0.0
    rounds: int = 0
    generated_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Live:
    index: int
    episode: Episode
    env: gym.Env
    history: list[Message]
    task_id: str
    tools: list[dict] | None
    parallel_calls: bool = False  # the env allows parallel calls in one reply (the tool grammar's list form)
    # token ranges decoded under the tool grammar, each with its reply's mode: [start, end, mode]
    grammar_spans: list[list[Any]] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)  # the next prompt (token-exact path)
    ids: list[int] = field(default_factory=list)  # everything so far
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    rendered_prompt: str | None = None
    reward: float = 0.0
    turns: int = 0
    truncated_replies: int = 0
    finish_reasons: list[str] = field(default_factory=list)


EnvSource = str | Callable[[], gym.Env]


# Envs are kept between rollout calls (per env id or env class + kwargs): building one can cost far more
# than an episode (Math-v0 builds its reasoning-gym task sources, ~0.1-0.6 s), and the trainer calls rollout
# every step. reset() starts each episode afresh, so a reused env is as good as a new one. Factories that
# are not classes (a new closure per call would never hit) are not pooled.
_POOL: dict[tuple, list[gym.Env]] = {}
_POOL_LOCK = threading.Lock()
MAX_POOLED_PER_KEY = 512


def _pool_key(env: EnvSource, env_kwargs: dict[str, Any]) -> tuple | None:
    if not (isinstance(env, str) or isinstance(env, type)):
        return None
    try:
        return (env, json.dumps(env_kwargs, sort_keys=True, default=repr))
    except (TypeError, ValueError):
        return None


def _take_envs(key: tuple | None, n: int) -> list[gym.Env]:
    if key is None:
        return []
    with _POOL_LOCK:
        free = _POOL.get(key, [])
        taken, _POOL[key] = free[:n], free[n:]
    return taken


def _return_envs(key: tuple | None, envs: list[gym.Env]) -> None:
    if key is None:
        for e in envs:
            e.close()
        return
    with _POOL_LOCK:
        free = _POOL.setdefault(key, [])
        keep = max(0, MAX_POOLED_PER_KEY - len(free))
        free.extend(envs[:keep])
    for e in envs[keep:]:
        e.close()


def close_env_pool() -> None:
    """Close every env kept between rollout calls."""
    with _POOL_LOCK:
        envs = [e for free in _POOL.values() for e in free]
        _POOL.clear()
    for e in envs:
        e.close()


def _make_env(env: EnvSource, env_kwargs: dict[str, Any]) -> gym.Env:
    if isinstance(env, str):
        return gym.make(env, **env_kwargs)
    if callable(env):
        return env(**env_kwargs) if env_kwargs else env()
    raise TypeError(f"env: must be an env id (str) or a factory returning a gymnasium.Env, got {type(env).__name__}")


def _env_id(env: EnvSource, instance: gym.Env) -> str:
    if isinstance(env, str):
        return env
    return instance.spec.id if instance.spec is not None else type(instance.unwrapped).__name__


def with_sample_seeds(episodes: Sequence[Episode], params: SamplingParams) -> list[Episode]:
    """The episodes with `sample_seed` filled in from `params.seed` and their index in this list (kept where
    set). Splitting the result into chunks keeps each episode's seed: what distributed rollouts rely on."""
    if params.seed is None:
        return list(episodes)
    return [ep if ep.sample_seed is not None else replace(ep, sample_seed=mix_seed(params.seed, i))
            for i, ep in enumerate(episodes)]


def _round_params(params: SamplingParams, round_index: int) -> SamplingParams:
    if params.seed is None:
        return params
    # a distinct, reproducible stream per round (a round's batch differs from the last one's)
    return replace(params, seed=mix_seed(params.seed, round_index))


def rollout(
    env: EnvSource,
    policy: Policy,
    episodes: Sequence[Episode],
    params: SamplingParams,
    *,
    env_kwargs: dict[str, Any] | None = None,
    max_batch: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stats: RolloutStats | None = None,
) -> list[Trajectory]:
    """Run every episode to its end; one Trajectory per episode, in order (see the module docstring)."""
    episodes = list(episodes)
    for i, ep in enumerate(episodes):
        if not isinstance(ep, Episode):
            raise TypeError(f"episodes[{i}]: must be an Episode(seed, system_prompt), got {type(ep).__name__}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
    env_kwargs = dict(env_kwargs or {})
    episodes = with_sample_seeds(episodes, params)
    if params.seed is None:  # fresh sampling: still one independent stream per episode
        episodes = [ep if ep.sample_seed is not None else replace(ep, sample_seed=random.getrandbits(62))
                    for ep in episodes]
    token_exact = isinstance(policy, TokenPolicy)
    width = min(len(episodes), max_batch or len(episodes)) or 1
    st = stats if stats is not None else RolloutStats()
    t_start = time.perf_counter()

    pool_key = _pool_key(env, env_kwargs)
    free_envs: list[gym.Env] = _take_envs(pool_key, width)
    all_envs: list[gym.Env] = list(free_envs)
    pending = list(range(len(episodes)))[::-1]  # pop() from the end = in order
    live: list[_Live] = []
    done: dict[int, Trajectory] = {}
    round_index = 0
    env_id: str | None = None
    try:
        while pending or live:
            # fill the batch with new episodes
            while pending and len(live) < width:
                idx = pending.pop()
                ep = episodes[idx]
                t0 = time.perf_counter()
                if free_envs:
                    e = free_envs.pop()
                else:
                    e = _make_env(env, env_kwargs)
                    all_envs.append(e)
                env_id = env_id or _env_id(env, e)
                options: dict[str, Any] = {"system_prompt": ep.system_prompt}
                if ep.placement != "system":
                    options["system_prompt_placement"] = ep.placement
                obs, info = e.reset(seed=ep.seed, options=options)
                tools = getattr(e.unwrapped, "tools", None) or None
                parallel = bool(getattr(e.unwrapped, "parallel_tool_calls", False))
                st.env_s += time.perf_counter() - t0
                lv = _Live(idx, ep, e, list(obs), str(info.get("task_id", "")), tools, parallel)
                if isinstance(policy, TokenPolicy):
                    t0 = time.perf_counter()
                    r = policy.renderer.start(lv.history, tools)
                    st.render_s += time.perf_counter() - t0
                    lv.prompt_ids, lv.rendered_prompt = list(r.ids), r.text
                    lv.ids, lv.mask, lv.logprobs = list(r.ids), [0] * len(r.ids), [0.0] * len(r.ids)
                live.append(lv)

            # one batched generation for every live episode (grouped by tool set: one call per set)
            rparams = _round_params(params, round_index)
            round_index += 1
            st.rounds += 1
            st.batch_sizes.append(len(live))
            completions = _generate(policy, live, rparams, token_exact, st)
            constrained = params.tool_grammar != "off" and token_exact

            still: list[_Live] = []
            for lv, comp in zip(live, completions):
                if constrained and lv.tools and comp.token_ids:
                    lv.grammar_spans.append([len(lv.ids), len(lv.ids) + len(comp.token_ids),
                                             reply_mode(params.tool_grammar, lv.turns)])
                finished = _advance(lv, comp, policy, token_exact, st)
                if finished is None:
                    still.append(lv)
                    continue
                traj = finished(env_id or "")
                if lv.grammar_spans:
                    traj.tool_grammar = {"mode": params.tool_grammar, "parallel": lv.parallel_calls,
                                         "tools": lv.tools, "spans": lv.grammar_spans}
                done[lv.index] = traj
                free_envs.append(lv.env)
                if progress is not None:
                    progress(len(done), len(episodes))
            live = still
    except GenerationError as exc:
        raise RolloutError(
            f"rollout stopped: the policy failed ({exc}); {len(done)} of {len(episodes)} episodes had finished "
            "and are kept in .trajectories", dict(done), exc) from exc
    finally:
        _return_envs(pool_key, all_envs)
        st.total_s += time.perf_counter() - t_start
    return [done[i] for i in range(len(episodes))]


def _stream(lv: _Live) -> int:
    """The episode's sampling stream (filled in by `rollout` before any generation)."""
    if lv.episode.sample_seed is None:
        raise RuntimeError(f"episode {lv.index}: no sample_seed (rollout fills it in before generating)")
    return lv.episode.sample_seed


def _generate(policy: Policy, live: list[_Live], params: SamplingParams, token_exact: bool,
              st: RolloutStats) -> list[Completion]:
    t0 = time.perf_counter()
    before = policy.tokens_generated
    if isinstance(policy, TokenPolicy):
        seeds = [mix_seed(_stream(lv), lv.turns) for lv in live]  # per episode and turn
        texts = [lv.rendered_prompt if lv.turns == 0 else None for lv in live]
        if params.tool_grammar != "off":
            from espl.agents.tool_grammar import ToolSet

            row_tools = [ToolSet(lv.tools, lv.parallel_calls, reply_mode(params.tool_grammar, lv.turns))
                         if lv.tools else None for lv in live]
            comps = policy.generate_tokens([lv.prompt_ids for lv in live], params, texts, seeds=seeds, tools=row_tools)
        else:
            comps = policy.generate_tokens([lv.prompt_ids for lv in live], params, texts, seeds=seeds)
    else:
        # text backends take tools per call: batch the episodes that share a tool set together
        comps_by_index: dict[int, Completion] = {}
        groups: dict[str, list[int]] = {}
        for i, lv in enumerate(live):
            groups.setdefault(repr((lv.tools, lv.parallel_calls)), []).append(i)
        for members in groups.values():
            tools = live[members[0]].tools
            # the tool grammar's list form for parallel calls is a request setting (as OpenAI's own)
            gparams = replace(params, parallel_tool_calls=True) if live[members[0]].parallel_calls else params
            # seeds per episode and turn, as above: independent of the batch
            got = policy.generate([live[i].history for i in members], gparams, tools=tools,
                                  seeds=[mix_seed(_stream(live[i]), live[i].turns) for i in members])
            for i, c in zip(members, got):
                comps_by_index[i] = c
        comps = [comps_by_index[i] for i in range(len(live))]
    st.generate_s += time.perf_counter() - t0
    if token_exact:
        st.generated_tokens += sum(len(c.token_ids) for c in comps)
    else:  # servers report token counts, not ids
        st.generated_tokens += policy.tokens_generated - before
    return comps


def _advance(lv: _Live, comp: Completion, policy: Policy, token_exact: bool,
             st: RolloutStats) -> Callable[[str], Trajectory] | None:
    """Step the env with the completion; a builder of the finished Trajectory when the episode ended."""
    if lv.turns == 0 and not token_exact:
        lv.rendered_prompt = comp.prompt_text
    if comp.finish_reason == "context_overflow":
        # the prompt filled the model's context: no reply to step the env with, so the episode ends here with
        # its own reason (the env never scored it); other episodes of the batch go on
        lv.finish_reasons.append(comp.finish_reason)
        return _finished(lv, {"reason": "context_overflow"}, terminated=False, truncated=True, overflow=True)
    lv.turns += 1
    lv.finish_reasons.append(comp.finish_reason)
    if comp.finish_reason == "length":
        lv.truncated_replies += 1
    if token_exact:
        lv.ids.extend(comp.token_ids)
        lv.mask.extend([1] * len(comp.token_ids))
        lv.logprobs.extend(comp.logprobs)
    reply: Message = dict(comp.message)  # type: ignore[assignment]
    t0 = time.perf_counter()
    obs, reward, terminated, truncated, info = lv.env.step(reply)
    st.env_s += time.perf_counter() - t0
    kept: Message = dict(reply)  # type: ignore[assignment]
    if info.get("parsed_tool_calls") and not kept.get("tool_calls"):
        kept["tool_calls"] = list(info["parsed_tool_calls"])
    lv.history.append(kept)
    lv.reward += float(reward)
    if terminated or truncated:
        return _finished(lv, info, terminated=bool(terminated), truncated=bool(truncated))
    new_msgs = list(obs)
    if isinstance(policy, TokenPolicy):
        t0 = time.perf_counter()
        eot = policy.renderer.eot_id
        ended = bool(comp.token_ids) and comp.token_ids[-1] == eot
        cont = policy.renderer.continuation(lv.history, new_msgs, lv.tools, ended_with_eot=ended)
        st.render_s += time.perf_counter() - t0
        lv.ids.extend(cont.ids)
        lv.mask.extend([0] * len(cont.ids))
        lv.logprobs.extend([0.0] * len(cont.ids))
        lv.prompt_ids = list(lv.ids)
    lv.history.extend(new_msgs)
    return None


def _finished(lv: _Live, info: dict[str, Any], *, terminated: bool, truncated: bool,
              overflow: bool = False) -> Callable[[str], Trajectory]:
    """The builder of an ended episode's Trajectory (the env id is known once the rollout has made an env)."""
    final_info = dict(info)
    final_info["truncated_reply"] = lv.truncated_replies
    final_info["finish_reasons"] = list(lv.finish_reasons)
    final_info["context_overflow"] = overflow  # True: ended because its prompt filled the model's context

    def build(env_id: str) -> Trajectory:
        return Trajectory(
            env_id=env_id, task_id=lv.task_id, messages=lv.history, reward=lv.reward,
            reason=str(info.get("reason", "")), system_prompt=lv.episode.system_prompt, seed=lv.episode.seed,
            num_turns=lv.turns, terminated=terminated, truncated=truncated,
            token_ids=lv.ids, logprobs=lv.logprobs, mask=lv.mask, rendered_prompt=lv.rendered_prompt,
            info=final_info,
        )
    return build
