"""The Keras example in README.md runs as written (on a small synthetic dataset)."""

import os
import re

import numpy as np

from conftest import REPO


def test_readme_keras_example_runs(tmp_path, monkeypatch):
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme[readme.index("## Using it from Keras"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("range(10)", "range(3)").replace("epochs=10", "epochs=1")
    rng = np.random.default_rng(0)
    namespace = {
        "x_train": rng.normal(size=(120, 28, 28, 1)).astype("float32"),
        "y_train": rng.integers(0, 10, 120),
        "x_val": rng.normal(size=(30, 28, 28, 1)).astype("float32"),
        "y_val": rng.integers(0, 10, 30),
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), namespace)
    import lottery_tf

    model = namespace["model"]
    # Three fits, each followed by pruning: 20% of fc1 (ceil), 10% of the output layer.
    # 235200 -> 188160 -> 150528 -> 120422;  1000 -> 900 -> 810 -> 729.
    assert lottery_tf.layer_densities(model)["fc1/kernel"] == 120422 / 235200
    assert lottery_tf.layer_densities(model)["output/kernel"] == 729 / 1000
    assert os.path.exists(tmp_path / "ticket.keras")
    plain = namespace["plain"]
    assert not any("Masked" in type(layer).__name__ for layer in plain.layers)
    # The README's load line gives back the ticket with its masks.
    ticket = namespace["ticket"]
    assert lottery_tf.get_masks(ticket)["fc1/kernel"].sum() == 120422
