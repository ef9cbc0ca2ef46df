"""MNIST and Fashion-MNIST from TFDS or from local MNIST-format IDX files."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np

from lottery_tf.engine.config import DataConfig
from lottery_tf.engine.data import idx
from lottery_tf.engine.data.registry import DATASETS, DataUnavailableError, Splits, hold_out_validation, tfds_prepared

# Folders searched for IDX files when --data_dir is not given.
KNOWN_FOLDERS = {
    "mnist": ["/usr/share/datasets/mnist", "~/.keras/datasets/mnist", "~/data/mnist"],
    "fashion_mnist": [
        "/usr/share/datasets/fashion-mnist",  # Debian: dataset-fashion-mnist
        "~/.keras/datasets/fashion-mnist",
        "~/data/fashion-mnist",
    ],
}
# Overridable so tests (and users) can point the search elsewhere.
SEARCH_ENV = "LOTTERY_TF_IDX_SEARCH_PATH"
HOW_TO_GET = {
    "mnist": "pass --data_dir=FOLDER with train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz], "
    "or prepare it with TFDS on a machine with network (tfds build mnist) and pass --tfds_data_dir",
    "fashion_mnist": "install Debian's package (apt-get install dataset-fashion-mnist), "
    "or pass --data_dir=FOLDER with the four Fashion-MNIST IDX files, "
    "or prepare it with TFDS on a machine with network (tfds build fashion_mnist) and pass --tfds_data_dir",
}


def search_folders(name: str) -> list[str]:
    """The folders searched for ``name``'s IDX files, in order."""
    if SEARCH_ENV in os.environ:
        folders = [f for f in os.environ[SEARCH_ENV].split(os.pathsep) if f]
        return [os.path.join(f, name.replace("_", "-")) for f in folders] + folders
    return [os.path.expanduser(f) for f in KNOWN_FOLDERS[name]]


def network_answers(host: str = "storage.googleapis.com", port: int = 443, seconds: float = 4.0) -> bool:
    """Whether a TCP connection opens within ``seconds`` (DNS included)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(result)


def _from_tfds(name: str, config: DataConfig, download: bool):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=config.tfds_data_dir or None)
    if not tfds_prepared(builder):
        if not download:
            return None
        builder.download_and_prepare()
    arrays = {}
    for split in ("train", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        arrays[split] = (data["image"][..., 0], data["label"].astype(np.int64))
    return arrays, f"tfds:{name} ({builder.data_dir})"


def _load_arrays(name: str, config: DataConfig):
    if config.data_dir:
        try:
            return idx.load_folder(config.data_dir), f"idx:{config.data_dir}"
        except idx.IdxError as error:
            raise DataUnavailableError(f"--data_dir: {error}") from None
    found = _from_tfds(name, config, download=False)
    if found:
        return found
    for folder in search_folders(name):
        if idx.has_idx_files(folder):
            try:
                return idx.load_folder(folder), f"idx:{folder}"
            except idx.IdxError as error:
                raise DataUnavailableError(f"{error}; fix or remove it, or pass --data_dir") from None
    if config.tfds_download and network_answers():
        try:
            found = _from_tfds(name, config, download=True)
        except Exception as error:  # TFDS raises many types; report any of them.
            raise DataUnavailableError(
                f"TFDS could not download {name} ({type(error).__name__}); {HOW_TO_GET[name]}"
            ) from None
        if found:
            return found
    raise DataUnavailableError(
        f"{name} not found (TFDS has no prepared copy, no IDX files in "
        f"{', '.join(search_folders(name))}, no network for a download); {HOW_TO_GET[name]}"
    )


def _mnist_like(name: str, config: DataConfig) -> Splits:
    arrays, source = _load_arrays(name, config)
    x_train, y_train = arrays["train"]
    x_test, y_test = arrays["test"]
    # Standardize with the training set's pixel mean and std (as open_lth does).
    scale = x_train.astype(np.float64) / 255.0
    mean, std = float(scale.mean()), float(scale.std())

    def prep(images):
        return ((images.astype(np.float32) / 255.0 - mean) / std)[..., None]

    x_train, y_train, x_val, y_val = hold_out_validation(prep(x_train), y_train, config.validation_examples)
    standardize = {"scale": 1 / 255, "mean": [mean], "std": [std]}
    return Splits(x_train, y_train, x_val, y_val, prep(x_test), y_test, 10, source, None, x_test, standardize)


@DATASETS.register("mnist")
def mnist(config: DataConfig) -> Splits:
    return _mnist_like("mnist", config)


@DATASETS.register("fashion_mnist")
def fashion_mnist(config: DataConfig) -> Splits:
    return _mnist_like("fashion_mnist", config)
