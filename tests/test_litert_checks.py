"""Exported LiteRT files checked weight by weight against the ticket, and run under every configuration a user
gets (issue 27, parts 1 and 2): literal widths that are not a multiple of the converter's blocks, literal
outputs for the agreement rule, a dynamic-range sparse file under the default delegates."""

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="the litert extra (tools/setup.sh installs it)")

import lottery_tf  # noqa: E402
from lottery_tf.core import litert  # noqa: E402
from lottery_tf.core.keras_compat import keras  # noqa: E402
from lottery_tf.engine.export_files import agreement_with_keras  # noqa: E402


def _ticket(inputs, units, block, last_block_kept=True, seed=0):
    """A Dense ticket whose unit u keeps one block of inputs; unit 0 also keeps the last (partial) block."""
    keras.utils.set_random_seed(seed)
    model = lottery_tf.wrap_model(keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(units, name="fc")]))
    mask = np.zeros((inputs, units), "float32")
    full = inputs - inputs % block
    for unit in range(units):
        start = (unit * block * 3) % full
        mask[start : start + block, unit] = 1
    if last_block_kept:
        mask[inputs - (inputs % block or block) :, 0] = 1
    lottery_tf.set_masks(model, {"fc/kernel": mask})
    return model


@pytest.mark.parametrize(
    "inputs, block, mode, lost",
    [
        (302, 4, "none", 2),  # float 1x4: 302 = 75 x 4 + 2, the last 2 inputs of unit 0 are dropped
        (300, 16, "dynamic", 12),  # int8 1x16: 300 = 18 x 16 + 12 (fc2 of LeNet-300-100)
        (304, 4, "none", 0),  # a multiple of the block: nothing lost
    ],
)
def test_the_decoder_finds_the_kept_weights_the_converter_drops(inputs, block, mode, lost):
    model = _ticket(inputs, 16, block)
    flat = litert.convert(lottery_tf.strip_masks(model), mode)
    check = litert.compare_weights(
        litert.decode(flat), lottery_tf.get_prunable_weights(model), lottery_tf.get_masks(model)
    )["fc/kernel"]
    assert check["kept"] == int(lottery_tf.get_masks(model)["fc/kernel"].sum()) and check["lost"] == lost
    assert check["pruned_stored_nonzero"] == 0
    if mode == "none" and not lost:
        assert check["max_error"] == 0.0  # float values stored exactly
    dense = litert.compare_weights(
        litert.decode(litert.convert(lottery_tf.strip_masks(model), mode, sparse=False)),
        lottery_tf.get_prunable_weights(model),
        lottery_tf.get_masks(model),
    )["fc/kernel"]
    assert dense["lost"] == 0  # dense storage keeps every weight


def test_the_agreement_rule_on_literal_outputs():
    keras_logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.5, 0.0, 0.0]])
    labels = np.array([0, 1, 2, 1])
    same = agreement_with_keras("none", keras_logits + 1e-4, keras_logits, labels)
    assert same["agrees_with_keras"] and same["accuracy"] == 0.75 and same["prediction_agreement"] == 1.0
    off = agreement_with_keras("none", keras_logits + 0.01, keras_logits, labels)  # 0.01 > 1e-3 x (1 + 3)
    assert not off["agrees_with_keras"] and off["max_output_difference"] == pytest.approx(0.01)
    nan = keras_logits.copy()
    nan[2, 0] = np.nan
    result = agreement_with_keras("dynamic", nan, keras_logits, labels)
    assert not result["agrees_with_keras"] and not result["finite_outputs"] and result["max_output_difference"] is None
    swapped = keras_logits[:, [1, 0, 2]]  # another top class for 3 of 4 examples
    assert not agreement_with_keras("int8", swapped, keras_logits, labels)["agrees_with_keras"]
    assert agreement_with_keras("int8", keras_logits * 1.1, keras_logits, labels)["agrees_with_keras"]


@pytest.mark.slow
def test_export_stores_dense_when_the_sparse_encoding_drops_weights_and_checks_every_file(tmp_path, capfd):
    model = _ticket(300, 16, 16)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 300)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), -1)
    record = lottery_tf.export_model(model, str(tmp_path / "e"), x, y, quantize=("none", "dynamic"), latency_runs=1)
    dynamic, plain = record["artifacts"]["ticket_dynamic.tflite"], record["artifacts"]["ticket.tflite"]
    assert dynamic["storage"] == "dense: the sparse encoding lost fc/kernel: 12 of 268 kept weights"
    assert dynamic["stored_weights"]["equal_to_ticket"] and dynamic["stored_weights"]["lost"] == 0
    assert plain["stored_weights"]["equal_to_ticket"] and plain["storage"].startswith("sparse")
    assert "note: ticket_dynamic.tflite: the sparse encoding lost fc/kernel: 12 of 268" in capfd.readouterr().err
    for entry in (dynamic, plain):
        for configuration in ("default_delegates", "without_default_delegates"):
            assert "agrees_with_keras" in entry[configuration]


@pytest.mark.slow
def test_a_configuration_that_computes_wrong_or_cannot_run_is_flagged_and_the_right_one_named(tmp_path, capfd):
    # A dynamic-range file with sparse 1x4 weights (widths multiples of 16: nothing dropped): the default
    # delegate (XNNPACK) cannot run its sparse dynamic-range FULLY_CONNECTED; the builtin kernels can.
    model = _ticket(304, 32, 4, last_block_kept=False)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 304)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), -1)
    record = lottery_tf.export_model(model, str(tmp_path / "e"), x, y, quantize=("dynamic",), latency_runs=1)
    entry = record["artifacts"]["ticket_dynamic.tflite"]
    assert entry["stored_weights"]["equal_to_ticket"]
    assert not entry["default_delegates"]["agrees_with_keras"]
    assert entry["without_default_delegates"]["agrees_with_keras"]
    assert entry["run_with"] == ["the builtin kernels (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)"]
    (line,) = record["problems"]
    assert line.startswith("ticket_dynamic.tflite under the interpreter's default delegates (XNNPACK): ")
    assert line.endswith("; run it with the builtin kernels (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)")
    assert f"warning: {line}" in capfd.readouterr().err


def test_raw_input_model_standardizes_as_the_run_did_per_channel():
    from lottery_tf.engine.export_files import raw_input_model

    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    standardize = {"scale": 1 / 255, "mean": [0.5, 0.25, 0.1], "std": [0.2, 0.3, 0.4]}
    raw = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3)).astype(np.float32)
    by_hand = (raw / 255 - np.array([0.5, 0.25, 0.1])) / np.array([0.2, 0.3, 0.4])
    model = raw_input_model(inner, standardize, (4, 4, 3))
    np.testing.assert_allclose(model(raw), inner(by_hand.astype(np.float32)), rtol=1e-5, atol=1e-5)
    gray = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    pixels = np.arange(18, dtype=np.float32).reshape(2, 3, 3) * 14  # no channel axis, as IDX files hold them
    wrapped = raw_input_model(gray, {"scale": 1 / 255, "mean": [0.3], "std": [0.35]}, (3, 3))
    expected = gray(((pixels / 255 - 0.3) / 0.35)[..., None].astype(np.float32))
    np.testing.assert_allclose(wrapped(pixels), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_exported_files_take_raw_pixels_and_score_the_runs_accuracy(tmp_path):
    """Fashion-MNIST (the real IDX files): every file takes raw 0-255 pixels, any batch, and scores the run."""
    import json
    import sys

    import launcher
    from conftest import REPO

    from lottery_tf.engine.data import load

    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    out = str(tmp_path / "runs")
    common = [
        "--dataset=fashion_mnist",
        "--model=lenet_300_100",
        "--iterations=60",
        "--eval_every=30",
        "--checkpoint_every=0",
    ]
    run = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            *common,
            "--levels=1",
            "--branch=",
            "--branch_levels=",
            f"--output_dir={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (experiment,) = [str(p) for p in (tmp_path / "runs").glob("lottery_*")]
    export = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.export",
            experiment,
            "--level=1",
            f"--out={tmp_path / 'e'}",
            "--quantize=none,int8_io",
            "--latency_runs=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
    )
    assert export.returncode == 0, export.stderr[-2000:]
    record = json.load(open(tmp_path / "e" / "export.json"))
    contract = record["input_contract"]
    assert contract["shape"] == [28, 28] and contract["range"] == [0, 255]
    assert contract["preprocessing"].startswith("inside every file, as the run standardized its data: x * 0.00392157")
    assert record["artifacts"]["keras"]["accuracy"] == record["run_test_accuracy"]
    assert record["artifacts"]["ticket.tflite"]["without_default_delegates"]["accuracy"] == record["run_test_accuracy"]
    assert record["artifacts"]["ticket_int8_io.tflite"]["without_default_delegates"]["agrees_with_keras"]
    # A user's own raw pixels (uint8, as read from the IDX file), any batch, without lottery_tf's data code.
    raw = load("fashion_mnist").x_test  # standardized: undo it to get the file's pixels back
    pixels = np.rint((raw[..., 0] * 0.353024 + 0.286041) * 255).clip(0, 255)[:300].astype(np.uint8)
    ticket = keras.models.load_model(str(tmp_path / "e" / "ticket.keras"))
    runner = litert.Runner(open(tmp_path / "e" / "ticket.tflite", "rb").read(), default_delegates=False)
    np.testing.assert_allclose(
        runner(pixels.astype(np.float32)), ticket.predict(pixels.astype(np.float32), verbose=0), atol=1e-4
    )
    integer = litert.Runner(open(tmp_path / "e" / "ticket_int8_io.tflite", "rb").read(), default_delegates=False)
    assert integer.input["dtype"] == np.int8 and integer.output["dtype"] == np.int8
    agreement = np.mean(
        np.argmax(integer(pixels), -1) == np.argmax(ticket.predict(pixels.astype(np.float32), verbose=0), -1)
    )
    assert agreement > 0.95
