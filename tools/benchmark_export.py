"""LiteRT latency of sparse tickets relative to the dense model, measured in one run.

For LeNet-300-100 (and optionally a convolutional network): the dense model
and tickets of each structure (unstructured, 1x4 blocks, 2:4, and 1x16 blocks
quantized to int8) at several densities, each converted with sparse tensor
encoding. Every configuration (batch 1 and a large batch, 1 and 2 threads, the
interpreter's default delegates on and off) times every model in alternating
rounds; the median of each is reported with its ratio to the dense model of
the same configuration, and which kernel ran (``DENSIFY`` in front of a weight
means the interpreter expanded it to dense when it loaded the file, so the
dense kernel ran; a weight read by FULLY_CONNECTED directly ran TFLite's sparse
kernel). Nothing here passes or fails: it prints numbers.

    python tools/benchmark_export.py [--densities=51.2,21,8.7,3.6] [--rounds=7] [--out=FILE]

Masks come from magnitude pruning of a trained LeNet (a few epochs on
Fashion-MNIST, synthetic data of the same shape if it is not installed): the
latency depends on how many weights are kept and in which structure, not on
which.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from lottery_tf.core import litert
from lottery_tf.core.keras_compat import keras  # noqa: E402
from lottery_tf.core.masking import get_prunable_weights, set_masks, strip_masks, wrap_model  # noqa: E402
from lottery_tf.core.pruning import prune_to_density  # noqa: E402
from lottery_tf.engine.config import DataConfig, ModelConfig  # noqa: E402
from lottery_tf.engine.data import DataUnavailableError, get_splits  # noqa: E402
from lottery_tf.engine.models import build_model  # noqa: E402
from lottery_tf.store import atomic  # noqa: E402

STRUCTURES = {  # name: (prune_to_density keywords, quantization)
    "unstructured": ({}, "none"),
    "1x4 blocks": ({"block": (1, 4)}, "none"),
    "2:4": ({"n_m": (2, 4)}, "none"),
    "1x16 blocks, int8": ({"block": (1, 16)}, "int8"),
}


def trained_lenet(epochs: int):
    try:
        splits = get_splits(DataConfig(name="fashion_mnist"))
        source = splits.source
    except DataUnavailableError:
        splits = get_splits(DataConfig(name="synthetic", synthetic_train_examples=12000, validation_examples=2000))
        source = "synthetic (Fashion-MNIST not installed)"
    keras.utils.set_random_seed(0)
    model = wrap_model(build_model(ModelConfig(name="lenet_300_100"), splits.input_shape, splits.num_classes))
    model.compile(keras.optimizers.Adam(1.2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(splits.x_train, splits.y_train, batch_size=60, epochs=epochs, verbose=0)
    return model, splits, source


def tickets(model, densities, splits):
    """(structure, density %, flatbuffer, storage) for the dense model and every structure x density."""
    weights = get_prunable_weights(model)
    trained = model.get_weights()
    dense_masks = {name: np.ones_like(value) for name, value in weights.items()}
    scores = {name: np.abs(value) for name, value in weights.items()}
    found = []
    for quantize in ("none", "int8"):
        set_masks(model, dense_masks)
        flat = litert.convert(strip_masks(model), quantize, splits.x_train[:256])
        found.append(("dense" if quantize == "none" else "dense, int8", 100.0, flat, quantize))
    for structure, (kwargs, quantize) in STRUCTURES.items():
        for density in densities:
            if "n_m" in kwargs and density / 100 > kwargs["n_m"][0] / kwargs["n_m"][1]:
                continue  # N:M allows at most N/M of the weights
            model.set_weights(trained)  # set_masks zeroes what it prunes: every ticket starts from the trained weights
            masks = prune_to_density(scores, dense_masks, density / 100, scope="layerwise", **kwargs)
            set_masks(model, masks)
            flat = litert.convert(strip_masks(model), quantize, splits.x_train[:256])
            found.append((structure, density, flat, quantize))
    return found


def kernel_of(flat: bytes) -> str:
    """How the interpreter runs each hidden layer's weight (the output layer is often left dense).

    One label when both hidden layers run the same way; otherwise per layer (fc1 first), since the
    converter may store one layer in 1x4 blocks and the other element by element.
    """
    labels = []
    for w in sorted(litert.storage(flat), key=lambda w: -w["shape"][0]):
        if w["shape"][0] not in (300, 100):
            continue
        if "DENSIFY" in w["read_by"]:
            labels.append("densified at load (dense kernel)")
        else:
            labels.append("sparse FULLY_CONNECTED" if w["sparse"] else "dense FULLY_CONNECTED")
    if len(set(labels)) == 1:
        return labels[0]
    return "; ".join(f"{name}: {label}" for name, label in zip(("fc1", "fc2"), labels))


def measure(found, splits, rounds: int, large_batch: int, runs_per_round: int) -> list[dict]:
    rows = []
    configs = [
        (batch, threads, delegates) for batch in (1, large_batch) for threads in (1, 2) for delegates in (True, False)
    ]
    for batch, threads, delegates in configs:
        x = splits.x_test[:batch]
        runners = {}
        for structure, density, flat, _ in found:
            try:
                runners[(structure, density)] = litert.Runner(flat, default_delegates=delegates, threads=threads)
                runners[(structure, density)](x)
            except RuntimeError as error:
                runners[(structure, density)] = str(error)
        times = {key: [] for key in runners}
        for _ in range(rounds):  # alternate: every model once per round, so drift hits all
            for key, runner in runners.items():
                if isinstance(runner, str):
                    continue
                runs = runs_per_round if batch == 1 else max(10, runs_per_round // 8)
                runner(x)
                start = time.perf_counter()
                for _ in range(runs):
                    runner.interpreter.invoke()
                times[key].append((time.perf_counter() - start) / runs)
        for structure, density, flat, quantize in found:
            key = (structure, density)
            base_key = ("dense, int8", 100.0) if quantize == "int8" else ("dense", 100.0)
            row = {
                "batch": batch,
                "threads": threads,
                "default_delegates": delegates,
                "structure": structure,
                "density": density,
                "bytes": len(flat),
                "kernel": kernel_of(flat),
            }
            if isinstance(runners[key], str):
                row["error"] = runners[key]
            else:
                row["median_ms"] = 1000 * statistics.median(times[key])
                if not isinstance(runners.get(base_key), str) and times.get(base_key):
                    row["ratio"] = statistics.median(times[key]) / statistics.median(times[base_key])
            rows.append(row)
    return rows


def format_rows(rows) -> str:
    lines = [
        "| batch | threads | default delegates | structure | weights % | .tflite bytes | kernel | median ms | "
        "time / dense |",
        "|---:|---:|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        timing = (
            f"{r['median_ms']:.4f} | {r['ratio']:.2f}"
            if "ratio" in r
            else f"{r['median_ms']:.4f} | -"
            if "median_ms" in r
            else f"failed: {r['error'][:60]} | -"
        )
        lines.append(
            f"| {r['batch']} | {r['threads']} | {'on' if r['default_delegates'] else 'off'} | {r['structure']} | "
            f"{r['density']:g} | {r['bytes']:,} | {r['kernel']} | {timing} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--densities", default="51.2,21,8.7,3.6", help="percent of weights kept")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--runs_per_round", type=int, default=200, help="invocations timed per model per round (batch 1)"
    )
    parser.add_argument("--large_batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the LeNet the masks are pruned from")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    densities = [float(d) for d in args.densities.split(",")]
    started = time.time()
    model, splits, source = trained_lenet(args.epochs)
    found = tickets(model, densities, splits)
    rows = measure(found, splits, args.rounds, args.large_batch, args.runs_per_round)
    header = [
        f"# python tools/benchmark_export.py {' '.join(argv if argv is not None else sys.argv[1:])}",
        f"# {platform.platform()}, {os.cpu_count()} CPUs, {litert.interpreter_name()}",
        f"# LeNet-300-100 trained {args.epochs} epochs on {source}; masks by layer-wise magnitude pruning of it;",
        f"# {args.rounds} alternating rounds per configuration, median of the per-round mean of "
        f"{args.runs_per_round} invocations at batch 1 ({max(10, args.runs_per_round // 8)} at batch {args.large_batch}).",
        "# time / dense: the median against the dense model's (int8 files against the dense int8 file) of the same",
        "# configuration. kernel: DENSIFY in front of a weight means the interpreter expanded it when it loaded",
        "# the file, so the dense kernel ran and only the file is smaller.",
    ]
    text = "\n".join(header) + "\n\n" + format_rows(rows) + f"\n\ntotal wall time {time.time() - started:.0f} s\n"
    print(text)
    if args.out:
        atomic.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
