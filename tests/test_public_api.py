"""The names README.md documents are importable from the package."""

import lottery_tf


def test_public_names():
    for name in lottery_tf.__all__:
        assert getattr(lottery_tf, name) is not None, name
    assert lottery_tf.MaskedLayer.__module__ == "lottery_tf.core.masking"
    assert callable(lottery_tf.PruneRewindCallback)


def test_package_import_registers_the_keras_classes():
    """keras.models.load_model needs the classes registered by a plain `import lottery_tf`."""
    import sys

    import launcher
    from conftest import REPO

    code = (
        "import keras, lottery_tf; from keras.saving import get_registered_object as g; "
        "print([g(n) is not None for n in ('lottery_tf>MaskedLayer', 'lottery_tf>LotterySchedule', "
        "'lottery_tf>StepCountingLossScaleOptimizer', 'lottery_tf>SGDWithL2')])"
    )
    out = launcher.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[True, True, True, True]"
