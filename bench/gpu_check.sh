#!/usr/bin/env bash
# The GPU check of the clinical data path, for a machine with a CUDA GPU (about 2 minutes):
#   1. the smoke search trains on the GPU (baseline, fine-tunes, polish) and still measures on the CPU;
#      it prints where each trial was fine-tuned (the trials' `device` attribute);
#   2. the dense unet's latency on the GPU (eager PyTorch, wall clock) against the CPU figures,
#      the question of the published case: does a pruned network on a CPU beat the dense one on a GPU?
# Usage: bash bench/gpu_check.sh   (needs a CUDA build of torch in .venv, or PYTHON=...; prints tables)
set -euo pipefail
python=${PYTHON:-.venv/bin/python}
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name(0))"
storage="sqlite:///$(mktemp -d)/gpu.db"
# exit 1 (nothing within the budget) and 3 (exported, verdict failed) are answers too: the tiny net has little to remove
time "$python" -m autosculpt.search.cli search --preset smoke --speedup 1.5 --device cuda --storage "$storage" --study gpu-smoke --out "$(mktemp -d)" || { rc=$?; [ $rc -eq 1 ] || [ $rc -eq 3 ]; }
"$python" -c "import optuna, sys; s = optuna.load_study(study_name='gpu-smoke', storage=sys.argv[1]); print('fine-tuned on:', sorted({t.user_attrs.get('device', '-') for t in s.trials}))" "$storage"
echo "dense unet, 96 px:"
"$python" -m autosculpt.search.cli latency --runtime torch --device cuda --format json | "$python" -c "import json,sys; s=json.load(sys.stdin); print(f\"GPU eager PyTorch: {s['median_ms']:.3f} ms (p90 {s['p90_ms']:.3f}, {s['clock']})\")"
"$python" -m autosculpt.search.cli latency --alone --format json | "$python" -c "import json,sys; s=json.load(sys.stdin); print(f\"CPU ONNX Runtime 1 thread: {s['median_ms']:.3f} ms on {s['cpu_model']}\")"
"$python" -m autosculpt.search.cli latency --alone --keep 0.2 --format json | "$python" -c "import json,sys; s=json.load(sys.stdin); print(f\"CPU ONNX Runtime 1 thread, unet keep 0.2: {s['median_ms']:.3f} ms\")"
