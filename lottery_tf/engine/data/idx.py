"""Reading MNIST-format IDX files (optionally gzipped) into numpy arrays."""

from __future__ import annotations

import gzip
import os
import sys

import numpy as np

# (split, images file stem, labels file stem)
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(ValueError):
    """A missing or malformed IDX file; the message names the file."""


def find_file(folder: str, stem: str) -> str:
    """The path of ``stem`` or ``stem.gz`` in ``folder``.

    Where both are there, they must hold the same bytes (the ``.gz`` file
    decompressed): otherwise which one is the data is not known, and the plain
    file would be read silently.

    Raises:
        IdxError: If neither exists, or both do and differ.
    """
    plain, packed = (os.path.join(folder, name) for name in (stem, stem + ".gz"))
    found = [path for path in (plain, packed) if os.path.isfile(path)]
    if not found:
        raise IdxError(f"{plain}[.gz] not found")
    if len(found) == 2 and _raw_bytes(plain) != _raw_bytes(packed):
        raise IdxError(
            f"{plain} and {packed} are both there and hold different data (the .gz file decompressed): "
            "keep the one that is the data and remove the other"
        )
    return found[0]


def _raw_bytes(path: str) -> bytes:
    """A file's bytes, decompressed if its name ends in .gz."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as error:
        raise IdxError(f"cannot read IDX file {path}: {error}") from None


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file.

    Raises:
        IdxError: If the file cannot be read or its header does not match its size.
    """
    data = _raw_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IdxError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{path} is truncated (header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise IdxError(f"{path} has {len(data)} bytes; its header {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def has_idx_files(folder: str) -> bool:
    """Whether ``folder`` holds all four MNIST-format files (whether they are sound is :func:`load_folder`'s to say)."""
    return all(
        any(os.path.isfile(os.path.join(folder, stem + suffix)) for suffix in ("", ".gz"))
        for stems in SPLITS.values()
        for stem in stems
    )


def load_folder(
    folder: str, classes: int = 10, image_shape: tuple = (28, 28)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads ``{"train": (images, labels), "test": (images, labels)}``.

    Checks what the MNIST family promises: images of ``image_shape``, as many
    labels as images, label values in ``[0, classes)``.

    Raises:
        IdxError: Naming the folder or file that is missing or malformed.
    """
    if not os.path.isdir(folder):
        raise IdxError(f"{folder} is not a readable folder")
    out, paths = {}, {}
    for split, (images_stem, labels_stem) in SPLITS.items():
        images_path, labels_path = find_file(folder, images_stem), find_file(folder, labels_stem)
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1:
            raise IdxError(
                f"{images_path}: images {images.shape} and labels {labels.shape} do not form an MNIST-style split"
            )
        if tuple(images.shape[1:]) != tuple(image_shape):
            raise IdxError(
                f"{images_path}: images are {images.shape[1]}x{images.shape[2]}; expected "
                f"{image_shape[0]}x{image_shape[1]}"
            )
        if len(images) != len(labels):
            raise IdxError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
        if len(images) == 0:
            raise IdxError(f"{images_path}: the {split} split holds no images")
        if np.issubdtype(images.dtype, np.floating) and not np.all(np.isfinite(images)):
            raise IdxError(
                f"{images_path}: {int(np.count_nonzero(~np.isfinite(images)))} pixel values are NaN or infinite"
            )
        if images.dtype != np.uint8 and images.size and (images.min() < 0 or images.max() > 255):
            raise IdxError(
                f"{images_path}: pixel values {images.min():g}..{images.max():g} are outside 0..255 ({images.dtype.name} "
                "IDX data); MNIST-format images are 8-bit pixels: convert the file to values 0..255"
            )
        if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0:
            # Pixels scaled to 0..1 already. The loader divides by 255 again; standardizing with the training
            # set's own mean and std undoes that for training (checked: the same inputs to 2e-7), but the recorded
            # preprocessing (scale 1/255, mean 0.002) makes an exported model declare 0..255 inputs and expect
            # 0..1 ones, and a split in the other scale would be off 255-fold. Refused rather than rescaled:
            # which scale a float file means cannot be told from its values alone (0/1 pixels are both).
            raise IdxError(
                f"{images_path}: the file holds 0..1 values ({images.dtype.name} pixels {images.min():g}.."
                f"{images.max():g}) where 0..255 is expected (MNIST-format images are 8-bit pixels): multiply by 255 "
                "and write them as 0..255"
            )
        if np.issubdtype(labels.dtype, np.floating):
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise IdxError(
                    f"{labels_path}: labels are {labels.dtype} values that are not all integers "
                    f"(e.g. {labels[labels != np.round(labels)][:1].tolist() or 'NaN'})"
                )
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise IdxError(
                f"{labels_path}: label values {int(labels.min())}..{int(labels.max())} are outside 0..{classes - 1}"
            )
        if split == "train" and labels.size and np.all(labels == labels[0]):
            # Refused, not warned: a network trained on one class learns a constant, and every level of the
            # study would measure that; no lottery-ticket experiment means it.
            raise IdxError(
                f"{labels_path}: the training labels hold one class only (all {len(labels)} are {int(labels[0])}); "
                "a classifier needs examples of at least two classes"
            )
        out[split] = (images, labels.astype(np.int64))
        paths[split] = images_path
    _warn_shared(out, paths)
    return out


# The share of test images also found among the training images from which a warning is printed. Independently
# collected splits share almost none (Fashion-MNIST: 0 of 10,000); a copied or overlapping file shares most.
SHARED_WARNING = 0.1


def shared_test_images(train: np.ndarray, test: np.ndarray) -> int:
    """How many test images are exact copies of a training image."""
    seen = {row.tobytes() for row in train.reshape(len(train), -1)}
    return sum(row.tobytes() in seen for row in test.reshape(len(test), -1))


def _warn_shared(arrays: dict, paths: dict) -> None:
    """One ``warning:`` line when the test split is (mostly) training images: its accuracy is then training accuracy.

    A warning, not an error: a study may overlap the splits on purpose (memorization), and the run's
    ``data.json`` fingerprint records the data whatever it is.
    """
    train, test = arrays["train"][0], arrays["test"][0]
    if train.shape[1:] != test.shape[1:]:
        return
    shared = shared_test_images(train, test)
    if shared and shared >= SHARED_WARNING * len(test):
        same = " (the same images)" if shared == len(test) == len(train) else ""
        print(
            f"warning: {paths['test']}: {shared} of its {len(test)} test images are also training images in "
            f"{paths['train']}{same}: the test accuracy measures accuracy on training data",
            file=sys.stderr,
            flush=True,
        )


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes ``array`` (uint8) as an IDX file; gzipped if ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())
