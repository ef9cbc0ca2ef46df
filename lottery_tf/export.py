"""Export a run's ticket: a plain ``.keras``, LiteRT files with sparse storage (a SavedModel if asked), what each measures.

Usage::

    python -m lottery_tf.export EXPERIMENT_FOLDER --replicate=0 --level=7 [--branch=main] [--weights=final]
        [--out=DIR] [--formats=keras,litert,saved_model] [--quantize=none,dynamic,int8,int8_io] [--overwrite]

Writes, in DIR (default ``EXPERIMENT_FOLDER/exports/replicate_R_level_LL_<branch>_<weights>``):

* ``ticket.keras``: the ticket with its masks stripped, a plain Keras model
  that ``keras.models.load_model`` opens without lottery_tf;
* ``ticket.tflite`` (``quantize=none``), ``ticket_dynamic.tflite`` (int8
  weights), ``ticket_int8.tflite`` (int8 weights and activations),
  ``ticket_int8_io.tflite`` (int8 input and output too, as microcontrollers run; both calibrated on
  training examples): converted with sparse tensor encoding;
* ``saved_model/``: a TF Serving SavedModel, if asked;
* ``export.json``: per-layer and overall density; for every artifact its size
  raw and gzip-compressed, its test accuracy measured by running it on the full
  test set (Keras, the LiteRT interpreter with and without its default
  delegates, the SavedModel) beside the run's own accuracy, the largest output
  difference from the Keras model, a batch-1 latency; and for the LiteRT files
  how each weight is stored (sparse or not, bytes per nonzero, which operator
  reads it).

Everything is checked before anything is written; the folder appears whole
(written beside it, then renamed). ``--out`` is never run data: not the
experiment nor a folder that holds it, not inside a run folder (but under an
experiment's ``exports/``), not a folder that holds experiments
(:mod:`lottery_tf.store.output_folders`). An existing folder is replaced only
with ``--overwrite``, and only if it is empty or an earlier export with nothing
else in it (``export.json`` and the files it names). If one artifact fails at
run time (a delegate that cannot prepare it), ``export.json`` and one line say
so and the others are still written.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from lottery_tf.engine import errors
from lottery_tf.engine.errors import ArgumentParser
from lottery_tf.engine.export_files import (
    FORMATS,
    LATENCY_RUNS,
    MAX_LATENCY_RUNS,
    QUANTIZE,
    ExportError,
    check_latency_runs,
    check_out,
    structure_satisfied,
    write_folder,
)
from lottery_tf.store import output_folders


def _parser() -> ArgumentParser:
    # One line and exit status 2, as every lottery_tf command; an unknown flag is named first.
    parser = ArgumentParser(
        prog="python -m lottery_tf.export",
        description=(
            "Export a run's ticket: a plain .keras file and LiteRT files with sparse storage (a SavedModel only if"
            " --formats names saved_model), and what each measures, into export.json."
        ),
    )
    parser.add_argument("experiment", help="a run folder <output_dir>/lottery_<hash>")
    parser.add_argument("--replicate", type=int, default=0, help="the replicate (default: 0)")
    parser.add_argument("--level", type=int, required=True, help="the level (required)")
    parser.add_argument(
        "--branch",
        default="main",
        help="main, or a branch folder (reinit, random_prune_layerwise, ...) (default: main)",
    )
    parser.add_argument(
        "--weights",
        default="final",
        help="final (as evaluated) or rewind (the ticket at its start) (default: final)",
    )
    parser.add_argument(
        "--out",
        default="",
        help="folder to write (default: <experiment>/exports/replicate_R_level_LL_<branch>_<weights>)",
    )
    parser.add_argument(
        "--formats",
        default="keras,litert",
        help=f"comma-separated, some of {', '.join(FORMATS)} (default: keras,litert)",
    )
    parser.add_argument(
        "--quantize",
        default="none",
        help="LiteRT files, comma-separated: some of none, dynamic, int8, int8_io (default: none)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export (default: off)")
    parser.add_argument(
        "--latency_runs",
        type=int,
        default=LATENCY_RUNS,
        help=f"batch-1 invocations timed per artifact, 1..{MAX_LATENCY_RUNS} (default: {LATENCY_RUNS})",
    )
    return parser


def _parse(argv):
    return _parser().parse_args(argv)


def _items(flag: str, text: str, allowed) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ExportError(f"--{flag}: expected some of {', '.join(allowed)}, got nothing")
    for item in items:
        if item not in allowed:
            raise ExportError(f"--{flag}: unknown {item!r}; expected some of {', '.join(allowed)}")
    if len(set(items)) != len(items):
        raise ExportError(f"--{flag}: {text!r} names one twice")
    return items


def default_folder(experiment: str, replicate: int, level: int, branch: str, weights: str) -> str:
    return os.path.join(
        experiment, output_folders.EXPORTS, f"replicate_{replicate}_level_{level:02d}_{branch}_{weights}"
    )


def export(args) -> dict:
    """Checks every input, then writes the export folder. Returns what ``export.json`` holds."""
    from lottery_tf.engine import ticket as ticket_lib
    from lottery_tf.engine.data import DataUnavailableError, get_splits

    formats = _items("formats", args.formats, FORMATS)
    quantize = _items("quantize", args.quantize, QUANTIZE)
    if args.weights not in ticket_lib.WEIGHTS:
        raise ExportError(f"--weights: expected final or rewind, got {args.weights!r}")
    if quantize != ["none"] and "litert" not in formats:
        raise ExportError(f"--quantize={args.quantize} applies to LiteRT files: add litert to --formats")
    check_latency_runs(args.latency_runs, "--latency_runs")
    experiment = os.path.normpath(os.path.expanduser(args.experiment))
    out = (
        os.path.normpath(os.path.expanduser(args.out))
        if args.out
        else default_folder(experiment, args.replicate, args.level, args.branch, args.weights)
    )
    check_out(out, experiment, args.overwrite)
    try:
        config = ticket_lib.settings_of(experiment)
        folder = ticket_lib.level_folder(experiment, args.replicate, args.level, args.branch)
        model = ticket_lib.load_ticket(experiment, args.replicate, args.level, args.branch, args.weights)
    except ticket_lib.TicketError as error:
        raise ExportError(str(error)) from None
    try:
        splits = get_splits(config.data)
    except DataUnavailableError as error:
        full = [mode for mode in quantize if mode in ("int8", "int8_io")]
        flag = f"--quantize={full[0]}" if full else "the test accuracy"
        raise ExportError(f"{flag} needs the run's data ({config.data.name}): {error}") from None
    if not hasattr(splits, "x_test"):
        raise ExportError(
            f"--dataset={config.data.name} is streamed: lottery_tf.export measures accuracy on data in "
            "memory (MNIST family, CIFAR-10, synthetic)"
        )
    return _write(args, config, folder, model, splits, formats, quantize, out, experiment)


def _write(args, config, folder, model, splits, formats, quantize, out, experiment) -> dict:
    from lottery_tf.core import masking
    from lottery_tf.store import reader as store

    masks = masking.get_masks(model)
    metrics = store.read_json(os.path.join(folder, "metrics.json"))
    run_accuracy = (
        metrics["final_test_accuracy"] if args.weights == "final" else metrics["curves"]["test"]["accuracy"][0]
    )
    record = {
        "experiment": experiment,
        "replicate": args.replicate,
        "level": args.level,
        "branch": args.branch,
        "weights": args.weights,
        "model": config.model.name,
        "dataset": config.data.name,
        "structure": {
            "block": list(config.pruning.block),
            "n_m": list(config.pruning.n_m),
            "satisfied": structure_satisfied(masks, config.pruning),
        },
        "masks_sha256": metrics.get("masks_sha256"),
        "run_test_accuracy": run_accuracy,
    }
    standardize = getattr(splits, "standardize", None)
    if standardize is not None and getattr(splits, "raw_x_test", None) is not None:
        # The files take what a user has: raw pixels. The test set as it was read; calibration examples
        # from the training split, un-standardized.
        mean, std = np.asarray(standardize["mean"]), np.asarray(standardize["std"])
        calibration = (splits.x_train[:256] * std + mean) / standardize["scale"]
        raw_shape = splits.raw_x_test.shape[1:]
        data = (
            splits.raw_x_test.astype(np.float32),
            splits.y_test,
            np.clip(calibration, 0, 1 / standardize["scale"]).reshape(-1, *raw_shape).astype(np.float32),
        )
    else:
        standardize, data = None, (splits.x_test, splits.y_test, splits.x_train[:256])
    return write_folder(record, model, data, formats, quantize, out, args.latency_runs, experiment, standardize)


def summary(record: dict) -> str:
    """A few lines for the console."""
    lines = [
        f"{record['branch']} level {record['level']} ({100 * record['density']:.2f}% of weights), run test "
        f"accuracy {100 * record['run_test_accuracy']:.2f}%"
    ]
    for name, entry in record["artifacts"].items():
        size = f"{entry['bytes']:,} bytes ({entry['gzip_bytes']:,} gzip)" if "bytes" in entry else "(not written)"
        if "accuracy" in entry:
            lines.append(f"  {name}: {size}, test accuracy {100 * entry['accuracy']:.2f}%")
            continue
        shown = []
        for label, words in (
            ("default_delegates", "default delegates"),
            ("without_default_delegates", "builtin kernels"),
        ):
            result = entry.get(label, {})
            if "accuracy" in result:
                mark = "" if result.get("agrees_with_keras") else " WRONG"
                shown.append(f"{words} {100 * result['accuracy']:.2f}%{mark}")
            elif "error" in result:
                shown.append(f"{words} failed")
        lines.append(f"  {name}: {size}, test accuracy {', '.join(shown) or 'not measured'}")
    if record.get("problems"):
        lines.append(f"  problems: {len(record['problems'])} (listed above and in export.json)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if line := errors.keras_backend_problem("python -m lottery_tf.export"):
        print(f"error: {line}", file=sys.stderr)
        return 2
    try:
        record = export(args)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {error.filename or args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(summary(record))
    out = args.out or default_folder(
        os.path.normpath(args.experiment), args.replicate, args.level, args.branch, args.weights
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
