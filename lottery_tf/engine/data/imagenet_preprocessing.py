"""The standard ResNet preprocessing for ImageNet, as pure TensorFlow functions.

Training: an Inception-style random crop (8%-100% of the area, aspect ratio
3/4-4/3, up to 10 attempts, else a central crop), resized to 224x224, a random
horizontal flip. Evaluation: resize the shorter side to 256, central 224x224
crop. Both scale to [0, 1] and normalize with the ImageNet per-channel mean and
standard deviation. Randomness is stateless (keyed by a seed pair), so a
resumed run sees the same crops.

Used by the streamed ``imagenet2012`` dataset (:mod:`lottery_tf.engine.data.imagenet`).
"""

from __future__ import annotations

import tensorflow as tf

SIZE = 224
RESIZE = 256
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(image):
    """uint8 or [0, 255] float image -> float32 normalized per channel."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(MEAN)) / tf.constant(STD)


def train_preprocess(image, seed, size: int = SIZE):
    """Random-resized crop and flip of one HxWx3 image; ``seed`` is a pair of ints."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seeds[0],
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    crop = tf.image.resize(crop, (size, size), method="bilinear")
    crop = tf.image.stateless_random_flip_left_right(crop, seed=seeds[1])
    return normalize(tf.clip_by_value(crop, 0.0, 255.0))


def eval_preprocess(image, size: int = SIZE, resize: int = RESIZE):
    """Shorter side to ``resize``, central ``size`` x ``size`` crop."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_shape, method="bilinear")
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    crop = tf.slice(image, [top, left, 0], [size, size, 3])
    return normalize(tf.clip_by_value(crop, 0.0, 255.0))
