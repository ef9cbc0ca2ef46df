"""LiteRT (TensorFlow Lite) files of a ticket: convert with sparse storage, read back what is stored, run them.

* :func:`convert`: a plain Keras model to a ``.tflite`` flatbuffer with
  TensorFlow's converter and ``Optimize.EXPERIMENTAL_SPARSITY`` (weights with
  enough zeros are stored in a compressed sparse format), optionally with
  dynamic-range or full int8 quantization. A model of another Keras backend
  (JAX) is converted through its weights: saved as ``.keras`` and converted
  by a TensorFlow-backend Python process that loads it (Keras's backend is
  chosen once per process).
* :func:`storage`: the flatbuffer read back (TensorFlow's generated schema
  reader): every constant weight tensor, whether it is stored sparse, the
  bytes of its values and indices, its nonzeros, and which operator reads it
  (``DENSIFY`` means the interpreter expands it to dense when it loads: the
  dense kernel runs, the file is only smaller).
* :func:`decode`: every such tensor's values as the runtime sees them, the
  sparse format expanded (its traversal order, blocks and compressed
  dimensions) and int8 values dequantized with their scales; and
  :func:`compare_weights`, which checks them against the ticket's kept weights,
  one by one (the converter drops a sparse tensor's last partial block).
* :class:`Runner`: the LiteRT interpreter (``ai_edge_litert``, the maintained
  package, or TensorFlow's deprecated ``tf.lite.Interpreter`` when it is
  missing) with or without the default delegates (XNNPACK), any batch size.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from lottery_tf.core.keras_compat import BACKEND, quiet_native_output

QUANTIZATIONS = ("none", "dynamic", "int8", "int8_io")


def convert(model, quantize: str = "none", representative=None, sparse: bool = True) -> bytes:
    """A ``.tflite`` flatbuffer of a plain (stripped) Keras model, with sparse tensor encoding.

    Args:
        model: A Keras model without MaskedLayers (:func:`lottery_tf.strip_masks`).
        quantize: ``none`` (float32 weights), ``dynamic`` (int8 weights, float
            activations), ``int8`` (int8 weights and activations, float input
            and output) or ``int8_io`` (full integer: int8 input and output
            too, what microcontrollers run).
        representative: For ``int8``: an array of input examples that set the
            activation ranges (from the training split).
        sparse: Whether to ask for sparse tensor encoding
            (``Optimize.EXPERIMENTAL_SPARSITY``); ``False`` stores every weight dense.

    On a backend other than TensorFlow (JAX), the model is saved as ``.keras``
    and converted by a TensorFlow-backend process (:func:`convert_in_tensorflow`).

    Raises:
        ValueError: For an unknown ``quantize``, or ``int8`` without examples.
        RuntimeError: If the TensorFlow process cannot load or convert a JAX
            model (its last error line).
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}; got {quantize!r}")
    if quantize in ("int8", "int8_io") and (representative is None or len(representative) == 0):
        raise ValueError(f"{quantize} quantization needs representative input examples")
    if BACKEND != "tensorflow":
        return convert_in_tensorflow(model, quantize, representative, sparse)
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter_log = io.StringIO()
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if quantize in ("dynamic", "int8", "int8_io"):
        converter.optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize in ("int8", "int8_io"):
        examples = np.asarray(representative, np.float32)
        converter.representative_dataset = lambda: ([example[None]] for example in examples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if quantize == "int8_io":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    # The converter's own chatter (the SavedModel it writes on the way, its warnings) is not the user's concern.
    with contextlib.redirect_stdout(converter_log), warnings.catch_warnings(), quiet_native_output():
        warnings.simplefilter("ignore")
        return converter.convert()


_CONVERT_SCRIPT = """
import importlib, os, sys
import numpy as np
folder, quantize, sparse, modules = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
from lottery_tf.core import litert
from lottery_tf.core.keras_compat import keras
for module in modules:
    importlib.import_module(module)
model = keras.saving.load_model(os.path.join(folder, "model.keras"), compile=False)
examples = os.path.join(folder, "representative.npy")
representative = np.load(examples) if os.path.exists(examples) else None
with open(os.path.join(folder, "model.tflite"), "wb") as out:
    out.write(litert.convert(model, quantize, representative, sparse))
"""


def convert_in_tensorflow(model, quantize: str = "none", representative=None, sparse: bool = True) -> bytes:
    """:func:`convert` run by a TensorFlow-backend Python process, for a model of any Keras backend.

    The model is saved as ``.keras`` (weights bit for bit, the architecture
    as its config) in a temporary folder; a fresh ``python`` with
    ``KERAS_BACKEND=tensorflow`` imports the modules that define the model's
    layer classes (so registered custom layers, e.g. keras_hub's, load), loads
    it and converts it. Layer classes defined in ``__main__`` cannot be loaded
    there.

    Args:
        model, quantize, representative, sparse: As for :func:`convert`.

    Raises:
        RuntimeError: If that process fails (the message is its last error line).
    """
    from lottery_tf.core import naming

    classes = {type(model)}
    for layer, _ in naming.walk(model):
        classes.update({type(layer), type(getattr(layer, "layer", None) or layer)})
    modules = sorted(
        {cls.__module__ for cls in classes if not cls.__module__.startswith(("keras.", "lottery_tf.", "__main__"))}
    )
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="lottery_tf_litert_") as folder:
        model.save(os.path.join(folder, "model.keras"))
        if representative is not None:
            np.save(os.path.join(folder, "representative.npy"), np.asarray(representative, np.float32))
        done = subprocess.run(
            [sys.executable, "-c", _CONVERT_SCRIPT, folder, quantize, "1" if sparse else "0", *modules],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            last = lines[-1].split(" Full object config:")[0] if lines else f"exit status {done.returncode}"
            raise RuntimeError(f"converting the {BACKEND} model to LiteRT in a TensorFlow process failed: {last}")
        with open(os.path.join(folder, "model.tflite"), "rb") as flatbuffer:
            return flatbuffer.read()


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def _index_bytes(vector) -> int:
    if vector is None:
        return 0
    values = vector.values
    return 0 if values is None else int(np.asarray(values).nbytes)


_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 7: np.int16}


def storage(flatbuffer: bytes) -> list[dict]:
    """Every constant tensor of rank >= 2 in a ``.tflite`` file: how it is stored and what reads it.

    Returns:
        One dict per tensor: ``name``, ``shape``, ``type``, ``sparse`` (it has
        sparsity parameters), ``value_bytes``, ``index_bytes`` (the sparse
        format's segments and indices), ``nonzeros``, ``bytes_per_nonzero``,
        ``block`` (the sparse format's block, e.g. [1, 4], if any) and
        ``read_by`` (the operators that take it as input).
    """
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    opcodes = [
        names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        for code in model.operatorCodes
    ]
    found = []
    for graph in model.subgraphs:
        readers = {}
        for op in graph.operators:
            for index in op.inputs if op.inputs is not None else ():
                readers.setdefault(int(index), []).append(opcodes[op.opcodeIndex])
        for index, tensor in enumerate(graph.tensors):
            data = model.buffers[tensor.buffer].data
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else ())]
            if data is None or len(shape) < 2:
                continue
            values = np.frombuffer(bytes(np.asarray(data, np.uint8)), _DTYPES.get(tensor.type, np.uint8))
            sparsity = tensor.sparsity
            index_bytes, block = 0, None
            if sparsity is not None:
                for dim in sparsity.dimMetadata or ():
                    index_bytes += _index_bytes(dim.arraySegments) + _index_bytes(dim.arrayIndices)
                if sparsity.blockMap is not None and len(sparsity.blockMap):
                    # Dimension blockMap[i] is cut into blocks of dimMetadata[rank + i].denseSize.
                    block = [1] * len(shape)
                    for i, dimension in enumerate(sparsity.blockMap):
                        block[int(dimension)] = int(sparsity.dimMetadata[len(shape) + i].denseSize)
            nonzeros = int(np.count_nonzero(values))
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            found.append(
                {
                    "name": name,
                    "shape": shape,
                    "type": str(np.dtype(_DTYPES.get(tensor.type, np.uint8))),
                    "sparse": sparsity is not None,
                    "value_bytes": int(len(data)),
                    "index_bytes": index_bytes,
                    "nonzeros": nonzeros,
                    "bytes_per_nonzero": (len(data) + index_bytes) / nonzeros if nonzeros else None,
                    "block": block,
                    "read_by": sorted(set(readers.get(index, []))),
                }
            )
    return found


def _densify(values: np.ndarray, shape: list, sparsity) -> np.ndarray:
    """The dense tensor of a sparse one (TFLite's format: levels in traversal order, DENSE or SPARSE_CSR)."""
    order = [int(d) for d in sparsity.traversalOrder]
    block_map = [int(d) for d in (sparsity.blockMap if sparsity.blockMap is not None else ())]
    levels = sparsity.dimMetadata
    rank = len(shape)
    where = {dimension: position for position, dimension in enumerate(order)}
    dense = np.zeros(shape, values.dtype)
    coordinates = [0] * len(order)

    def children(level, parent):
        meta = levels[level]
        if meta.format == 0:  # DENSE
            size = int(meta.denseSize)
            return [(i, parent * size + i) for i in range(size)]
        segments = np.asarray(meta.arraySegments.values)
        indices = np.asarray(meta.arrayIndices.values)
        return [(int(indices[p]), p) for p in range(int(segments[parent]), int(segments[parent + 1]))]

    def place(position):
        index = []
        for dimension in range(rank):
            outer = coordinates[where[dimension]]
            if dimension in block_map:
                inner_level = where[rank + block_map.index(dimension)]
                size = int(levels[inner_level].denseSize)
                index.append(outer * size + coordinates[inner_level])
            else:
                index.append(outer)
        dense[tuple(index)] = values[position]

    def walk(level, parent):
        for index, position in children(level, parent):
            coordinates[level] = index
            if level == len(order) - 1:
                place(position)
            else:
                walk(level + 1, position)

    walk(0, 0)
    return dense


def decode(flatbuffer: bytes) -> list[dict]:
    """Every constant tensor of rank >= 2 of a ``.tflite`` file, as the runtime computes with it.

    Returns:
        One dict per tensor, in :func:`storage`'s order: ``name``, ``shape``
        and ``values`` (float64, dense, dequantized: ``(q - zero_point) *
        scale`` per channel for int8) and ``step`` (the quantization step per
        entry, 0 for float).
    """
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    found = []
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            data = model.buffers[tensor.buffer].data
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else ())]
            if data is None or len(shape) < 2:
                continue
            raw = np.frombuffer(bytes(np.asarray(data, np.uint8)), _DTYPES.get(tensor.type, np.uint8))
            dense = _densify(raw, shape, tensor.sparsity) if tensor.sparsity is not None else raw.reshape(shape)
            values, step = dense.astype(np.float64), np.zeros(shape)
            quantization = tensor.quantization
            scales = None if quantization is None or quantization.scale is None else np.asarray(quantization.scale)
            if scales is not None and len(scales) and np.issubdtype(dense.dtype, np.integer):
                zeros = np.asarray(quantization.zeroPoint if quantization.zeroPoint is not None else [0])
                axis = int(quantization.quantizedDimension) if len(scales) > 1 else 0
                broadcast = [1] * len(shape)
                broadcast[axis] = len(scales) if len(scales) > 1 else 1
                scale = scales.reshape(broadcast)
                values = (values - zeros.reshape(broadcast if len(zeros) > 1 else [1] * len(shape))) * scale
                step = np.broadcast_to(scale, shape).astype(np.float64)
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            found.append({"name": name, "shape": shape, "values": values, "step": step})
    return found


def compare_weights(decoded: list[dict], weights: dict, masks: dict) -> dict:
    """Checks every masked weight of the ticket against the tensor that stores it.

    A weight is matched to the stored tensor of its runtime shape (outputs
    first: :func:`lottery_tf.core.pruning.runtime_view`) that it agrees with
    best. A kept weight must be stored at its value (float: exactly; int8:
    within half a quantization step, or 0 where it rounds to 0); a pruned one
    must be stored as 0.

    Args:
        decoded: :func:`decode` of the file.
        weights: Name -> the ticket's weight (Keras layout).
        masks: Name -> its mask.

    Returns:
        Name -> ``{"tensor", "kept", "lost", "pruned_stored_nonzero",
        "max_error"}``; a weight no tensor holds gets ``{"tensor": None}``.
    """
    from lottery_tf.core.pruning import runtime_view

    out, used = {}, set()
    for name, mask in masks.items():
        kept = runtime_view(mask) != 0
        value = runtime_view(np.asarray(weights[name], np.float64))
        best = None
        for i, tensor in enumerate(decoded):
            if i in used or int(np.prod(tensor["shape"])) != mask.size or tensor["shape"][0] != kept.shape[0]:
                continue
            stored = tensor["values"].reshape(kept.shape)
            step = tensor["step"].reshape(kept.shape)
            # Half a step, with room for the float32 arithmetic of the converter's rounding.
            tolerance = step / 2 * (1 + 1e-3) + 1e-6 * np.abs(value) + 1e-12
            error = np.abs(stored - value)
            rounds_to_zero = np.abs(value) <= tolerance
            lost = int(np.count_nonzero(kept & (error > tolerance) & ~(rounds_to_zero & (stored == 0))))
            leaked = int(np.count_nonzero(~kept & (np.abs(stored) > tolerance)))
            result = {
                "tensor": tensor["name"],
                "kept": int(np.count_nonzero(kept)),
                "lost": lost,
                "pruned_stored_nonzero": leaked,
                "max_error": float(error[kept].max()) if kept.any() else 0.0,
            }
            if best is None or (lost + leaked, i) < (best[1]["lost"] + best[1]["pruned_stored_nonzero"], best[0]):
                best = (i, result)
        if best is None:
            out[name] = {"tensor": None}
        else:
            used.add(best[0])
            out[name] = best[1]
    return out


def interpreter_name() -> str:
    """Which interpreter :class:`Runner` uses."""
    try:
        from importlib.metadata import version

        import ai_edge_litert  # noqa: F401

        return f"ai_edge_litert {version('ai-edge-litert')}"
    except ImportError:
        return "tf.lite.Interpreter (ai-edge-litert is not installed: pip install 'lottery_tf[litert]')"


class Runner:
    """Runs a ``.tflite`` model on batches of any size.

    Args:
        flatbuffer: The model.
        default_delegates: Whether the interpreter applies its default delegates
            (XNNPACK on CPU). Without them the built-in kernels run, including
            TFLite's sparse FULLY_CONNECTED kernels.
        threads: Interpreter threads.

    Raises:
        RuntimeError: If the interpreter cannot prepare the model (the message
            is the interpreter's first line).
    """

    def __init__(self, flatbuffer: bytes, default_delegates: bool = True, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            import tensorflow as tf

            Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
        resolver = OpResolverType.AUTO if default_delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            with quiet_native_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter = Interpreter(
                    model_content=flatbuffer, num_threads=threads, experimental_op_resolver_type=resolver
                )
                self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise RuntimeError(_first_line(error)) from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = None

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            shape = list(self.input["shape"])
            shape[0] = batch
            try:
                self.interpreter.resize_tensor_input(self.input["index"], shape)
                self.interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as error:
                raise RuntimeError(_first_line(error)) from None
            self.batch = batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs for a batch (float; an integer input or output is (de)quantized with its scale)."""
        dtype = self.input["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(np.asarray(x, np.float64) / scale + zero), info.min, info.max).astype(dtype)
        else:
            x = np.asarray(x, dtype)
        self._resize(len(x))
        try:
            self.interpreter.set_tensor(self.input["index"], x)
            self.interpreter.invoke()
        except (RuntimeError, ValueError) as error:
            raise RuntimeError(_first_line(error)) from None
        out = np.array(self.interpreter.get_tensor(self.output["index"]))
        if np.issubdtype(out.dtype, np.integer):
            scale, zero = self.output["quantization"]
            out = (out.astype(np.float64) - zero) * scale
        return out

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def time(self, x: np.ndarray, runs: int) -> list[float]:
        """Seconds of each of ``runs`` invocations on ``x`` (after one warm-up)."""
        self(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append(time.perf_counter() - start)
        return times


def _first_line(error) -> str:
    text = str(error).strip()
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return re.sub(r"(#\d+)(?=[A-Za-z])", r"\1; ", line)  # TFLite glues its messages together
