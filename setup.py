"""lottery_tf: lottery tickets (IMP with rewinding) for TensorFlow / Keras 3."""

from setuptools import find_packages, setup

setup(
    name="lottery_tf",
    version="0.2.0",
    description="Lottery tickets for Keras 3: masked layers, IMP with rewinding inside model.fit, experiments.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lottery_tf", "lottery_tf.*"]),
    install_requires=[
        "tensorflow>=2.16,<3",
        "keras>=3.3,<4",
        "tensorflow-datasets>=4.9",
        "pillow>=9",  # lottery_tf.engine.data.fake_imagenet writes JPEGs
        "importlib_resources",  # tensorflow-datasets 4.9.10 imports it without declaring it
        "absl-py>=1.0",
        "tensorboard>=2.16",
        "numpy>=1.24",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3.5", "ruff>=0.6"],
        "report": ["matplotlib>=3.7"],
        # TFMOT's own PolynomialDecay for --gmp_schedule=tfmot and the comparison test. It needs legacy
        # Keras (tf_keras), so lottery_tf only ever runs it in a subprocess.
        "tfmot": ["tensorflow-model-optimization>=0.8", "tf-keras>=2.16"],
        # keras-hub backbones (BERT, GPT-2, ViT, ResNet) for the tests of models with repeated inner names.
        "hub": ["keras-hub>=0.32"],
        # The LiteRT interpreter that python -m lottery_tf.export reads its files back with.
        "litert": ["ai-edge-litert>=2.3"],
        # The documentation site (tools/docs.sh, mkdocs.yml).
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.25"],
        # Ray schedules a whole study's trainings (--executor=ray); imported only by lottery_tf/engine/ray_executor.py.
        "ray": ["ray>=2.50"],
        # The JAX backend of Keras 3 for the library (KERAS_BACKEND=jax); the engine and commands stay TensorFlow.
        "jax": ["jax>=0.4"],
    },
    entry_points={"console_scripts": ["lottery_tf=lottery_tf.main:run"]},
)
