"""ESTIMATE of what each flagfile costs on one GPU, eight GPUs and a TPU pod slice.

Derived, not measured on accelerators:

* FLOPs: counted from each model's layers (multiply-adds of Dense and
  convolution kernels x 2); a training example costs 3x its forward pass
  (forward + backward), an evaluated example 1x. Pruned weights are not
  skipped (dense kernels compute with zeros), so every level costs the same.
* Work per flagfile: (levels + 1) main-line levels plus branch levels, times
  replicates; per level `iterations x batch` training examples and
  `(iterations / eval_every + 1) x (validation + test)` evaluated examples.
* CPU: the measured training throughput of `results/benchmark_masking.txt`
  (this machine, 2 cores) gives the CPU's effective FLOP/s per model family.
* Accelerators: published dense bf16 peaks (A100 312 TFLOP/s, H100 SXM 989,
  TPU v4 chip 275) at an assumed utilization of 35%. Eight GPUs and the
  16-chip TPU v4-32 slice are assumed to scale at 90% (data parallel,
  synchronous). Every training step also costs at least an assumed 0.5 ms
  (launch and input overhead of a Keras step on an accelerator), which more
  devices do not shrink: small models and small batches are bound by it.

    python tools/estimate_cost.py [--out=results/cost_estimate.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGFILES = [
    "lenet300_fashion_mnist",
    "cifar10_conv2",
    "cifar10_conv4",
    "cifar10_conv6",
    "cifar10_resnet20_rewind",
    "cifar10_vgg16_rewind",
    "imagenet_resnet50_rewind",
]
EVAL_EXAMPLES = {"fashion_mnist": 15000, "mnist": 15000, "cifar10": 15000, "imagenet2012": 60000}
INPUT_SHAPES = {
    "fashion_mnist": (28, 28, 1),
    "mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "imagenet2012": (224, 224, 3),
}
CLASSES = {"imagenet2012": 1000}
PEAK = {"1x A100": 312e12, "8x A100": 8 * 312e12 * 0.9, "1x H100": 989e12, "TPU v4-32 (16 chips)": 16 * 275e12 * 0.9}
UTILIZATION = 0.35
STEP_FLOOR = 0.5e-3  # seconds per training step, assumed
# Which benchmark row stands for each model family's CPU efficiency.
CPU_ROW = {
    "lenet_300_100": "lenet_300_100",
    "conv2": "conv4",
    "conv4": "conv4",
    "conv6": "conv4",
    "resnet20": "resnet20",
    "vgg16": "resnet20",
    "resnet50": "resnet50",
}
BENCHMARK_SHAPES = {"lenet_300_100": (28, 28, 1), "resnet50": (224, 224, 3)}  # others: CIFAR-shaped


def forward_flops(model_name: str, shape, classes: int = 10) -> float:
    from lottery_tf.core.keras_compat import keras
    from lottery_tf.engine.config import ModelConfig
    from lottery_tf.engine.models import build_model

    model = build_model(ModelConfig(name=model_name), shape, classes)
    macs = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dense):
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, keras.layers.Conv2D):
            out_h, out_w = layer.output.shape[1], layer.output.shape[2]
            k = layer.kernel.shape
            macs += out_h * out_w * k[0] * k[1] * k[2] * k[3]
    return 2.0 * macs


def settings(flagfile: str) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            f"--flagfile=flags/{flagfile}.flags",
            "--dry_run",
            "--output_dir=/nonexistent",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    return json.loads(result.stdout[: result.stdout.rindex("}") + 1])


def cpu_rates(path: str) -> dict:
    rates = {}
    for line in open(path):
        # model, data, batch, unmasked, masked, ratio, input only, input/model[, per-repeat ratios]
        match = re.match(r"(\w+)\s+.*?\s(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+\d+\s+[\d.]+(\s+[\d. ]+)?$", line.strip())
        if match:
            rates[match.group(1)] = float(match.group(4))  # masked examples/s
    return rates


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--benchmark",
        action="append",
        help="benchmark output(s) with measured CPU rates (default: results/benchmark_masking.txt "
        "and results/benchmark_resnet50_imagenet.txt)",
    )
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    rates = {}
    for path in args.benchmark or [
        os.path.join(ROOT, "results", name) for name in ("benchmark_masking.txt", "benchmark_resnet50_imagenet.txt")
    ]:
        rates.update(cpu_rates(path))
    lines = [
        "# Cost of the flagfiles: an ESTIMATE (see tools/estimate_cost.py for every assumption)",
        "",
        "Command: `python tools/estimate_cost.py --out=results/cost_estimate.md`, from the CPU throughput in "
        "`results/benchmark_masking.txt` and published accelerator peaks (bf16: A100 312, H100 989, "
        "TPU v4 275 TFLOP/s per chip) at an assumed 35% utilization, 90% multi-device scaling, and an assumed "
        "floor of 0.5 ms per training step that more devices do not remove. All levels of all replicates "
        "run one after another; running replicates on separate devices (`--replicate=r`) divides the wall "
        "time by the number of replicates.",
        "",
        "| flagfile | model | levels x replicates | training examples | GFLOP / train example | total PFLOP | "
        "CPU (2 cores, measured rate) | 1x A100 | 8x A100 | 1x H100 | TPU v4-32 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for flagfile in FLAGFILES:
        s = settings(flagfile)
        model, data, t, p = s["model"]["name"], s["data"]["name"], s["training"], s["pruning"]
        branch_levels = len(s["branches"]["levels"]) * len(s["branches"]["names"])
        levels = (p["levels"] + 1 + branch_levels) * s["run"]["replicates"]
        forward = forward_flops(model, INPUT_SHAPES[data], CLASSES.get(data, 10))
        train_examples = t["iterations"] * t["batch_size"]
        eval_examples = (t["iterations"] // t["eval_every"] + 1) * EVAL_EXAMPLES[data]
        total = levels * (3 * forward * train_examples + forward * eval_examples)
        row = CPU_ROW[model]
        cpu = "n/a"
        if row in rates:
            # The benchmarked model's effective FLOP/s on this CPU, applied to this model's work.
            bench_shape = BENCHMARK_SHAPES.get(row, (32, 32, 3))
            effective = rates[row] * 3 * forward_flops(row, bench_shape, 1000 if row == "resnet50" else 10)
            cpu = human(total / effective)
        sequential_steps = levels * t["iterations"]
        cells = []
        for peak in PEAK.values():
            cells.append(human(max(total / (peak * UTILIZATION), sequential_steps * STEP_FLOOR)))
        lines.append(
            f"| {flagfile} | {model} | {p['levels'] + 1}+{branch_levels} x {s['run']['replicates']} | "
            f"{train_examples:,} / level | {3 * forward / 1e9:.3f} | {total / 1e15:.1f} | {cpu} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Reading: the batch-60 recipes (LeNet, Conv-2/4/6) are bound by the per-step floor on any "
        "accelerator, so eight GPUs or a pod slice do not help them as data parallelism; use the extra "
        "devices for replicates and branches in parallel instead. The CPU column uses the masked "
        "examples/s measured for LeNet, Conv-4 (for the Conv nets) and ResNet-20 (for ResNet-20 and "
        "VGG-16) in results/benchmark_masking.txt, and for ResNet-50 (batch 16, streamed ImageNet-sized "
        "JPEGs) in results/benchmark_resnet50_imagenet.txt.",
        "",
        "ImageNet / ResNet-50 is compute-bound, so devices help: one level (90 epochs) is the "
        "unit of cost, and the whole flagfile runs its levels one after another. Its input pipeline "
        "must decode and crop about the accelerator's examples/s; budget host CPU cores accordingly "
        "(results/benchmark_resnet50_imagenet.txt gives this machine's per-core decode rate).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from lottery_tf.store import atomic

        atomic.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
