"""GPU benchmark: rollout tokens/s and RL train-step time for Qwen2.5-0.5B/1.5B-sized models, HF vs TRL.

Run on one GPU (or `--tiny` on a CPU to check the script itself):

    python benchmarks/gpu_bench.py --out OUT_DIR            # ~5 minutes on an H100/H200
    python benchmarks/gpu_bench.py --tiny --out /tmp/bench  # a 2-layer model on CPU, ~1 minute

What it measures, in one process, one section after another (each section is skipped, and says so, when
the time budget `--budget-s` is spent; results are rewritten to OUT_DIR/gpu_bench.json after each):

1. `hf_dynamic`: `model.generate` with sampling (temperature 0.7, top-p 0.95) and the default dynamic KV
   cache, batch 1/8/32/64: generated tokens/s.
2. `train_step`: one RL update with a PEFT LoRA (r16, all linear layers) on a batch of sampled-length
   sequences: forward, the importance-sampled REINFORCE loss of trainer/loss.py on generated tokens only,
   backward, Adam step.
3. `espl_hfpolicy`: our `HFPolicy.generate` (chat template, left padding, token ids and log-probs) on the
   same batch sizes, when `espl.agents.hf` imports on the machine, with the dynamic KV cache; and, right
   after `hf_dynamic`, `espl_hfpolicy_static`: the same with `kv_cache="static"` and the compiled decode step
   (batch 1/8/32/64; first call = compile).
4. `trl_grpo`: TRL `GRPOTrainer` + the same LoRA, same prompt length, completions, temperature and top-p,
   one prompt x 8 completions per step, when TRL imports; next to it our equivalent step
   (`hf_dynamic` at batch 8 + `train_step` at batch 8) measured in the same run.
5. `hf_static_compile`: `generate(cache_implementation="static")`, which makes transformers compile the
   forward with torch.compile (mode reduce-overhead, CUDA graphs); compile time reported apart.
6. the same generation and train step for the 1.5B configuration, as time allows.

Weights are randomly initialised from the model's real configuration (built here from its published
hyper-parameters, since the GPU machines have no internet): speed does not depend on weight values, but
a random model never emits EOS on its own, so every generation is forced to a fixed length with
`min_new_tokens == max_new_tokens`. Prompts are random token ids of a fixed length (no prefix sharing).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]

# Published hyper-parameters of Qwen2.5-{0.5B,1.5B}-Instruct (their config.json on the HF hub).
QWEN_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, expected_params=494_032_768),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, expected_params=1_543_714_304),
    # --tiny: the same architecture and vocabulary, two small layers, to check the script on a CPU
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, expected_params=None),
}
VOCAB = 151_936
EOS_ID, PAD_ID = 151_645, 151_643  # <|im_end|>, <|endoftext|>


def ensure_espl_importable() -> str:
    """`import espl` from this checkout when espl-gym is not installed (the GPU machine takes the tree as it
    is): a finder maps the package layout of pyproject.toml (espl.agents -> agents/, ...)."""
    try:
        import espl  # noqa: F401

        return "installed"
    except ModuleNotFoundError as e:
        if e.name != "espl":
            raise
    import importlib.abc
    import importlib.util

    layout = {"espl": "espl", "espl.cli": "espl/cli", "espl.envs": "envs", "espl.agents": "agents",
              "espl.trainer": "trainer", "espl.sandboxes": "sandboxes", "espl.leaderboard": "leaderboard"}

    class TreeFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):  # noqa: ANN001
            if name not in layout:
                return None
            folder = ROOT / layout[name]
            return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])

    sys.meta_path.insert(0, TreeFinder())
    return "from the source tree"


def qwen_config(name: str):
    from transformers import Qwen2Config

    hp = dict(QWEN_CONFIGS[name])
    hp.pop("expected_params")
    return Qwen2Config(vocab_size=VOCAB, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, hidden_act="silu", use_sliding_window=False,
                       bos_token_id=PAD_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **hp)


@dataclass
class Report:
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        self.results.append(row)
        print("RESULT", json.dumps(row), flush=True)
        self.save()

    def skip(self, why: str) -> None:
        self.skipped.append(why)
        print("SKIP", why, flush=True)
        self.save()

    def error(self, where: str) -> None:
        msg = f"{where}: {traceback.format_exc(limit=6)}"
        self.errors.append(msg)
        print("ERROR", msg, flush=True)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "results": self.results, "skipped": self.skipped,
                                   "errors": self.errors}, indent=1))
        os.replace(tmp, self.path)


class Clock:
    """Wall-clock budget for the whole script: a section starts only if it is expected to fit."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def build_model(name: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: random init of 0.5B params on CPU takes seconds
        model = AutoModelForCausalLM.from_config(qwen_config(name), dtype=dtype)
    model.eval()
    n = sum(p.numel() for p in model.parameters())
    expected = QWEN_CONFIGS[name]["expected_params"]
    if expected is not None and n != expected:  # the config is wrong if the count differs from the real model's
        raise RuntimeError(f"{name}: {n} parameters, the published model has {expected}")
    return model, n


def random_prompts(batch: int, length: int, device: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, PAD_ID, (batch, length), generator=g).to(device)  # no special tokens


def generate_fixed(model, ids: torch.Tensor, new_tokens: int, **kw: Any) -> torch.Tensor:
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7,
                         top_p=0.95, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=PAD_ID, eos_token_id=EOS_ID, **kw)
    got = out.shape[1] - ids.shape[1]
    if got != new_tokens:
        raise RuntimeError(f"generated {got} tokens, expected exactly {new_tokens}")
    return out


def bench_generate(rep: Report, clock: Clock, model, mname: str, section: str, batches: list[int], args,
                   min_left: float, **gen_kw: Any) -> dict[int, float]:
    """Tokens/s of generate at each batch size; returns {batch: seconds per call (median)}."""
    times: dict[int, float] = {}
    for bs in batches:
        if clock.left() < min_left:
            rep.skip(f"{section} {mname} batch {bs}: time budget spent ({clock.left():.0f} s left)")
            continue
        ids = random_prompts(bs, args.prompt_len, args.device)
        try:
            with torch.inference_mode():
                warm_s, _ = timed(lambda: generate_fixed(model, ids, args.new_tokens, **gen_kw), args.device)
                ts = [timed(lambda: generate_fixed(model, ids, args.new_tokens, **gen_kw), args.device)[0]
                      for _ in range(args.reps)]
        except Exception:
            rep.error(f"{section} {mname} batch {bs}")
            continue
        med = statistics.median(ts)
        times[bs] = med
        rep.add(section=section, model=mname, batch=bs, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                seconds=round(med, 4), tokens_per_s=round(bs * args.new_tokens / med, 1),
                ms_per_decode_step=round(1000 * med / args.new_tokens, 2), first_call_s=round(warm_s, 2),
                reps=[round(t, 4) for t in ts])
    return times


def load_loss():
    """trainer/loss.py by file path: the benchmark runs where the espl package may not be installed."""
    try:
        import espl.trainer.loss as mod

        return mod
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("espl_trainer_loss", ROOT / "trainer" / "loss.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def lora_config(r: int):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """log π(ids[t+1] | ids[:t+1]) for every position, in float32 (logsumexp over the vocabulary)."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    tgt = ids[:, 1:].unsqueeze(-1)
    return logits.gather(-1, tgt).squeeze(-1) - logits.logsumexp(-1)


def bench_train(rep: Report, clock: Clock, model, mname: str, batches: list[int], args, min_left: float) -> dict[int, float]:
    """Median seconds of one LoRA RL update (forward + loss + backward + Adam) per batch size."""
    from peft import get_peft_model

    loss_mod = load_loss()
    settings = loss_mod.LossSettings()
    pm = get_peft_model(model, lora_config(args.lora_r))
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-5, **({"fused": True} if args.device.startswith("cuda") else {}))
    pm.train()
    times: dict[int, float] = {}
    seq = args.prompt_len + args.new_tokens
    for bs in batches:
        if clock.left() < min_left:
            rep.skip(f"train_step {mname} batch {bs}: time budget spent ({clock.left():.0f} s left)")
            continue
        try:
            ids = random_prompts(bs, seq, args.device, seed=2)
            mask = torch.zeros(bs, seq - 1, device=args.device)
            mask[:, args.prompt_len - 1:] = 1.0  # loss only on the generated tokens
            g = torch.Generator().manual_seed(3)
            adv = (torch.rand(bs, 1, generator=g) - 0.5).to(args.device).expand(bs, seq - 1)
            with torch.no_grad():  # sampling-time log-probs: given by the sampler in a real step, not timed
                old_lp = token_logprobs(pm, ids)

            def step() -> float:
                lp = token_logprobs(pm, ids)
                loss = loss_mod.reinforce_is(lp, old_lp, adv, mask, settings) / mask.sum()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return float(loss.detach())

            timed(step, args.device)  # warm-up: allocator, cuBLAS handles, Adam state
            ts = [timed(step, args.device)[0] for _ in range(args.reps)]
            peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
        except Exception:
            rep.error(f"train_step {mname} batch {bs}")
            continue
        med = statistics.median(ts)
        times[bs] = med
        rep.add(section="train_step", model=mname, batch=bs, seq_len=seq, loss_tokens=args.new_tokens,
                lora_r=args.lora_r, trainable_params=trainable, seconds=round(med, 4),
                train_tokens_per_s=round(bs * seq / med, 1), peak_gib=None if peak is None else round(peak, 2),
                reps=[round(t, 4) for t in ts])
    # leave the base model as it was for the next section
    pm.unload()  # the optimizer and the adapter go with this frame
    return times


def bench_hfpolicy(rep: Report, clock: Clock, model, mname: str, batches: list[int], args, min_left: float,
                   kv: str = "dynamic") -> None:
    """Our HFPolicy.generate on chat conversations whose rendered prompts are about prompt_len tokens.

    Rows `espl_hfpolicy`: distinct user messages (only the system prompt is shared), no adapter, dynamic KV
    cache. Row `espl_hfpolicy_group_lora`: one conversation x 8 (a GRPO group, as in the TRL comparison) with a
    LoRA r16 adapter attached, as during training. With kv="static": rows `espl_hfpolicy_static`, the static
    KV cache with the compiled decode step (HFPolicy's CUDA default; its first call per batch size compiles and
    is reported as first_call_s), no LoRA row.
    """
    try:
        from transformers import AutoTokenizer

        from espl.agents.hf import HFPolicy, LoraSettings
        from espl.types import SamplingParams
    except Exception as e:  # the machine may lack espl's other dependencies
        rep.skip(f"espl_hfpolicy: espl.agents.hf does not import here ({type(e).__name__}: {e})")
        return
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    tok.padding_side = "left"
    words = tok.decode(random_prompts(1, max(8, args.prompt_len - 30), "cpu", seed=4)[0].tolist())
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.new_tokens, seed=0)
    # HFPolicy stops at end-of-turn; a random model samples one of its 2-3 stop ids with probability
    # ~2e-5 per token, so lengths stay fixed in practice, and tokens/s counts the tokens really generated.
    if kv == "static":
        cases = [("espl_hfpolicy_static", bs, False) for bs in batches]
    else:
        cases = [("espl_hfpolicy", bs, False) for bs in batches] + [("espl_hfpolicy_group_lora", 8, True)]
    policy = None
    for section, bs, group in cases:
        if clock.left() < min_left:
            rep.skip(f"{section} {mname} batch {bs}: time budget spent ({clock.left():.0f} s left)")
            continue
        if group:
            convs = [[{"role": "system", "content": "You are a careful assistant."},
                      {"role": "user", "content": words}]] * bs
        else:
            convs = [[{"role": "system", "content": "You are a careful assistant."},
                      {"role": "user", "content": f"{i}: {words}"}] for i in range(bs)]
        try:
            if policy is None or group:
                lora = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r) if group else None
                policy = HFPolicy(model, tokenizer=tok, device=args.device, max_batch=max(batches + [8]), lora=lora,
                                  kv_cache=kv, compile_decode=kv == "static")
            with torch.inference_mode():
                warm_s, _ = timed(lambda: policy.generate(convs, params), args.device)
                ts, n_tok = [], 0
                for _ in range(args.reps):
                    t, comps = timed(lambda: policy.generate(convs, params), args.device)
                    ts.append(t)
                    n_tok = sum(len(c.token_ids) for c in comps)
                    plen = statistics.mean(len(c.prompt_ids) for c in comps)
            shared = bool(policy.last_stats.shared_prefix)
        except Exception:
            rep.error(f"{section} {mname} batch {bs}")
            continue
        med = statistics.median(ts)
        rep.add(section=section, model=mname, batch=bs, prompt_len=round(plen, 1),
                new_tokens=args.new_tokens, generated_tokens=n_tok, seconds=round(med, 4),
                tokens_per_s=round(n_tok / med, 1), first_call_s=round(warm_s, 2), shared_prefix=shared, kv_cache=kv,
                compile_failed=bool(policy._compile_failed),
                lora_r=args.lora_r if group else None, reps=[round(t, 4) for t in ts])
    if policy is not None and policy.lora is not None:
        policy.model.unload()  # leave the base model as it was for the next section


def bench_trl(rep: Report, clock: Clock, mname: str, args, min_left: float) -> None:
    """TRL GRPOTrainer steps (1 prompt x 8 completions, LoRA r16 all-linear) timed by a callback."""
    if clock.left() < min_left:
        rep.skip(f"trl_grpo {mname}: time budget spent ({clock.left():.0f} s left)")
        return
    try:
        import pyarrow as pa
        import trl
        from datasets import Dataset
        from transformers import AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except Exception as e:
        rep.skip(f"trl_grpo: TRL does not import here ({type(e).__name__}: {e})")
        return
    rep.meta["trl"] = trl.__version__
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    n_gen = 8
    text = tok.decode(random_prompts(1, args.prompt_len, "cpu", seed=5)[0].tolist())
    prompt_tokens = len(tok(text)["input_ids"])

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t = 0.0

        def on_step_begin(self, a, state, control, **kw):  # noqa: ANN001
            sync(args.device)
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):  # noqa: ANN001
            sync(args.device)
            self.times.append(time.perf_counter() - self.t)

    def reward(completions, **kw):  # noqa: ANN001 - varied rewards so advantages are not all zero
        return [float(len(c) % 3) for c in completions]

    for gc_on in args.trl_checkpointing:
        if clock.left() < min_left:
            rep.skip(f"trl_grpo {mname} gradient_checkpointing={gc_on}: time budget spent")
            continue
        model = None
        try:
            model, _ = build_model(mname, args.device, args.dtype)
            # an explicit fingerprint: datasets' own hashing (dill) fails on some pyarrow versions
            ds = Dataset(pa.table({"prompt": [text] * (n_gen * (args.trl_steps + 1))}), fingerprint="gpu_bench")
            cfg = GRPOConfig(
                output_dir=tempfile.mkdtemp(prefix="trl_bench_"), per_device_train_batch_size=n_gen,
                num_generations=n_gen, max_completion_length=args.new_tokens, temperature=0.7, top_p=0.95,
                generation_kwargs={"min_new_tokens": args.new_tokens, "top_k": 0}, learning_rate=1e-5,
                beta=0.0, max_steps=args.trl_steps, logging_steps=1, save_strategy="no", report_to=[],
                bf16=args.dtype == torch.bfloat16, gradient_checkpointing=gc_on, seed=0,
                use_cpu=not args.device.startswith("cuda"), dataloader_num_workers=0, disable_tqdm=True,
            )
            timer = StepTimer()
            trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds,
                                  processing_class=tok, peft_config=lora_config(args.lora_r), callbacks=[timer])
            trainer.train()
            steady = timer.times[1:] or timer.times
            med = statistics.median(steady)
            rep.add(section="trl_grpo", model=mname, batch=n_gen, prompt_len=prompt_tokens,
                    new_tokens=args.new_tokens, gradient_checkpointing=gc_on, lora_r=args.lora_r,
                    seconds_per_step=round(med, 4), steps=[round(t, 4) for t in timer.times])
            del trainer
        except Exception:
            rep.error(f"trl_grpo {mname} gradient_checkpointing={gc_on}")
        finally:
            del model
            free(args.device)


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--tiny", action="store_true", help="2-layer model, tiny sizes, CPU: checks the script")
    ap.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--train-batches", default="8,32")
    ap.add_argument("--prompt-len", type=int, default=192)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--trl-steps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop starting sections after this many seconds")
    ap.add_argument("--tokenizer", default=str(ROOT / ".carry" / "qwen2.5_tokenizer"),
                    help="a Qwen2.5 tokenizer directory (chat template), for the HFPolicy and TRL sections")
    ap.add_argument("--skip", default="", help="comma list of sections to skip")
    args = ap.parse_args(argv)
    if args.tiny:
        args.models, args.batches, args.train_batches = "tiny", "1,4", "2"
        args.prompt_len, args.new_tokens, args.reps, args.trl_steps = 24, 8, 2, 2
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    args.trl_checkpointing = [False, True]
    batches = [int(b) for b in args.batches.split(",")]
    train_batches = [int(b) for b in args.train_batches.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    models = args.models.split(",")

    import peft
    import transformers

    rep = Report(Path(args.out) / "gpu_bench.json")
    rep.meta = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "python": sys.version.split()[0], "dtype": str(args.dtype), "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "reps": args.reps, "sampling": "temperature 0.7, top-p 0.95, top-k off",
        "weights": "random init of the real configuration; lengths fixed with min_new_tokens == max_new_tokens",
        "argv": sys.argv[1:],
    }
    try:
        rep.meta["espl"] = ensure_espl_importable()
    except Exception as e:
        rep.meta["espl"] = f"not importable: {type(e).__name__}: {e}"
    rep.save()
    clock = Clock(args.budget_s)
    print(f"device {rep.meta['device']} torch {torch.__version__} transformers {transformers.__version__}", flush=True)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    first = models[0]
    # Sections in priority order: the first model gets everything, later ones what time leaves.
    for mname in models:
        big = mname != first
        try:
            t_build, (model, n) = timed(lambda: build_model(mname, args.device, args.dtype), args.device)
        except Exception:
            rep.error(f"build {mname}")
            continue
        rep.meta.setdefault("params", {})[mname] = n
        print(f"built {mname}: {n / 1e6:.1f} M parameters in {t_build:.1f} s", flush=True)
        if "hf_dynamic" not in skip:
            bench_generate(rep, clock, model, mname, "hf_dynamic", batches, args, min_left=25)
        if not big and "espl_hfpolicy_static" not in skip:
            # the static-cache decode path (issue 17) next to hf_dynamic, batch 1/8/32/64: one compile per batch
            # size; the largest and the smallest first, they bound the curve
            order = sorted(batches, key=lambda b: (b not in (max(batches), min(batches)), b))
            bench_hfpolicy(rep, clock, model, mname, order, args, min_left=60, kv="static")
        if "train_step" not in skip:
            bench_train(rep, clock, model, mname, train_batches, args, min_left=20)
            free(args.device)
        if not big and "espl_hfpolicy" not in skip:
            bench_hfpolicy(rep, clock, model, mname, [b for b in batches if b != 1], args, min_left=40)
        if not big and "trl_grpo" not in skip:
            del model
            free(args.device)
            bench_trl(rep, clock, mname, args, min_left=60)
            model, _ = build_model(mname, args.device, args.dtype)
        if not big and "hf_static_compile" not in skip:
            # one compile per batch shape: the largest and the smallest first, they bound the curve
            order = sorted(batches, key=lambda b: (b not in (max(batches), min(batches)), b))
            bench_generate(rep, clock, model, mname, "hf_static_compile", order, args, min_left=70,
                           cache_implementation="static")
        del model
        free(args.device)
    print_table(rep)
    return 1 if rep.errors and not rep.results else 0


def print_table(rep: Report) -> None:
    print("\n== summary ==", rep.meta.get("device"))
    for r in rep.results:
        if "tokens_per_s" in r:
            print(f"{r['section']:18s} {r['model']:14s} batch {r['batch']:3d}  {r['tokens_per_s']:9.1f} tok/s  "
                  f"({r['seconds']:.3f} s/call, first {r['first_call_s']} s)")
        elif r["section"] == "train_step":
            print(f"{'train_step':18s} {r['model']:14s} batch {r['batch']:3d}  {r['seconds']:.3f} s/update "
                  f"(seq {r['seq_len']}, peak {r['peak_gib']} GiB)")
        else:
            print(f"{'trl_grpo':18s} {r['model']:14s} batch {r['batch']:3d}  {r['seconds_per_step']:.3f} s/step "
                  f"(gradient_checkpointing={r['gradient_checkpointing']}, steps {r['steps']})")
    for s in rep.skipped:
        print("skipped:", s)
    for e in rep.errors:
        print("error:", e.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
