"""The names README.md documents are importable from the package."""

import lottery_tf


def test_public_names():
    for name in lottery_tf.__all__:
        assert getattr(lottery_tf, name) is not None, name
    assert lottery_tf.MaskedLayer.__module__ == "lottery_tf.masking"
    assert callable(lottery_tf.PruneRewindCallback)


def test_config_and_registries_import_without_tensorflow():
    import subprocess
    import sys

    from conftest import REPO

    code = (
        "import sys; import lottery_tf.config, lottery_tf.data, lottery_tf.models, lottery_tf.run_dir; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
