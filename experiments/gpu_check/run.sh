#!/usr/bin/env bash
# The GPU check (experiments/gpu_check/README.md): under 10 minutes on one CUDA GPU.
#   experiments/gpu_check/run.sh                 # on a GPU machine; log: experiments/gpu_check/log.txt
#   experiments/gpu_check/run.sh --cpu-dry-run   # no GPU: the same steps on the CPU, without DeepSpeed
# Work files (models, runs; ~5 GB) go to $GPU_CHECK_DIR (default /tmp/csr_gpu_check).
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=0
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=1
BIN=${CSR_BIN:-.venv/bin}
WORK=${GPU_CHECK_DIR:-/tmp/csr_gpu_check}
LOG=experiments/gpu_check/log.txt
((DRY)) && LOG=experiments/gpu_check/log.cpu-dry-run.txt
rm -rf "$WORK" && mkdir -p "$WORK"
exec > >(tee "$LOG") 2>&1
step() { echo; echo "== $(date -u +%H:%M:%S) $*"; }

step "machine"
git log -1 --format='commit %H' || true
((DRY)) || nvidia-smi -L
"$BIN/python" -c "import torch, transformers, peft, pytorch_lightning as pl; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), '| transformers', transformers.__version__, \
'| peft', peft.__version__, '| lightning', pl.__version__)"
((DRY)) || "$BIN/python" -c "import deepspeed; print('deepspeed', deepspeed.__version__)"

step "1. the tiny loop, trainer=$( ((DRY)) && echo cpu || echo gpu ) (experiment=smoke, 1 iteration)"
export CSR_TINY_DIR="$WORK/tiny"
"$BIN/csr-make-tiny" "$CSR_TINY_DIR" > /dev/null
TRAINER=gpu
((DRY)) && TRAINER=cpu
timeout 240 "$BIN/csr" experiment=smoke iterations=1 trainer=$TRAINER run_dir="$WORK/smoke" logger.enabled=false
"$BIN/python" - "$WORK/smoke" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
metrics = json.loads((run / "iter_1" / "metrics.json").read_text())
assert set(metrics) == {"search", "reward", "pairs", "dpo", "merge", "eval"}, sorted(metrics)
assert (run / "iter_1" / "adapter" / "adapter_model.safetensors").exists()
assert (run / "iter_1" / "merged" / "model.safetensors").exists()
print("dpo:", {k: metrics["dpo"][k] for k in ("pairs", "steps", "trainable_params") if k in metrics["dpo"]})
print("merge:", metrics["merge"])
assert metrics["merge"].get("check/passed", True), "merged model's log-probs differ from the adapter model's"
print("tiny loop: ok")
EOF

if ((DRY)); then
  step "2. DPO on the 7B-shaped model: CPU dry run (narrow copy, one step, no DeepSpeed)"
  timeout 300 "$BIN/python" experiments/gpu_check/dpo_check.py --cpu-dry-run --out "$WORK/dry"
else
  step "2. ZeRO-2 DPO, 8 steps, LLaVA-1.5-7B-shaped random model (4 text + 4 vision layers)"
  timeout 240 "$BIN/python" experiments/gpu_check/dpo_check.py --zero 2 --out "$WORK/zero2"
  rm -rf "$WORK/zero2/model"
  step "3. ZeRO-3 DPO, 8 steps, same model: adapter gathered and saved inside the fit"
  timeout 240 "$BIN/python" experiments/gpu_check/dpo_check.py --zero 3 --out "$WORK/zero3"
fi
step "gpu_check: all passed"
