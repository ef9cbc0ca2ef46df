"""ImageNet preprocessing on synthetic images: shapes, ranges, augmentation randomness."""

import numpy as np
import tensorflow as tf

from lottery_tf.engine.data.imagenet_preprocessing import MEAN, STD, eval_preprocess, normalize, train_preprocess

RNG = np.random.default_rng(0)
IMAGE = tf.constant(RNG.integers(0, 256, (300, 400, 3), dtype=np.uint8))
LOW = (0 - np.array(MEAN)) / np.array(STD)
HIGH = (1 - np.array(MEAN)) / np.array(STD)


def _in_range(x):
    return np.all(x >= LOW - 1e-5) and np.all(x <= HIGH + 1e-5)


def test_normalize_literal():
    pixel = tf.constant([[[255, 0, 124]]], tf.uint8)
    np.testing.assert_allclose(
        normalize(pixel).numpy()[0, 0],
        [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (124 / 255 - 0.406) / 0.225],
        rtol=1e-5,
    )


def test_train_crops_are_random_per_seed_and_stateless():
    outs = [train_preprocess(IMAGE, tf.constant([1, i], tf.int64)).numpy() for i in range(8)]
    for out in outs:
        assert out.shape == (224, 224, 3) and out.dtype == np.float32 and _in_range(out)
    assert len({o.tobytes() for o in outs}) == 8  # different crops for different seeds
    again = train_preprocess(IMAGE, tf.constant([1, 3], tf.int64)).numpy()
    np.testing.assert_array_equal(again, outs[3])


def test_train_flip_happens_about_half_the_time():
    ramp = np.linspace(0, 255, 400).astype(np.uint8)  # increases left to right
    flat = tf.constant(np.tile(ramp[None, :, None], (300, 1, 3)))
    flips = 0
    for i in range(40):
        out = train_preprocess(flat, tf.constant([2, i], tf.int64)).numpy()
        flips += out[112, 0, 0] > out[112, -1, 0]  # a left-to-right ramp, reversed if flipped
    assert 10 < flips < 30


def test_eval_is_central_and_deterministic():
    out = eval_preprocess(IMAGE).numpy()
    assert out.shape == (224, 224, 3) and _in_range(out)
    np.testing.assert_array_equal(out, eval_preprocess(IMAGE).numpy())
    # A square image of one colour stays that colour.
    flat = tf.fill((256, 256, 3), tf.constant(128, tf.uint8))
    np.testing.assert_allclose(
        eval_preprocess(flat).numpy()[100, 100], (128 / 255 - np.array(MEAN)) / np.array(STD), rtol=1e-5
    )
