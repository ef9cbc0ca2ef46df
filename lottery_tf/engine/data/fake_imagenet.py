"""ILSVRC2012 archives of random JPEGs in the real layout, to exercise ``imagenet2012`` without the data.

TFDS's own ``imagenet2012`` builder prepares them exactly as it prepares the
real archives (tests and benchmarks use this; nothing is downloaded).

``ILSVRC2012_img_train.tar`` holds one tar per synset (``n01440764.tar`` with
``n01440764_<i>.JPEG`` images); ``ILSVRC2012_img_val.tar`` holds
``ILSVRC2012_val_<8 digits>.JPEG``, labelled by TFDS's own validation label list.
"""

import io
import os
import tarfile

import numpy as np
from PIL import Image

SYNSETS = ("n01440764", "n01443537", "n01484850")  # TFDS labels 0, 1, 2


def _jpeg(rng, sizes) -> bytes:
    height, width = rng.integers(sizes[0], sizes[1], size=2)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_archives(folder, per_class: int = 8, validation: int = 6, seed: int = 0, sizes=(40, 90)) -> str:
    """Writes both archives into ``folder``.

    Args:
        folder: Where ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` go.
        per_class: Training images per synset (3 synsets: TFDS labels 0, 1, 2).
        validation: Validation images.
        seed: Seed of the random pixels and sizes.
        sizes: Image sides are drawn from ``[sizes[0], sizes[1])`` pixels.

    Returns:
        ``folder``, for ``--tfds_manual_dir``.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(os.path.join(folder, "ILSVRC2012_img_train.tar"), "w") as outer:
        for synset in SYNSETS:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(per_class):
                    _add(tar, f"{synset}_{i}.JPEG", _jpeg(rng, sizes))
            _add(outer, f"{synset}.tar", inner.getvalue())
    with tarfile.open(os.path.join(folder, "ILSVRC2012_img_val.tar"), "w") as tar:
        for i in range(1, validation + 1):
            _add(tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg(rng, sizes))
    return str(folder)
