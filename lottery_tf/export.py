"""Export a run's ticket: a plain ``.keras``, LiteRT files with sparse storage, a SavedModel, and what each measures.

Usage::

    python -m lottery_tf.export EXPERIMENT_FOLDER --replicate=0 --level=7 [--branch=main] [--weights=final]
        [--out=DIR] [--formats=keras,litert,saved_model] [--quantize=none,dynamic,int8] [--overwrite]

Writes, in DIR (default ``EXPERIMENT_FOLDER/exports/replicate_R_level_LL_<branch>_<weights>``):

* ``ticket.keras``: the ticket with its masks stripped, a plain Keras model
  that ``keras.models.load_model`` opens without lottery_tf;
* ``ticket.tflite`` (``quantize=none``), ``ticket_dynamic.tflite`` (int8
  weights), ``ticket_int8.tflite`` (int8 weights and activations, calibrated on
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

import argparse
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

from lottery_tf.store import output_folders

FORMATS = ("keras", "litert", "saved_model")
QUANTIZE = ("none", "dynamic", "int8")
KERAS_FILE = "ticket.keras"
SAVED_MODEL = "saved_model"


def litert_file(mode: str) -> str:
    """The LiteRT file of a quantization mode: ``ticket.tflite``, ``ticket_dynamic.tflite``, ``ticket_int8.tflite``."""
    return "ticket.tflite" if mode == "none" else f"ticket_{mode}.tflite"


# Every path an export folder may hold (what --overwrite may replace): its own files and, in its SavedModel,
# what TensorFlow writes for a Keras model (no assets).
_WRITTEN = {KERAS_FILE, *(litert_file(m) for m in QUANTIZE)}
_SAVED_MODEL_PATH = re.compile(
    r"(saved_model\.pb|fingerprint\.pb|assets|variables|variables/variables\.(index|data-\d{5}-of-\d{5}))"
)
LATENCY_RUNS = 50


class ExportError(ValueError):
    """Bad export input; the message names the flag or file."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, as every lottery_tf command
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _parse(argv):
    parser = _Parser(prog="python -m lottery_tf.export", description=__doc__.split("\n")[0])
    parser.add_argument("experiment", help="a run folder <output_dir>/lottery_<hash>")
    parser.add_argument("--replicate", type=int, default=0)
    parser.add_argument("--level", type=int, required=True)
    parser.add_argument(
        "--branch", default="main", help="main, or a branch folder (reinit, random_prune_layerwise, ...)"
    )
    parser.add_argument("--weights", default="final", help="final (as evaluated) or rewind (the ticket at its start)")
    parser.add_argument("--out", default="", help="folder to write (default: <experiment>/exports/<ticket>)")
    parser.add_argument("--formats", default="keras,litert", help=f"some of {', '.join(FORMATS)}")
    parser.add_argument("--quantize", default="none", help="LiteRT files: some of none, dynamic, int8")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    parser.add_argument("--latency_runs", type=int, default=LATENCY_RUNS, help="batch-1 invocations timed per artifact")
    return parser.parse_args(argv)


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


def _gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _folder_bytes(folder: str) -> bytes:
    chunks = []
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as handle:
                chunks.append(handle.read())
    return b"".join(chunks)


def _accuracy(logits, labels) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _latency(run, example, runs: int) -> dict:
    times = []
    run(example)  # warm-up (and compilation)
    for _ in range(runs):
        start = time.perf_counter()
        run(example)
        times.append(time.perf_counter() - start)
    return {"batch": 1, "runs": runs, "median_ms": 1000 * float(np.median(times))}


def _structure_satisfied(masks: dict, pruning) -> dict:
    """Per masked weight, whether its mask has the run's structure (whole blocks; at most N of every M)."""
    from lottery_tf.core.pruning import block_ids, satisfies_n_m

    out = {}
    for name, mask in masks.items():
        if pruning.block:
            ids = block_ids(mask.shape, tuple(pruning.block))[0].ravel()
            kept = np.bincount(ids, weights=(mask.ravel() != 0).astype(float))
            out[name] = bool(np.all((kept == 0) | (kept == np.bincount(ids))))
        elif pruning.n_m:
            out[name] = satisfies_n_m(mask, tuple(pruning.n_m))
        else:
            out[name] = True
    return out


def _weights_for(storage: list[dict], masks: dict) -> dict:
    """Which stored tensor holds which masked weight: the runtime's shape, then the closest count of nonzeros."""
    from lottery_tf.core.pruning import runtime_view

    found, used = {}, set()
    for name, mask in masks.items():
        outputs = runtime_view(mask).shape[0]
        kept = int(np.count_nonzero(mask))
        candidates = [
            i
            for i, t in enumerate(storage)
            if i not in used and int(np.prod(t["shape"])) == mask.size and t["shape"][0] == outputs
        ]
        if candidates:
            best = min(candidates, key=lambda i: abs(storage[i]["nonzeros"] - kept))
            found[name] = best
            used.add(best)
    return found


def earlier_export_problem(folder: str) -> str | None:
    """Why ``--overwrite`` may not replace the existing ``folder``, or None if it may.

    It may replace an empty folder, or an earlier export with nothing else in
    it: ``export.json`` and the files it names, each one that this command
    writes and of its kind (a SavedModel holding only what TensorFlow writes).
    """
    if os.path.islink(folder):
        return f"{folder} is a symbolic link: pass the folder it points to"
    if not os.path.isdir(folder):
        return f"{folder} exists and is not a folder"
    if not os.listdir(folder):
        return None

    def refused(why: str) -> str:
        return f"{folder} is not an earlier export ({why}): lottery_tf.export replaces only its own folders"

    try:
        with open(os.path.join(folder, "export.json")) as handle:
            record = json.load(handle)
        if not {"experiment", "level", "artifacts"} <= record.keys():
            raise KeyError("a key of export.json")
        named = {entry["file"] for entry in record["artifacts"].values() if "file" in entry}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return refused("it holds no readable export.json")
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            top, _, inner = relative.partition(os.sep)
            if os.path.islink(path):
                ours = False
            elif top == SAVED_MODEL and top in named:
                ours = (not inner and os.path.isdir(path)) or bool(inner and _SAVED_MODEL_PATH.fullmatch(inner))
            else:
                ours = relative == "export.json" or (relative in _WRITTEN and relative in named)
                ours = ours and os.path.isfile(path)
            if not ours:
                kind = "link" if os.path.islink(path) else "folder" if os.path.isdir(path) else "file"
                return refused(f"it holds the {kind} {relative!r}, which lottery_tf.export does not write there")
    return None


def _check_out(out: str, experiment: str, overwrite: bool) -> None:
    """Refuses an output folder that is, holds or lies in run data, or exists and is not an earlier export."""
    problem = output_folders.output_problem(out, reads=[experiment], exports_allowed=True)
    if problem is None and os.path.lexists(out):
        problem = earlier_export_problem(out)
        if problem is None and not overwrite:
            problem = f"{out} exists; pass --overwrite to replace it"
    if problem is not None:
        raise ExportError(f"--out: {problem}")


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
    if args.latency_runs < 1:
        raise ExportError(f"--latency_runs: expected an integer >= 1, got {args.latency_runs}")
    experiment = os.path.normpath(os.path.expanduser(args.experiment))
    out = (
        os.path.normpath(os.path.expanduser(args.out))
        if args.out
        else default_folder(experiment, args.replicate, args.level, args.branch, args.weights)
    )
    _check_out(out, experiment, args.overwrite)
    try:
        config = ticket_lib.settings_of(experiment)
        folder = ticket_lib.level_folder(experiment, args.replicate, args.level, args.branch)
        model = ticket_lib.load_ticket(experiment, args.replicate, args.level, args.branch, args.weights)
    except ticket_lib.TicketError as error:
        raise ExportError(str(error)) from None
    try:
        splits = get_splits(config.data)
    except DataUnavailableError as error:
        flag = "--quantize=int8" if "int8" in quantize else "the test accuracy"
        raise ExportError(f"{flag} needs the run's data ({config.data.name}): {error}") from None
    if not hasattr(splits, "x_test"):
        raise ExportError(
            f"--dataset={config.data.name} is streamed: lottery_tf.export measures accuracy on data in "
            "memory (MNIST family, CIFAR-10, synthetic)"
        )
    return _write(args, config, folder, model, splits, formats, quantize, out, experiment)


def _inference_copy(plain):
    """The plain model without its optimizer: a shipped ticket is its graph and weights, not the run's
    optimizer state (Adam's two moments would triple the file)."""
    if not plain.compiled:
        return plain
    copy = plain.__class__.from_config(plain.get_config())
    copy.set_weights(plain.get_weights())
    return copy


def _write(args, config, folder, model, splits, formats, quantize, out, experiment) -> dict:
    from lottery_tf.core import litert, masking
    from lottery_tf.core.keras_compat import keras
    from lottery_tf.store import reader as store

    masks = masking.get_masks(model)
    plain = masking.strip_masks(model)
    x_test, y_test = splits.x_test, splits.y_test
    keras_logits = np.asarray(plain.predict(x_test, batch_size=256, verbose=0))
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
            "satisfied": _structure_satisfied(masks, config.pruning),
        },
        "density": masking.overall_density(model),
        "layer_densities": masking.layer_densities(model),
        "masks_sha256": metrics.get("masks_sha256"),
        "run_test_accuracy": run_accuracy,
        "test_examples": int(len(y_test)),
        "interpreter": litert.interpreter_name(),
        "artifacts": {},
        "problems": [],
    }
    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
        keras_entry = {"accuracy": _accuracy(keras_logits, y_test)}
        keras_entry["latency"] = _latency(lambda x: plain(x, training=False), x_test[:1], args.latency_runs)
        if "keras" in formats:
            path = os.path.join(scratch, KERAS_FILE)
            _inference_copy(plain).save(path)
            data = open(path, "rb").read()
            keras_entry.update(file=KERAS_FILE, bytes=len(data), gzip_bytes=_gzip_size(data))
        record["artifacts"]["keras"] = keras_entry
        if "litert" in formats:
            for mode in quantize:
                name = litert_file(mode)
                record["artifacts"][name] = _litert_artifact(
                    scratch, name, plain, mode, splits, keras_logits, masks, args.latency_runs, record["problems"]
                )
        if "saved_model" in formats:
            record["artifacts"]["saved_model"] = _saved_model(
                scratch, plain, x_test, y_test, keras_logits, record["problems"]
            )
        with open(os.path.join(scratch, "export.json"), "w") as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
        if os.path.lexists(out):  # --overwrite: the old export goes only once the new one is complete
            _check_out(out, experiment, overwrite=True)  # still an earlier export, and nothing else, now
            trash = tempfile.mkdtemp(prefix=".tmp-replaced-", dir=parent)
            os.rename(out, os.path.join(trash, "old"))
            os.rename(scratch, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    del keras
    return record


def _litert_artifact(scratch, name, plain, mode, splits, keras_logits, masks, runs, problems) -> dict:
    from lottery_tf.core import litert

    representative = splits.x_train[:256] if mode == "int8" else None
    flat = litert.convert(plain, mode, representative)
    with open(os.path.join(scratch, name), "wb") as handle:
        handle.write(flat)
    entry = {"file": name, "quantize": mode, "bytes": len(flat), "gzip_bytes": _gzip_size(flat)}
    stored = litert.storage(flat)
    by_weight = _weights_for(stored, masks)
    entry["weights"] = {
        weight: {
            **stored[i],
            "kept": int(np.count_nonzero(masks[weight])),
            "kernel": (
                "dense (DENSIFY expands it when the interpreter loads the file)"
                if "DENSIFY" in stored[i]["read_by"]
                else f"{', '.join(stored[i]['read_by'])} on the stored format"
            ),
        }
        for weight, i in by_weight.items()
    }
    sparse = [w for w in entry["weights"].values() if w["sparse"]]
    kept = sum(w["kept"] for w in entry["weights"].values())
    entry["weight_bytes"] = sum(w["value_bytes"] + w["index_bytes"] for w in entry["weights"].values())
    entry["bytes_per_kept_weight"] = entry["weight_bytes"] / kept if kept else None
    entry["sparse_weights"] = len(sparse)
    for label, delegates in (("default_delegates", True), ("without_default_delegates", False)):
        try:
            runner = litert.Runner(flat, default_delegates=delegates)
            logits = runner.predict(splits.x_test)
            entry[label] = {
                "accuracy": _accuracy(logits, splits.y_test),
                "max_output_difference": float(np.max(np.abs(logits - keras_logits))),
                "latency": {
                    "batch": 1,
                    "runs": runs,
                    "median_ms": 1000 * float(np.median(runner.time(splits.x_test[:1], runs))),
                },
            }
        except RuntimeError as error:
            entry[label] = {"error": str(error)}
            line = f"{name} with {label.replace('_', ' ')}: {error}"
            problems.append(line)
            print(f"warning: {line}", file=sys.stderr, flush=True)
    return entry


def _saved_model(scratch, plain, x_test, y_test, keras_logits, problems) -> dict:
    import tensorflow as tf

    path = os.path.join(scratch, SAVED_MODEL)
    plain.export(path, format="tf_saved_model", verbose=False)
    data = _folder_bytes(path)
    entry = {"file": SAVED_MODEL, "bytes": len(data), "gzip_bytes": _gzip_size(data)}
    try:
        served = tf.saved_model.load(path).signatures["serving_default"]
        logits = np.concatenate(
            [list(served(tf.constant(x_test[i : i + 256])).values())[0].numpy() for i in range(0, len(x_test), 256)]
        )
        entry.update(
            accuracy=_accuracy(logits, y_test), max_output_difference=float(np.max(np.abs(logits - keras_logits)))
        )
    except Exception as error:  # a SavedModel that TensorFlow cannot serve is reported, not fatal
        entry["error"] = str(error).splitlines()[0]
        problems.append(f"saved_model: {entry['error']}")
    return entry


def summary(record: dict) -> str:
    """A few lines for the console."""
    lines = [
        f"{record['branch']} level {record['level']} ({100 * record['density']:.2f}% of weights), run test "
        f"accuracy {100 * record['run_test_accuracy']:.2f}%"
    ]
    for name, entry in record["artifacts"].items():
        accuracy = entry.get("accuracy", entry.get("without_default_delegates", {}).get("accuracy"))
        size = f"{entry['bytes']:,} bytes ({entry['gzip_bytes']:,} gzip)" if "bytes" in entry else "(not written)"
        shown = f"{100 * accuracy:.2f}%" if accuracy is not None else "failed"
        lines.append(f"  {name}: {size}, test accuracy {shown}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
