"""Where an export folder is written: a ticket's artifacts, each measured in its own runtime, and ``export.json``.

The export command (:mod:`lottery_tf.export`, a run's ticket) and
:func:`export_model` (a model you hold) write through the same code: a plain
``.keras``, LiteRT files with sparse tensor storage (read back from the file),
a SavedModel; every artifact's size, accuracy, output difference from Keras and
latency. The folder is written beside its place and renamed into it, so it
appears whole or not at all; :func:`earlier_export_problem` decides what
``overwrite`` may replace, and :mod:`lottery_tf.store.output_folders` keeps
exports out of run data.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import time

import numpy as np

from lottery_tf.store import output_folders

FORMATS = ("keras", "litert", "saved_model")
QUANTIZE = ("none", "dynamic", "int8", "int8_io")
KERAS_FILE = "ticket.keras"
SAVED_MODEL = "saved_model"


def litert_file(mode: str) -> str:
    """The LiteRT file of a quantization mode: ``ticket.tflite``, ``ticket_dynamic.tflite``, ``ticket_int8.tflite``,
    ``ticket_int8_io.tflite``."""
    return "ticket.tflite" if mode == "none" else f"ticket_{mode}.tflite"


# Every path an export folder may hold (what --overwrite may replace): its own files and, in its SavedModel,
# what TensorFlow writes for a Keras model (no assets).
_WRITTEN = {KERAS_FILE, *(litert_file(m) for m in QUANTIZE)}
_SAVED_MODEL_PATH = re.compile(
    r"(saved_model\.pb|fingerprint\.pb|assets|variables|variables/variables\.(index|data-\d{5}-of-\d{5}))"
)
LATENCY_RUNS = 50
# A batch-1 median settles within a few percent after tens of runs; 1,000 (20x the default) already takes
# minutes per artifact for a large model (ResNet-50: ~1 min at 60 ms a run, and an export times up to ten
# artifacts and delegate settings). More is a typo (1000000000 would run for years), not a measurement.
MAX_LATENCY_RUNS = 1000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Keras colours its messages for terminals


class ExportError(ValueError):
    """Bad export input; the message names the flag or file."""


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


def structure_satisfied(masks: dict, pruning) -> dict:
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
        ours = {"experiment", "level"} <= record.keys() or record.get("source") == "lottery_tf.export_model"
        if "artifacts" not in record or not ours:
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


def check_latency_runs(runs, flag: str = "latency_runs") -> None:
    """``runs`` must be an integer in 1..:data:`MAX_LATENCY_RUNS`.

    Raises:
        ExportError: Naming ``flag``.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= MAX_LATENCY_RUNS:
        raise ExportError(
            f"{flag}: expected an integer in [1, {MAX_LATENCY_RUNS}] (batch-1 runs timed per artifact; the "
            f"median settles after tens), got {runs!r}"
        )


def check_out(out: str, experiment: str | None, overwrite: bool, flag: str = "--out") -> None:
    """Refuses an output folder that cannot be made (a file or a link loop on its path, a filesystem without
    files, no permission), that is, holds or lies in run data, or exists and is not an earlier export."""
    problem = output_folders.creatable_problem(out)
    if problem is None:
        problem = output_folders.output_problem(out, reads=[experiment] if experiment else [], exports_allowed=True)
    if problem is None and os.path.lexists(out):
        problem = earlier_export_problem(out)
        if problem is None and not overwrite:
            problem = f"{out} exists; pass {'--overwrite' if flag == '--out' else 'overwrite=True'} to replace it"
    if problem is not None:
        raise ExportError(f"{flag}: {problem}")


def _inference_copy(plain):
    """The plain model without its optimizer: a shipped ticket is its graph and weights, not the run's
    optimizer state (Adam's two moments would triple the file)."""
    if not plain.compiled:
        return plain
    copy = plain.__class__.from_config(plain.get_config())
    copy.set_weights(plain.get_weights())
    return copy


def raw_input_model(plain, standardize: dict, raw_shape: tuple):
    """``plain`` behind the run's own preprocessing, so it takes the inputs a user has (raw pixels, 0-255).

    The splits were made as ``x = (raw * scale - mean) / std`` (per channel);
    the returned model does the same in its first layers (``Rescaling``, then
    ``Normalization``), and adds the channel axis a grayscale model expects.
    """
    from lottery_tf.core.keras_compat import keras

    mean = np.asarray(standardize["mean"], np.float32)
    std = np.asarray(standardize["std"], np.float32)
    inputs = keras.Input(tuple(raw_shape), dtype="float32", name="pixels")
    x = keras.layers.Rescaling(float(standardize["scale"]), name="to_unit_range")(inputs)
    axis = None if mean.size == 1 else -1
    x = keras.layers.Normalization(
        axis=axis,
        mean=mean if axis else float(mean[0]),
        variance=(std**2) if axis else float(std[0] ** 2),
        name="standardize",
    )(x)
    model_shape = tuple(plain.input_shape[1:])
    if tuple(raw_shape) != model_shape:
        x = keras.layers.Reshape(model_shape, name="channels")(x)
    return keras.Model(inputs, plain(x), name=plain.name)


def input_contract(shape, standardize: dict | None) -> dict:
    """What the exported files take (one example of ``shape``): dtype, range, the preprocessing inside them, the batch."""
    shape = [int(d) for d in shape]
    batch = (
        "any: Keras, the SavedModel and the LiteRT interpreter take any batch (a .tflite file's input has batch "
        "1 until interpreter.resize_tensor_input(index, [n, ...]) and interpreter.allocate_tensors())"
    )
    if standardize is None:
        return {
            "shape": shape,
            "dtype": "float32",
            "range": None,
            "preprocessing": "none inside the files: they take what the model took",
            "batch": batch,
        }
    mean = ", ".join(f"{v:.6g}" for v in standardize["mean"])
    std = ", ".join(f"{v:.6g}" for v in standardize["std"])
    return {
        "shape": shape,
        "dtype": "float32 (the raw values; ticket_int8_io.tflite: int8, quantized with its input scale)",
        "range": [0, round(1 / standardize["scale"])],
        "preprocessing": (
            f"inside every file, as the run standardized its data: x * {standardize['scale']:.6g}, then "
            f"(x - [{mean}]) / [{std}]"
        ),
        "batch": batch,
    }


def _owner_tag() -> str:
    """``<host>.<pid>``: whose temporary export folder it is (a later export removes it once that process is gone)."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()).replace("-", "_")
    return f"{host}.{os.getpid()}"


def _scratch_folder(parent: str, prefix: str) -> str:
    """A new folder ``<parent>/<prefix><random>`` with the mode every run folder has (0777 less the umask).

    ``tempfile.mkdtemp`` makes it 0700, and the export folder is this folder renamed.
    """
    while True:
        path = os.path.join(parent, prefix + secrets.token_hex(4))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def remove_leftovers(parent: str) -> list[str]:
    """Removes the temporary folders of exports into ``parent`` killed on this host (their process is gone).

    Returns:
        The folders removed. Those of live processes, of other hosts, or named without an owner are kept
        (the health check names them).
    """
    removed = []
    host = _owner_tag().rsplit(".", 1)[0]
    for path in glob.glob(os.path.join(parent, ".tmp-export-*")) + glob.glob(os.path.join(parent, ".tmp-replaced-*")):
        match = re.match(r"\.tmp-(?:export|replaced)-(.+)\.(\d+)-[^-]+$", os.path.basename(path))
        if not match or match.group(1) != host or _alive(int(match.group(2))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_folder(record, model, data, formats, quantize, out, latency_runs, experiment, standardize=None) -> dict:
    """Measures and writes every artifact of ``model`` into ``out`` (whole, or not at all); returns the record.

    With ``standardize`` (the run's preprocessing), every artifact takes raw inputs
    (:func:`raw_input_model`) and ``data`` holds raw examples.
    """
    from lottery_tf.core import litert, masking

    x_test, y_test, representative = data
    try:
        masks = masking.get_masks(model)
        weights = masking.get_prunable_weights(model)
    except ValueError:  # a plain model (export_model): nothing to strip or to check weight by weight
        masks, weights = {}, {}
    plain, record = _plain(model, masks, record)
    if standardize is not None:
        plain = raw_input_model(plain, standardize, x_test.shape[1:])
    record = {**record, "input_contract": input_contract(x_test.shape[1:], standardize)}
    keras_logits = np.asarray(plain.predict(x_test, batch_size=256, verbose=0))
    record = {
        **record,
        "density": masking.overall_density(model) if masks else None,
        "layer_densities": masking.layer_densities(model) if masks else {},
        "test_examples": int(len(y_test)),
        "interpreter": litert.interpreter_name(),
        "artifacts": {},
        "problems": [],
    }
    parent = os.path.dirname(out) or "."
    os.makedirs(parent, exist_ok=True)
    remove_leftovers(parent)
    scratch = _scratch_folder(parent, f".tmp-export-{_owner_tag()}-")
    try:
        keras_entry = {"accuracy": _accuracy(keras_logits, y_test)}
        keras_entry["latency"] = _latency(lambda x: plain(x, training=False), x_test[:1], latency_runs)
        if "keras" in formats:
            path = os.path.join(scratch, KERAS_FILE)
            _inference_copy(plain).save(path)
            payload = open(path, "rb").read()
            keras_entry.update(file=KERAS_FILE, bytes=len(payload), gzip_bytes=_gzip_size(payload))
        record["artifacts"]["keras"] = keras_entry
        if "litert" in formats:
            for mode in quantize:
                name = litert_file(mode)
                record["artifacts"][name] = _litert_artifact(
                    scratch, name, plain, mode, data, keras_logits, masks, weights, latency_runs, record["problems"]
                )
        if "saved_model" in formats:
            record["artifacts"]["saved_model"] = _saved_model(
                scratch, plain, x_test, y_test, keras_logits, record["problems"]
            )
        with open(os.path.join(scratch, "export.json"), "w") as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
        if os.path.lexists(out):  # overwrite: the old export goes only once the new one is complete
            check_out(out, experiment, overwrite=True)  # still an earlier export, and nothing else, now
            trash = tempfile.mkdtemp(prefix=f".tmp-replaced-{_owner_tag()}-", dir=parent)
            os.rename(out, os.path.join(trash, "old"))
            os.rename(scratch, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return record


def _plain(model, masks, record):
    """The model to write: stripped of its masks, or, for a subclassed model whose own code creates
    MaskedLayers (no copy can drop them), the model itself with its masks folded into its zeros."""
    from lottery_tf.core import masking
    from lottery_tf.core.keras_compat import Functional, keras

    if not masks:
        return model, record
    if masking.masked_layers(model) and not isinstance(model, (keras.Sequential, Functional)):
        note = (
            "the model's own code creates lottery_tf.MaskedLayer: its pruned weights are exact zeros in every "
            "file, and ticket.keras loads after import lottery_tf"
        )
        return model, {**record, "masks_folded": note}
    return masking.strip_masks(model), record


def export_model(
    model,
    out: str,
    x_test,
    y_test,
    formats=("keras", "litert"),
    quantize=("none",),
    x_train=None,
    latency_runs: int = LATENCY_RUNS,
    overwrite: bool = False,
) -> dict:
    """Exports a model you hold, as ``python -m lottery_tf.export`` exports a run's ticket.

    Writes ``out/`` whole or not at all: ``ticket.keras`` (plain Keras, masks
    stripped, pruned weights 0.0), LiteRT files with sparse tensor storage
    (``ticket.tflite``; ``ticket_dynamic.tflite`` with int8 weights;
    ``ticket_int8.tflite`` with int8 weights and activations and
    ``ticket_int8_io.tflite`` with int8 input and output too, calibrated on
    ``x_train``), a SavedModel if asked, and ``export.json``: densities, every
    file's size, its accuracy on ``(x_test, y_test)`` run in its own runtime
    (the LiteRT interpreter with and without its default delegates), the
    largest output difference from Keras, a batch-1 latency, and for the
    LiteRT files how each masked weight is stored (read back from the file).

    Args:
        model: A Keras classifier (logits or probabilities), masked
            (:func:`lottery_tf.wrap_model`, or built from MaskedLayer) or not.
        out: The folder to write. Never run data (an experiment, a folder
            holding one, or inside one but under its ``exports/``); an existing
            folder is replaced only with ``overwrite=True`` and only if it is
            empty or an earlier export with nothing else in it.
        x_test, y_test: Examples and integer labels the accuracy is measured on.
        formats: Some of ``"keras"``, ``"litert"``, ``"saved_model"``.
        quantize: LiteRT files: some of ``"none"``, ``"dynamic"``, ``"int8"``,
            ``"int8_io"``.
        x_train: Examples to calibrate ``"int8"`` and ``"int8_io"`` on (the first 256 are used).
        latency_runs: Batch-1 invocations timed per artifact (1..1000).
        overwrite: Whether an earlier export in ``out`` may be replaced.

    Returns:
        What ``export.json`` holds.

    Raises:
        ExportError: A ``ValueError``, for any bad input, before anything is
            written (one line naming the argument): unknown formats, labels
            that are not the model's classes, examples the model cannot take,
            an output folder that is run data or not an earlier export.

    Example:

    >>> record = lottery_tf.export_model(ticket, "my_export", x_test, y_test, quantize=("none", "dynamic"))  # doctest: +SKIP
    >>> record["artifacts"]["ticket.tflite"]["without_default_delegates"]["accuracy"]  # doctest: +SKIP
    """
    from lottery_tf.core.keras_compat import keras

    formats, quantize = list(formats), list(quantize)
    for name, items, allowed in (("formats", formats, FORMATS), ("quantize", quantize, QUANTIZE)):
        unknown = [i for i in items if i not in allowed]
        if not items or unknown or len(set(items)) != len(items):
            raise ExportError(f"{name}: expected some of {', '.join(allowed)} (each once); got {items!r}")
    if quantize != ["none"] and "litert" not in formats:
        raise ExportError(f"quantize={quantize!r} applies to LiteRT files: add 'litert' to formats")
    if not isinstance(model, keras.Model) or not model.built:
        raise ExportError(f"model: expected a built keras.Model; got {type(model).__name__}")
    x_test, y_test = np.asarray(x_test), np.asarray(y_test)
    if x_test.ndim < 2 or y_test.ndim != 1 or len(x_test) != len(y_test) or not len(y_test):
        raise ExportError(
            f"x_test, y_test: expected examples and one integer label each; got shapes {x_test.shape}, {y_test.shape}"
        )
    if not np.issubdtype(y_test.dtype, np.integer):
        raise ExportError(f"y_test: expected integer class labels; got {y_test.dtype} values")
    try:
        outputs = np.asarray(model(x_test[:1], training=False))
    except Exception as error:  # whatever Keras raises: the model cannot take these examples
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first = _ANSI.sub("", first)[:120]
        raise ExportError(f"x_test: the model cannot take examples of shape {x_test.shape[1:]} ({first})") from None
    classes = int(outputs.shape[-1])
    if outputs.ndim != 2 or y_test.min() < 0 or y_test.max() >= classes:
        raise ExportError(
            f"y_test: labels must be classes 0..{classes - 1} of the model's {classes} outputs; got "
            f"{int(y_test.min())}..{int(y_test.max())} (outputs of shape {outputs.shape[1:]})"
        )
    full = [mode for mode in quantize if mode in ("int8", "int8_io")]
    if full and (x_train is None or len(x_train) == 0):
        raise ExportError(f"x_train: quantize={full[0]!r} calibrates on training examples; pass x_train")
    check_latency_runs(latency_runs)
    if not isinstance(out, str) or not out:
        raise ExportError(f"out: expected a folder path, got {out!r}")
    out = os.path.normpath(os.path.expanduser(out))
    check_out(out, None, overwrite, flag="out")
    representative = None if x_train is None else np.asarray(x_train)[:256]
    record = {"model": model.name, "source": "lottery_tf.export_model"}
    return write_folder(record, model, (x_test, y_test, representative), formats, quantize, out, latency_runs, None)


# The configurations a user of a .tflite file gets without asking: the interpreter's defaults (XNNPACK on
# CPU), and its builtin kernels (what runs where no delegate applies, and TFLite's sparse kernels).
CONFIGURATIONS = {
    "default_delegates": "the interpreter's default delegates (XNNPACK)",
    "without_default_delegates": "the builtin kernels (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)",
}
AGREEMENT = (
    "float32 files: every output within 1e-3 x (1 + the largest Keras output) of Keras's; quantized files: finite "
    "outputs, the same top class as Keras for at least 95% of the test examples and accuracy at most 2 points below"
)


def agreement_with_keras(mode: str, logits, keras_logits, labels) -> dict:
    """How a runtime's outputs compare with Keras's on the same examples, and whether they agree (:data:`AGREEMENT`).

    Args:
        mode: The file's quantization (``none``, ``dynamic``, ``int8``, ``int8_io``).
        logits, keras_logits: The runtime's and Keras's outputs, (examples, classes).
        labels: The examples' classes.
    """
    logits, keras_logits = np.asarray(logits, np.float64), np.asarray(keras_logits, np.float64)
    finite = bool(np.all(np.isfinite(logits)))
    agreement = float(np.mean(np.argmax(logits, -1) == np.argmax(keras_logits, -1)))
    difference = float(np.max(np.abs(logits - keras_logits))) if finite else None
    accuracy = _accuracy(logits, labels)
    if mode == "none":
        agrees = finite and difference <= 1e-3 * (1.0 + float(np.max(np.abs(keras_logits))))
    else:
        agrees = finite and agreement >= 0.95 and accuracy >= _accuracy(keras_logits, labels) - 0.02
    return {
        "accuracy": accuracy,
        "max_output_difference": difference,
        "finite_outputs": finite,
        "prediction_agreement": agreement,
        "agrees_with_keras": bool(agrees),
    }


def _warn(line: str, problems: list) -> None:
    problems.append(line)
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _stored_check(flat: bytes, weights: dict, masks: dict) -> dict:
    """Every masked weight of the ticket against the tensor the file stores it in (decoded, dequantized)."""
    from lottery_tf.core import litert

    per_weight = litert.compare_weights(litert.decode(flat), weights, masks)
    missing = sorted(name for name, found in per_weight.items() if found["tensor"] is None)
    found = [w for w in per_weight.values() if w["tensor"] is not None]
    return {
        "equal_to_ticket": not missing and not any(w["lost"] or w["pruned_stored_nonzero"] for w in found),
        "lost": sum(w["lost"] for w in found),
        "pruned_stored_nonzero": sum(w["pruned_stored_nonzero"] for w in found),
        "not_found": missing,
        "per_weight": per_weight,
        "criterion": "kept weights stored at their value (float: exactly; int8: within half a quantization "
        "step), pruned ones as 0",
    }


def _losses(check: dict) -> str:
    parts = [
        f"{name}: {w['lost']} of {w['kept']:,} kept weights"
        + (f", {w['pruned_stored_nonzero']} pruned ones" if w["pruned_stored_nonzero"] else "")
        for name, w in check["per_weight"].items()
        if w["tensor"] is not None and (w["lost"] or w["pruned_stored_nonzero"])
    ]
    parts += [f"{name}: not found in the file" for name in check["not_found"]]
    return "; ".join(parts)


def _litert_artifact(scratch, name, plain, mode, data, keras_logits, masks, weights, runs, problems) -> dict:
    from lottery_tf.core import litert

    x_test, y_test, calibration = data
    representative = calibration if mode in ("int8", "int8_io") else None
    flat = litert.convert(plain, mode, representative)
    entry = {"file": name, "quantize": mode, "storage": "sparse tensor encoding where the converter chose it"}
    check = _stored_check(flat, weights, masks) if masks else None
    if check is not None and not check["equal_to_ticket"]:
        # TensorFlow's converter drops the last block of a sparse tensor when it does not fill (an input width
        # that is not a multiple of 4 for float, 16 for int8): store every weight dense instead.
        losses = _losses(check)
        dense = litert.convert(plain, mode, representative, sparse=False)
        dense_check = _stored_check(dense, weights, masks)
        if not dense_check["equal_to_ticket"]:
            entry.update(
                error=f"not written: its stored weights differ from the ticket's ({losses})", stored_weights=check
            )
            _warn(f"{name} {entry['error']}", problems)
            return entry
        entry["storage"] = "dense: the sparse encoding lost " + losses
        print(f"note: {name}: the sparse encoding lost {losses}; written with dense storage", file=sys.stderr)
        flat, check = dense, dense_check
    with open(os.path.join(scratch, name), "wb") as handle:
        handle.write(flat)
    entry.update(bytes=len(flat), gzip_bytes=_gzip_size(flat))
    if check is not None:
        entry["stored_weights"] = {k: v for k, v in check.items() if k != "per_weight"}
    stored = litert.storage(flat)
    by_weight = _weights_for(stored, masks)
    entry["weights"] = {
        weight: {
            **stored[i],
            "kept": int(np.count_nonzero(masks[weight])),
            **({k: check["per_weight"][weight][k] for k in ("lost", "max_error")} if check else {}),
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
    keras_accuracy = _accuracy(keras_logits, y_test)
    for label in CONFIGURATIONS:
        try:
            runner = litert.Runner(flat, default_delegates=label == "default_delegates")
            logits = runner.predict(x_test)
            entry[label] = {
                **agreement_with_keras(mode, logits, keras_logits, y_test),
                "latency": {
                    "batch": 1,
                    "runs": runs,
                    "median_ms": 1000 * float(np.median(runner.time(x_test[:1], runs))),
                },
            }
        except RuntimeError as error:
            entry[label] = {"error": str(error), "agrees_with_keras": False}
    entry["agreement_criterion"] = AGREEMENT
    right = [label for label in CONFIGURATIONS if entry[label]["agrees_with_keras"]]
    entry["run_with"] = [CONFIGURATIONS[label] for label in right]
    for label in CONFIGURATIONS:
        result = entry[label]
        if result["agrees_with_keras"]:
            continue
        if "error" in result:
            what = f"the interpreter cannot run it ({result['error']})"
        elif not result["finite_outputs"]:
            what = f"it computes non-finite outputs (accuracy {100 * result['accuracy']:.2f}%)"
        else:
            what = (
                f"its outputs differ from Keras's (accuracy {100 * result['accuracy']:.2f}% against "
                f"{100 * keras_accuracy:.2f}%, the same top class for {100 * result['prediction_agreement']:.1f}%)"
            )
        advice = f"run it with {entry['run_with'][0]}" if right else "no configuration computes the ticket"
        _warn(f"{name} under {CONFIGURATIONS[label]}: {what}; {advice}", problems)
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
