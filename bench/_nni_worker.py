"""The NNI arm of ``bench/peers.py``: run in a separate venv that has ``nni==3.0``.

NNI 3.0 pins ``filelock<3.12``, so it lives in its own venv (``/tmp/nni-venv``) with
autosculpt installed there ``--no-deps``; ``peers.py`` runs this file there as a
subprocess. Reads a JSON job on stdin, writes one JSON row per sparsity to stdout.

For each uniform sparsity: NNI's ``L1NormPruner`` on every Conv2d except the head and
``ModelSpeedup`` (which needs ``graph_module=torch.fx.symbolic_trace(model)`` on torch
2.13, a dummy batch of at least 2 - batch 1 prunes nothing - and ``.eval()`` afterwards).
NNI cannot prune ``ConvTranspose2d``, so the up-convolutions keep their outputs and the
decoder convolutions their inputs. Then, exactly as a trial of the study: size figures,
latency with autosculpt's harness (same ONNX Runtime version, the peer study's reference
network when the job names one), fine-tuning with the
study's schedule (distilled from the baseline) only when within budget, validation Dice.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main() -> int:
    job = json.load(sys.stdin)
    from nni.compression.pruning import L1NormPruner
    from nni.compression.speedup import ModelSpeedup

    from autosculpt.search.data import load_data
    from autosculpt.search.latency import Reference, Target, measure
    from autosculpt.search.training.baseline import build_model, example_input
    from autosculpt.search.training.train import evaluate, finetune_schedule, teacher_logits, train
    from autosculpt.space import figures

    data = load_data(image_size=job["image_size"], seed=job["seed"], patients=job["patients"])
    example = example_input(data)

    def baseline() -> torch.nn.Module:
        model = build_model(job["model"], data)
        model.load_state_dict(torch.load(job["state_path"], weights_only=True))
        return model.eval()

    base = baseline()
    base_figures = figures(base, example, groups=[])
    teacher = teacher_logits(base, data.train.images) if job["distill"] > 0 else None
    target = Target.from_dict(job["target"])
    reference = None
    if "reference_onnx" in job:  # the peer study's reference, so both arms' figures share it
        with open(job["reference_onnx"], "rb") as file:
            reference = Reference(file.read(), job["reference_ms"])
    for index, keep in enumerate(job["keeps"]):
        start = time.perf_counter()
        model = baseline()
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "head"]
        pruner = L1NormPruner(model, [{"op_names": convs, "sparse_ratio": 1 - keep}])
        _, masks = pruner.compress()
        pruner.unwrap_model()
        dummy = example.repeat(2, 1, 1, 1)
        model = ModelSpeedup(model, dummy, masks, graph_module=torch.fx.symbolic_trace(model)).speedup_model()
        model.eval()
        prune_s = time.perf_counter() - start
        figs = figures(model, example, groups=[])
        stats = measure(model, tuple(example.shape), target, reference)
        feasible = stats.median_ms <= job["budget_ms"]
        finetune_s = 0.0
        if feasible:
            start = time.perf_counter()
            schedule = finetune_schedule(model, base_figures.params, job["epochs"], seed=job["seed"] + index,
                                         distill=job["distill"])  # as TrialRunner
            train(model, data, schedule, teacher_outputs=teacher)
            finetune_s = time.perf_counter() - start
        dice = evaluate(model, data.val, data.class_names).mean
        row = {"keep": keep, "params": figs.params, "macs": figs.macs, "param_ratio": base_figures.params / figs.params,
               "mac_ratio": base_figures.macs / figs.macs, "latency_ms": stats.median_ms, "latency_p90_ms": stats.p90_ms,
               "feasible": feasible, "dice": dice, "prune_s": prune_s, "finetune_s": finetune_s}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
