"""Training speed of a masked LeNet-300-100 relative to the same unmasked model.

In one process: the same Keras model, optimizer (Adam 1.2e-3), batch size (60)
and input pipeline (lottery_tf.experiment.train_pipeline on Fashion-MNIST, or
synthetic data of the same shape if it is not installed), with and without
MaskedLayers (masks at 20% density). Runs alternate masked / unmasked so drift
in machine load hits both, and the median steps/s of each is reported with
their ratio. Nothing here is a pass/fail test: it prints numbers.

    python tools/benchmark_masking.py [--steps=5000] [--repeats=5] [--out=FILE]
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
import tensorflow as tf  # noqa: E402

from lottery_tf import atomic  # noqa: E402
from lottery_tf.config import DataConfig, ModelConfig  # noqa: E402
from lottery_tf.data import DataUnavailableError, get_splits  # noqa: E402
from lottery_tf.experiment import train_pipeline  # noqa: E402
from lottery_tf.keras_compat import keras  # noqa: E402
from lottery_tf.masking import get_masks, set_masks, wrap_model  # noqa: E402
from lottery_tf.models import build_model  # noqa: E402
from lottery_tf.pruning import PruningSpec, prune_by_magnitude  # noqa: E402


def load_data():
    try:
        return get_splits(DataConfig(name="fashion_mnist", tfds_download=False))
    except DataUnavailableError:
        return get_splits(DataConfig(name="synthetic", synthetic_train_examples=60000, validation_examples=5000))


def make(splits, masked: bool, jit: bool, per_execution: int):
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(), splits.input_shape, splits.num_classes)
    if masked:
        model = wrap_model(model)
        masks = get_masks(model)
        for _ in range(7):  # 0.8^7 = 21% of hidden weights left
            masks = prune_by_magnitude(
                {n: np.random.default_rng(1).normal(size=m.shape) * m for n, m in masks.items()},
                masks, PruningSpec("layerwise", 0.2),
            )
        set_masks(model, masks)
    model.compile(
        optimizer=keras.optimizers.Adam(1.2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=per_execution,
        jit_compile=jit,
    )
    return model


def steps_per_second(model, dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    splits = load_data()
    dataset = train_pipeline(splits, batch_size=60, seed=0)
    lines = [
        "# benchmark_masking: masked vs unmasked LeNet-300-100 training steps/s",
        f"# command: python tools/benchmark_masking.py --steps={args.steps} --repeats={args.repeats}",
        f"# data: {splits.source}; batch 60; Adam 1.2e-3; masks at 21% hidden density",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs; tensorflow {tf.__version__}, keras {keras.__version__}",
        f"# {args.repeats} alternating runs of {args.steps} steps each after a warm-up; median steps/s",
        "",
        f"{'setting':<44} {'unmasked':>10} {'masked':>10} {'ratio':>7}",
    ]
    print("\n".join(lines), flush=True)
    for jit, per_execution in ((True, 100), (False, 100), (False, 1)):
        models = {m: make(splits, m, jit, per_execution) for m in (False, True)}
        rates = {False: [], True: []}
        steps = args.steps if per_execution > 1 else max(per_execution, args.steps // 5)
        for model in models.values():
            steps_per_second(model, dataset, max(per_execution, steps // 5))  # compile and warm up
        for _ in range(args.repeats):
            for masked, model in models.items():
                rates[masked].append(steps_per_second(model, dataset, steps))
        plain, masked = statistics.median(rates[False]), statistics.median(rates[True])
        label = f"jit_compile={jit}, steps_per_execution={per_execution}"
        line = f"{label:<44} {plain:>10.0f} {masked:>10.0f} {masked / plain:>7.3f}"
        lines.append(line)
        print(line, flush=True)
    if args.out:
        atomic.write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
