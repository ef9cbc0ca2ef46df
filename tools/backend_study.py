"""The Keras library on TensorFlow and on JAX: one IMP study, same weights, same batches.

LeNet-300-100 on Fashion-MNIST with the LTH recipe (Frankle & Carbin 2019), run
with the Keras library (``wrap_model`` + ``PruneRewindCallback``, one ``fit`` per
level; not the command line, which is TensorFlow only) once with
``KERAS_BACKEND=tensorflow`` and once with ``KERAS_BACKEND=jax``, each backend in
its own subprocess:

* data: ``lottery_tf.load_data("fashion_mnist")`` (Debian's IDX files; 55,000
  training images, the last 5,000 of the 60,000 held out for validation as the
  command line does, 10,000 test images), standardized by the library;
* initial weights per replicate drawn once here with numpy (Glorot normal:
  a normal truncated at two standard deviations, scaled as Keras's
  ``GlorotNormal``; biases 0), written to an ``.npz`` file and set into both
  backends' models;
* batches: 60 examples, in the order of one numpy permutation of the training
  set per epoch from the replicate's seed (the same order at every level),
  fed to ``fit`` as numpy arrays by a Python generator, so both backends see
  the same batches;
* Adam 1.2e-3, ``jit_compile=True`` on both backends, ``--iterations`` steps per
  level, layer-wise pruning of 20% of the hidden layers' weights and 10% of the
  output layer's per level, reset to the initialization
  (``PruneRewindCallback(rewind_step=0)``).

Per level it records the density, the test accuracy, the masks (compared
between backends: how many weights one backend keeps and the other prunes),
how far the trained weights of the two backends are apart, and training
steps per second (steps 100 to the level's last, so tracing and compilation
are left out; the whole ``fit`` time is kept too). The replicates alternate
which backend runs first, so changes in machine load fall on both.

    python tools/backend_study.py [--iterations=5000] [--levels=8] [--replicates=2] [--out=results/backends]

Writes ``results.json`` (every per-replicate number), ``results.csv`` (one row
per backend, replicate and level) and ``table.md`` into ``--out``; masks and
trained weights stay in a temporary folder (``--work``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = (("fc1", 784, 300), ("fc2", 300, 100), ("output", 100, 10))
BACKENDS = ("tensorflow", "jax")
TIMED_FROM = 100  # steps/s counts from this step to the level's last (tracing and compiling left out)


def glorot_normal(rng, fan_in, fan_out):
    """Keras's GlorotNormal in numpy: normal truncated at 2 sigma, with the truncation's variance correction."""
    stddev = np.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
    values = rng.normal(0.0, stddev, size=(fan_in, fan_out))
    outside = np.abs(values) > 2 * stddev
    while outside.any():
        values[outside] = rng.normal(0.0, stddev, size=int(outside.sum()))
        outside = np.abs(values) > 2 * stddev
    return values.astype(np.float32)


def initial_weights(seed, replicate):
    """The replicate's initial weights, by Keras weight name (kernels Glorot normal, biases 0)."""
    rng = np.random.default_rng([seed, replicate, 1])
    weights = {}
    for name, fan_in, fan_out in LAYERS:
        weights[f"{name}/kernel"] = glorot_normal(rng, fan_in, fan_out)
        weights[f"{name}/bias"] = np.zeros(fan_out, np.float32)
    return weights


def batches(x, y, seed, replicate, batch_size):
    """Endless batches: one numpy permutation per epoch from (seed, replicate); the same order each call."""
    rng = np.random.default_rng([seed, replicate, 2])
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]


def worker(args):
    """One backend, one replicate: train ``--levels`` IMP levels and write what they show."""
    sys.path.insert(0, ROOT)
    import lottery_tf
    from lottery_tf import PruneRewindCallback, PruningSpec
    from lottery_tf.core.keras_compat import keras

    backend = keras.backend.backend()
    assert backend == args.backend, (backend, args.backend)
    data = lottery_tf.load_data("fashion_mnist", validation_examples=5000)
    x_train, y_train = data.x_train, data.y_train
    init = dict(np.load(args.init))

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="output"),
        ]
    )
    for name, _, _ in LAYERS:
        model.get_layer(name).set_weights([init[f"{name}/kernel"], init[f"{name}/bias"]])
    lottery_tf.wrap_model(model)
    model.compile(
        keras.optimizers.Adam(1.2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=not args.no_jit,
    )
    imp = PruneRewindCallback(PruningSpec("layerwise", fraction=0.2, output_fraction=0.1), rewind_step=0)

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == TIMED_FROM:
                self.start = time.perf_counter()
            if batch + 1 in snapshots:  # the weights after this many steps (the divergence check)
                if hasattr(model, "jax_state_sync"):  # JAX's fit keeps the weights in its own state until asked
                    model.jax_state_sync()
                weights = {
                    f"{n}/{w}": np.asarray(v)
                    for n, _, _ in LAYERS
                    for w, v in zip(("kernel", "bias"), model.get_layer(n).get_weights())
                }
                np.savez(os.path.join(args.work, f"{args.tag}_step{batch + 1}.npz"), **weights)

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    snapshots = {int(s) for s in args.snapshots.split(",")} if args.snapshots else set()
    levels = []
    for level in range(args.levels):
        clock = Clock()
        started = time.perf_counter()
        model.fit(
            batches(x_train, y_train, args.seed, args.replicate, 60),
            steps_per_epoch=args.iterations,
            epochs=1,
            callbacks=[imp, clock],
            verbose=0,
        )
        fit_seconds = time.perf_counter() - started
        _, test_accuracy = model.evaluate(data.x_test, data.y_test, batch_size=1000, verbose=0)
        _, val_accuracy = model.evaluate(data.x_val, data.y_val, batch_size=1000, verbose=0)
        masks = {k: np.asarray(v).astype(bool) for k, v in lottery_tf.get_masks(model).items()}
        trained = {
            f"{n}/{w}": np.asarray(v)
            for n, _, _ in LAYERS
            for w, v in zip(("kernel", "bias"), model.get_layer(n).get_weights())
        }
        np.savez(
            os.path.join(args.work, f"{backend}_r{args.replicate}_l{level}.npz"),
            **{f"mask:{k}": v for k, v in masks.items()},
            **{f"weight:{k}": v for k, v in trained.items()},
        )
        kernel = trained["fc1/kernel"]
        levels.append(
            {
                "level": level,
                "density": float(lottery_tf.overall_density(model)),
                "kept": int(sum(int(m.sum()) for m in masks.values())),
                "pruned_weights_exactly_zero": bool(np.all(kernel[~masks["fc1/kernel"]] == 0.0)),
                "test_accuracy": float(test_accuracy),
                "val_accuracy": float(val_accuracy),
                "steps_per_second": (args.iterations - TIMED_FROM) / (clock.end - clock.start),
                "fit_seconds": fit_seconds,
            }
        )
        print(f"[{backend} r{args.replicate}] level {level}: {json.dumps(levels[-1])}", flush=True)
    if args.snapshots:
        return
    with open(os.path.join(args.work, f"{backend}_r{args.replicate}.json"), "w") as f:
        json.dump({"backend": backend, "replicate": args.replicate, "keras": keras.__version__, "levels": levels}, f)


def run_worker(backend, replicate, args, init_path, extra=()):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        f"--backend={backend}",
        f"--replicate={replicate}",
    ]
    command += [f"--init={init_path}", f"--work={args.work}", f"--iterations={args.iterations}"]
    command += [f"--levels={args.levels}", f"--seed={args.seed}", *extra]  # extra last: its --levels wins
    return subprocess.Popen(command, env=env, cwd=ROOT)


def versions():
    script = "import jax, keras, tensorflow as tf; print(tf.__version__, jax.__version__, keras.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    )
    tf_version, jax_version, keras_version = out.stdout.split()
    return {"tensorflow": tf_version, "jax": jax_version, "keras": keras_version}


def compare(args, meta):
    """Per level: both backends' numbers, masks differing, weights apart."""
    runs = {}
    for backend in BACKENDS:
        for r in range(args.replicates):
            with open(os.path.join(args.work, f"{backend}_r{r}.json")) as f:
                runs[backend, r] = json.load(f)["levels"]
    rows, table = [], []
    for level in range(args.levels):
        per = {"level": level, "replicates": []}
        for r in range(args.replicates):
            tf_run = np.load(os.path.join(args.work, f"tensorflow_r{r}_l{level}.npz"))
            jax_run = np.load(os.path.join(args.work, f"jax_r{r}_l{level}.npz"))
            masks_differ = sum(int((tf_run[k] != jax_run[k]).sum()) for k in tf_run.files if k.startswith("mask:"))
            sq_diff = sum(
                float(((tf_run[k].astype(np.float64) - jax_run[k]) ** 2).sum())
                for k in tf_run.files
                if k.startswith("weight:")
            )
            sq_norm = sum(
                float((tf_run[k].astype(np.float64) ** 2).sum()) for k in tf_run.files if k.startswith("weight:")
            )
            max_diff = max(float(np.abs(tf_run[k] - jax_run[k]).max()) for k in tf_run.files if k.startswith("weight:"))
            one = {
                "replicate": r,
                "masks_differ": masks_differ,
                "trained_weights_relative_l2_apart": (sq_diff / sq_norm) ** 0.5,
                "trained_weights_max_abs_apart": max_diff,
            }
            for backend in BACKENDS:
                one[backend] = runs[backend, r][level]
                rows.append(
                    {
                        "backend": backend,
                        "replicate": r,
                        **runs[backend, r][level],
                        "masks_differ_from_other_backend": masks_differ,
                    }
                )
            per["replicates"].append(one)
        table.append(per)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**meta, "levels": table}, f, indent=1)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def ms(values):
        return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"

    lines = [
        "| level | density (TF / JAX) | TF test acc. | JAX test acc. | abs. difference of means | replicate spread (TF, JAX: max - min) | masks differing (per replicate) | weights kept | steps/s TF | steps/s JAX |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for per in table:
        reps = per["replicates"]
        acc = {b: [rep[b]["test_accuracy"] for rep in reps] for b in BACKENDS}
        dens = {b: sorted({rep[b]["density"] for rep in reps}) for b in BACKENDS}
        spread = {b: max(acc[b]) - min(acc[b]) for b in BACKENDS}
        speed = {b: np.mean([rep[b]["steps_per_second"] for rep in reps]) for b in BACKENDS}
        lines.append(
            f"| {per['level']} | {dens['tensorflow'][0]:.4f} / {dens['jax'][0]:.4f}"
            f"{'' if dens['tensorflow'] == dens['jax'] and len(dens['jax']) == 1 else ' **DIFFER**'} "
            f"| {ms(acc['tensorflow'])} | {ms(acc['jax'])} | {abs(np.mean(acc['tensorflow']) - np.mean(acc['jax'])):.4f} "
            f"| {spread['tensorflow']:.4f}, {spread['jax']:.4f} | {', '.join(str(rep['masks_differ']) for rep in reps)} "
            f"| {reps[0]['tensorflow']['kept']:,} | {speed['tensorflow']:.0f} | {speed['jax']:.0f} |"
        )
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def level_one_masks(weights):
    """The masks the first pruning step makes from these weights (numpy; layer-wise 20%, output 10%)."""
    masks = {}
    for name, _, _ in LAYERS:
        w = np.abs(weights[f"{name}/kernel"]).ravel()
        keep = w.size - int(np.ceil((0.1 if name == "output" else 0.2) * w.size))
        mask = np.zeros(w.size, bool)
        mask[np.argsort(-w, kind="stable")[:keep]] = True
        masks[name] = mask
    return masks


DIVERGENCE_RUNS = (  # tag, backend, extra worker flags
    ("tf_a", "tensorflow", ()),
    ("tf_b", "tensorflow", ()),
    ("tf_nojit", "tensorflow", ("--no_jit",)),
    ("jax_a", "jax", ()),
    ("jax_b", "jax", ()),
)
DIVERGENCE_PAIRS = (
    ("tf_a", "tf_b", "TensorFlow, XLA, run twice"),
    ("jax_a", "jax_b", "JAX, run twice"),
    ("tf_a", "tf_nojit", "TensorFlow: XLA against no XLA"),
    ("tf_a", "jax_a", "TensorFlow (XLA) against JAX"),
)


def divergence(args):
    """Level 0 of replicate 0 five times: how far apart the weights get, step by step, and why."""
    init_path = os.path.join(args.work, "init_r0.npz")
    np.savez(init_path, **initial_weights(args.seed, 0))
    steps = sorted(int(s) for s in args.snapshots.split(","))
    for tag, backend, extra in DIVERGENCE_RUNS:
        if os.path.exists(os.path.join(args.work, f"{tag}_step{steps[-1]}.npz")):
            continue  # run already (a --work folder reused)
        p = run_worker(
            backend, 0, args, init_path, ("--levels=1", f"--tag={tag}", f"--snapshots={args.snapshots}", *extra)
        )
        if p.wait() != 0:
            sys.exit(f"backend_study: a worker failed (exit {p.returncode})")
    rows = []
    for a, b, what in DIVERGENCE_PAIRS:
        for step in steps:
            wa = dict(np.load(os.path.join(args.work, f"{a}_step{step}.npz")))
            wb = dict(np.load(os.path.join(args.work, f"{b}_step{step}.npz")))
            apart = sum(float(((wa[k].astype(np.float64) - wb[k]) ** 2).sum()) for k in wa)
            norm = sum(float((wa[k].astype(np.float64) ** 2).sum()) for k in wa)
            ma, mb = level_one_masks(wa), level_one_masks(wb)
            rows.append(
                {
                    "pair": what,
                    "step": step,
                    "identical": all(np.array_equal(wa[k], wb[k]) for k in wa),
                    "relative_l2_apart": (apart / norm) ** 0.5,
                    "max_abs_apart": max(float(np.abs(wa[k] - wb[k]).max()) for k in wa),
                    "level_one_masks_differ": sum(int((ma[k] != mb[k]).sum()) for k in ma),
                }
            )
    with open(os.path.join(args.out, "divergence.json"), "w") as f:
        json.dump({"command": "python tools/backend_study.py " + " ".join(sys.argv[1:]), "rows": rows}, f, indent=1)
    lines = [
        "| runs compared | step | weights identical | relative L2 apart | max abs. apart | level-1 masks differing |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['step']} | {'yes' if r['identical'] else 'no'} | {r['relative_l2_apart']:.2e} "
            f"| {r['max_abs_apart']:.2e} | {r['level_one_masks_differ']:,} |"
        )
    with open(os.path.join(args.out, "divergence.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--replicates", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "backends"))
    parser.add_argument("--work", default=None, help="folder for masks and trained weights (default: a temporary one)")
    parser.add_argument(
        "--concurrent", action="store_true", help="run the two backends of a replicate at the same time"
    )
    parser.add_argument("--compare_only", action="store_true", help="only compare what --work holds")
    parser.add_argument(
        "--divergence",
        action="store_true",
        help="instead of the study: level 0 of replicate 0 run twice per backend and once without XLA, compared at --snapshots",
    )
    parser.add_argument(
        "--snapshots",
        default=None,
        help="steps at which --divergence compares weights (default 1,10,100,1000,2000,5000)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no_jit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--replicate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--init", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations <= TIMED_FROM:
        parser.error(f"--iterations must be more than {TIMED_FROM}")
    if args.worker:
        worker(args)
        return
    args.work = args.work or tempfile.mkdtemp(prefix="backend_study_")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    if args.divergence:
        args.snapshots = args.snapshots or f"1,10,100,1000,2000,{args.iterations}"
        divergence(args)
        return
    meta = {
        "command": "python tools/backend_study.py " + " ".join(sys.argv[1:]),
        "iterations": args.iterations,
        "level_count": args.levels,  # "levels" holds the per-level numbers
        "replicates": args.replicates,
        "seed": args.seed,
        "concurrent": args.concurrent,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "versions": versions(),
    }
    print(f"work folder: {args.work}", flush=True)
    if not args.compare_only:
        started = time.time()
        for r in range(args.replicates):
            init_path = os.path.join(args.work, f"init_r{r}.npz")
            np.savez(init_path, **initial_weights(args.seed, r))
            order = BACKENDS if r % 2 == 0 else BACKENDS[::-1]  # alternate who goes first
            if args.concurrent:
                procs = [run_worker(b, r, args, init_path) for b in order]
            else:
                procs = []
                for b in order:
                    p = run_worker(b, r, args, init_path)
                    p.wait()
                    procs.append(p)
            for p in procs:
                if p.wait() != 0:
                    sys.exit(f"backend_study: a worker failed (exit {p.returncode})")
        meta["wall_seconds"] = round(time.time() - started)
    compare(args, meta)


if __name__ == "__main__":
    main()
