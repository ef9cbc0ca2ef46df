"""Training speed of masked models relative to the same unmasked models, and input speed.

In one process, per model: the same Keras model, optimizer, batch size and input
pipeline (lottery_tf.engine.recipe.train_pipeline), with and without MaskedLayers
(masks at about 21% density). Runs alternate masked / unmasked so drift in
machine load hits both; the median of each is reported with their ratio. The
input pipeline alone (same batches, augmentation included, no model) is timed
too, so a user sees whether input could starve training. Nothing here is a
pass/fail test: it prints numbers.

    python tools/benchmark_masking.py [--models=lenet_300_100,conv4,resnet20] [--repeats=5] [--out=FILE]

Models: lenet_300_100 on Fashion-MNIST (synthetic of the same shape if not
installed), batch 60, Adam 1.2e-3; conv4 on synthetic CIFAR-shaped data, batch
60, Adam 3e-4; resnet20 on synthetic CIFAR-shaped data with the CIFAR
augmentation, batch 128, SGD 0.1 momentum 0.9; resnet50 on the streamed
``imagenet2012`` input path (TFDS-prepared archives of random JPEGs of 300-499
pixels a side, about ImageNet's; JPEG decoding, random-resized 224 crop, flip),
batch 16, SGD 0.1 momentum 0.9 (``--models=resnet50``; slow on a CPU).
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

from lottery_tf.core.keras_compat import keras  # noqa: E402
from lottery_tf.core.masking import get_masks, set_masks, wrap_model  # noqa: E402
from lottery_tf.core.pruning import PruningSpec, prune_by_magnitude  # noqa: E402
from lottery_tf.engine.config import DataConfig, ModelConfig  # noqa: E402
from lottery_tf.engine.data import DataUnavailableError, get_splits  # noqa: E402
from lottery_tf.engine.data.cifar import make_augment  # noqa: E402
from lottery_tf.engine.models import build_model  # noqa: E402
from lottery_tf.engine.recipe import train_pipeline, training_batches  # noqa: E402
from lottery_tf.store import atomic  # noqa: E402

SETUPS = {
    # model: (batch, optimizer factory, steps per execution, steps per timed run, XLA)
    # XLA only for LeNet: on this CPU it made the convolutional networks slower and
    # bimodal from run to run (see results/benchmark_masking_conv4_xla.txt, made with
    # --models=conv4 --jit=on).
    "lenet_300_100": (60, lambda: keras.optimizers.Adam(1.2e-3), 100, 5000, True),
    "conv4": (60, lambda: keras.optimizers.Adam(3e-4), 10, 100, False),
    "resnet20": (128, lambda: keras.optimizers.SGD(0.1, momentum=0.9), 10, 50, False),
    "resnet50": (16, lambda: keras.optimizers.SGD(0.1, momentum=0.9), 1, 4, False),
}


def imagenet_like():
    """Streamed imagenet2012 splits prepared by TFDS from random JPEGs (in a temporary folder)."""
    import atexit
    import shutil
    import tempfile

    from lottery_tf.engine.data.fake_imagenet import make_archives

    folder = tempfile.mkdtemp(prefix="lottery_tf_benchmark_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    manual = make_archives(os.path.join(folder, "manual"), per_class=64, validation=8, sizes=(300, 500))
    return get_splits(
        DataConfig(
            name="imagenet2012",
            tfds_data_dir=os.path.join(folder, "tfds"),
            tfds_manual_dir=manual,
            validation_examples=8,
        )
    )


def load_data(model: str):
    if model == "resnet50":
        return imagenet_like(), None
    if model == "lenet_300_100":
        try:
            return get_splits(DataConfig(name="fashion_mnist", tfds_download=False)), None
        except DataUnavailableError:
            return get_splits(
                DataConfig(name="synthetic", synthetic_train_examples=60000, validation_examples=5000)
            ), None
    splits = get_splits(
        DataConfig(
            name="synthetic",
            synthetic_shape=(32, 32, 3),
            synthetic_train_examples=10000,
            synthetic_test_examples=100,
            validation_examples=100,
        )
    )
    augment = make_augment(np.zeros(3, np.float32), np.ones(3, np.float32)) if model == "resnet20" else None
    return splits, augment


def make(name, splits, masked: bool, per_execution: int, optimizer, jit: bool):
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name=name, initializer="he_normal"), splits.input_shape, splits.num_classes)
    if masked:
        model = wrap_model(model)
        masks = get_masks(model)
        rng = np.random.default_rng(1)
        for _ in range(7):  # 0.8^7 = 21% of the weights left
            masks = prune_by_magnitude(
                {n: rng.normal(size=m.shape) * m for n, m in masks.items()}, masks, PruningSpec("layerwise", 0.2)
            )
        set_masks(model, masks)
    model.compile(
        optimizer=optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=per_execution,
        jit_compile=jit,
    )
    return model


def examples_per_second(model, dataset, steps: int, batch: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return steps * batch / (time.perf_counter() - start)


def input_examples_per_second(dataset, steps: int, batch: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # start the pipeline
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="lenet_300_100,conv4,resnet20")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the timed steps (smoke runs: 0.05)")
    parser.add_argument(
        "--jit",
        choices=("default", "on", "off"),
        default="default",
        help="override XLA for every model (default: per model, see SETUPS)",
    )
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    lines = [
        "# benchmark_masking: examples/s of masked vs unmasked training, and of the input pipeline alone",
        f"# command: python tools/benchmark_masking.py --models={args.models} --repeats={args.repeats} --jit={args.jit}",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs; tensorflow {tf.__version__}, keras {keras.__version__}",
        "# XLA on for LeNet only (see SETUPS); masks at 21% density; median of alternating runs after a warm-up",
        "",
        f"{'model':<15} {'data':<26} {'batch':>5} {'unmasked':>10} {'masked':>10} {'ratio':>6} {'input only':>11} {'input/model':>11}  ratio per repeat",
    ]
    print("\n".join(lines), flush=True)
    for name in args.models.split(","):
        batch, optimizer, per_execution, steps, jit = SETUPS[name]
        jit = {"on": True, "off": False}.get(args.jit, jit)
        steps = max(per_execution, int(steps * args.scale) // per_execution * per_execution)
        splits, augment = load_data(name)
        dataset = (
            training_batches(splits, batch, 0)
            if augment is None
            else train_pipeline(splits, batch_size=batch, seed=0, augment=augment)
        )
        models = {m: make(name, splits, m, per_execution, optimizer, jit) for m in (False, True)}
        for model in models.values():
            examples_per_second(model, dataset, max(per_execution, steps // 5 // per_execution * per_execution), batch)
        rates = {False: [], True: []}
        for repeat in range(args.repeats):
            # Alternate which model runs first, so drift and warm-up effects hit both alike.
            for masked in (False, True) if repeat % 2 == 0 else (True, False):
                rates[masked].append(examples_per_second(models[masked], dataset, steps, batch))
        plain, masked = statistics.median(rates[False]), statistics.median(rates[True])
        source = (
            "imagenet2012 random JPEGs"
            if name == "resnet50"
            else splits.source + (" + augmentation" if augment else "")
        ) + (" XLA" if jit else "")
        pipeline = statistics.median(input_examples_per_second(dataset, steps, batch) for _ in range(3))
        per_repeat = " ".join(f"{m / p:.2f}" for p, m in zip(rates[False], rates[True]))
        line = (
            f"{name:<15} {source[:26]:<26} {batch:>5} {plain:>10.0f} {masked:>10.0f} {masked / plain:>6.3f} "
            f"{pipeline:>11.0f} {pipeline / max(plain, masked):>11.1f}  {per_repeat}"
        )
        lines.append(line)
        print(line, flush=True)
    lines.append("")
    lines.append("examples/s; ratio = masked / unmasked; input/model > 1 means the pipeline outpaces training.")
    if args.out:
        atomic.write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
