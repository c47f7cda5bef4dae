#!/usr/bin/env bash
# GPU checks, for a machine with a CUDA GPU; each part is one prepared script of at most 10 minutes:
#   bash bench/gpu_check.sh smoke   (about 2 minutes; the default)
#       the smoke search trains on the GPU (baseline, fine-tunes, polish) and still measures on the CPU,
#       printing where each trial was fine-tuned (the trials' `device` attribute); then the dense unet's
#       latency on the GPU (eager PyTorch, wall clock) against the CPU figures;
#   bash bench/gpu_check.sh paper   (bench/paper.py, seed 0, 12 trials: trains on the GPU, measures on 1 CPU
#       thread, and adds the dense unet-paper on the GPU beside the named network on the CPU: the paper's
#       other claim, that at high compression the CPU beats the GPU baseline);
#   bash bench/gpu_check.sh scale   (bench/scale.py at ACDC scale: the dense baseline and every fine-tune on
#       the GPU, latency on the CPU; the target is under 8 minutes for the search).
# Needs a CUDA build of torch in .venv, or PYTHON=...; prints tables. Each part stops after 10 minutes.
set -euo pipefail
python=${PYTHON:-.venv/bin/python}
part=${1:-smoke}
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name(0))"
work=$(mktemp -d)
case "$part" in
smoke)
  storage="sqlite:///$work/gpu.db"
  # exit 1 (nothing within the budget) and 3 (exported, verdict failed) are answers too: the tiny net has little to remove
  time timeout 540 "$python" -m autosculpt.search.cli search --preset smoke --speedup 1.5 --device cuda --storage "$storage" --study gpu-smoke --out "$work/export" || { rc=$?; [ $rc -eq 1 ] || [ $rc -eq 3 ]; }
  "$python" -c "import optuna, sys; s = optuna.load_study(study_name='gpu-smoke', storage=sys.argv[1]); print('fine-tuned on:', sorted({t.user_attrs.get('device', '-') for t in s.trials}))" "$storage"
  echo "dense unet, 96 px:"
  "$python" -m autosculpt.search.cli latency --runtime torch --device cuda --format json | "$python" -c "import json,sys; s=json.load(sys.stdin); print(f\"GPU eager PyTorch: {s['median_ms']:.3f} ms (p90 {s['p90_ms']:.3f}, {s['clock']})\")"
  "$python" -m autosculpt.search.cli latency --alone --format json | "$python" -c "import json,sys; s=json.load(sys.stdin); print(f\"CPU ONNX Runtime 1 thread: {s['median_ms']:.3f} ms on {s['cpu_model']}\")"
  "$python" -m autosculpt.search.cli latency --alone --keep 0.2 --format json | "$python" -c "import json,sys; s=json.load(sys.stdin); print(f\"CPU ONNX Runtime 1 thread, unet keep 0.2: {s['median_ms']:.3f} ms\")"
  ;;
paper)
  time timeout 590 "$python" bench/paper.py --seeds 0 --trials 12 --storage "sqlite:///$work/paper.db" --json "$work/paper.json"
  ;;
scale)
  time timeout 590 "$python" bench/scale.py --out "$work/scale" --json "$work/scale.json"
  ;;
*)
  echo "unknown part $part: choose smoke, paper or scale" >&2
  exit 2
  ;;
esac
