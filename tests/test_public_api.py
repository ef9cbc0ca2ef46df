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


def test_every_public_name_has_its_home_for_a_command_started_without_keras():
    """``_HOMES`` (what a lazily started command imports for a public name) names the objects the package exports."""
    import importlib

    assert sorted(lottery_tf._HOMES) == sorted(lottery_tf.__all__)
    for name, home in lottery_tf._HOMES.items():
        module, attribute = home.rsplit(".", 1)
        assert getattr(importlib.import_module(module), attribute) is getattr(lottery_tf, name), name


def _fresh(code: str) -> str:
    import subprocess
    import sys

    from conftest import REPO

    # A new interpreter (not tests/launcher.py's fork server, which has imported lottery_tf already).
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_python_m_lottery_tf_main_starts_without_keras_and_loads_it_for_a_public_name():
    """While ``-m`` locates lottery_tf.main, sys.argv[0] is "-m": the package leaves Keras to the command."""
    code = (
        "import sys; sys.argv = ['-m']; sys.orig_argv = [sys.executable, '-u', '-m', 'lottery_tf.main']\n"
        "import lottery_tf\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
        "layer = lottery_tf.MaskedLayer\n"
        "from keras.saving import get_registered_object as g\n"
        "print(layer.__module__, 'tensorflow' in sys.modules, g('lottery_tf>SGDWithL2') is not None)"
    )
    assert _fresh(code).splitlines() == ["False False", "lottery_tf.core.masking True True"]


def test_a_users_module_run_with_python_m_gets_the_whole_library():
    """``python -m mypackage.train`` whose package imports lottery_tf (argv[0] is "-m" then too): not a command."""
    code = (
        "import sys; sys.argv = ['-m']\n"
        "sys.orig_argv = [sys.executable, '-m', 'mypackage.train', '--command=lottery_tf.main', 'lottery_tf.main']\n"
        "import lottery_tf\n"
        "from keras.saving import get_registered_object as g\n"
        "print('tensorflow' in sys.modules, g('lottery_tf>MaskedLayer') is not None)"
    )
    assert _fresh(code) == "True True"


def test_the_module_python_m_runs_is_read_from_its_options_not_from_its_arguments():
    run = lottery_tf._module_run
    assert run(["python", "-m", "lottery_tf.main", "--levels=2"]) == "lottery_tf.main"
    assert run(["python", "-u", "-X", "importtime", "-W", "ignore", "-m", "lottery_tf.main"]) == "lottery_tf.main"
    assert run(["python", "-Xdev", "-Bum", "lottery_tf.main"]) == "lottery_tf.main"
    assert run(["python", "-mlottery_tf.main"]) == "lottery_tf.main"
    assert run(["python", "-m", "mypackage.run", "lottery_tf.main"]) == "mypackage.run"
    assert run(["python", "script.py", "-m", "lottery_tf.main"]) is None
    assert run(["python", "-c", "pass", "-m", "lottery_tf.main"]) is None
    assert run(["python", "--check-hash-based-pycs", "always", "-m", "lottery_tf.main"]) == "lottery_tf.main"
