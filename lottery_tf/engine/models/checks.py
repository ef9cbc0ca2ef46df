"""Settings that need the built model: images it cannot take, and settings only some models read.

:func:`build_for_data` builds the run's model for the data's images and names
the flag that sets their shape when the model cannot take them (a Keras error,
coloured for terminals, otherwise blames whatever caught it).
:func:`check_settings` refuses, as :func:`lottery_tf.engine.config.validate`
does for settings without a model, a setting this model does not read:
BatchNorm statistics for a model without BatchNorm, an output-layer fraction
where the output layer is left dense or has a fraction of its own, a pruning
fraction no weight prunes at.
"""

from __future__ import annotations

import re

from lottery_tf.engine.config import SETTING, ConfigError, ExperimentConfig
from lottery_tf.engine.models.registry import build_model

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Keras colours its messages for terminals
_LARGEST_SIDE = 1024  # the largest image side tried when looking for the smallest one a model takes


def check_initializer(name: str) -> None:
    """``--initializer`` must name a Keras initializer.

    Raises:
        ConfigError: Naming the flag and examples of valid names.
    """
    from lottery_tf.core.keras_compat import keras

    try:
        keras.initializers.get(name)
    except (ValueError, TypeError):
        raise ConfigError(
            "initializer",
            f"unknown Keras initializer {name!r}; expected a name such as glorot_normal, "
            "glorot_uniform, he_normal, he_uniform, lecun_normal",
        ) from None


def input_flag(config: ExperimentConfig) -> str:
    """The flag that sets the shape of the images: the synthetic shape, ImageNet's crop size, else the model."""
    return {"synthetic": "synthetic_shape", "imagenet2012": "image_size"}.get(config.data.name, "model")


def keras_reason(error: BaseException) -> str:
    """Keras's reason for a failed build, as one clean line (no colour codes, no call arguments)."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    layer = ""
    for line in lines:
        match = re.match(r"Exception encountered when calling (\w+)", line)
        if match:
            layer = match.group(1)
            continue
        if line.startswith("Arguments received"):
            break
        reason = re.split(r" Received:|\. Full shape", line, maxsplit=1)[0].strip().rstrip(".")
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        return f"{layer}: {reason}" if layer else reason
    return type(error).__name__


def _builds(config: ExperimentConfig, shape: tuple, num_classes: int) -> bool:
    try:
        build_model(config.model, shape, num_classes)
    except ValueError:
        return False
    return True


def build_for_data(config: ExperimentConfig, input_shape: tuple, num_classes: int):
    """``build_model`` for the data's images.

    Raises:
        ConfigError: Naming ``--synthetic_shape``, ``--image_size`` or ``--model`` when the model cannot take
            images of ``input_shape`` (too small for its pooling, too few dimensions), with Keras's reason.
    """
    try:
        return build_model(config.model, input_shape, num_classes)
    except ValueError as error:
        reason = keras_reason(error)
    shown = "x".join(map(str, input_shape)) or "scalar"
    name = config.model.name
    flag = input_flag(config)
    smallest = ""
    too_small = "size would be zero or negative" in reason or "negative dimension" in reason.lower()
    if too_small and len(input_shape) in (2, 3):
        side = max(input_shape[:2])
        while side < _LARGEST_SIDE:
            side *= 2
            if _builds(config, (side, side, *input_shape[2:]), num_classes):
                smallest = f" ({'x'.join(map(str, (side, side, *input_shape[2:])))} builds)"
                break
    if flag == "model":
        raise ConfigError(
            "model",
            f"{name} cannot take {config.data.name}'s {shown} images ({reason}); choose a model for images of "
            "this size",
        )
    if too_small:
        raise ConfigError(
            flag,
            f"{shown} images are too small for --model={name}: its pooling shrinks them to nothing ({reason}); "
            f"expected larger images{smallest}",
        )
    raise ConfigError(flag, f"--model={name} cannot take {shown} images ({reason}); expected images it takes")


def _unread(flag: str, config: ExperimentConfig, why: str) -> ConfigError:
    setting = SETTING[flag]
    return ConfigError(flag, f"{setting.shown(config)} is set, but {why}, so nothing reads it; remove it")


def check_settings(config: ExperimentConfig, model) -> None:
    """Settings this model does not read (``model`` masked as the run masks it).

    Raises:
        ConfigError: Naming the flag: ``--batchnorm_statistics``/``--batchnorm_batches`` for a model
            without BatchNorm; ``--output_pruning_fraction`` where the output layer's weight has its own
            fraction, or ``--exclude_layers`` where it is left dense while an output fraction would
            then prune another weight; ``--pruning_fraction`` where every weight has its own fraction.
    """
    from lottery_tf.core.analysis.batchnorm import batchnorm_layers
    from lottery_tf.core.masking import mask_names, prunable_weight_names
    from lottery_tf.core.pruning import resolve_mask_name

    b, p, name = config.branches, config.pruning, config.model.name
    if "instability" in b.names and not batchnorm_layers(model):
        for flag in ("batchnorm_statistics", "batchnorm_batches"):
            if SETTING[flag].is_set(config):
                raise _unread(flag, config, f"--model={name} has no BatchNorm layer (no statistics to re-estimate)")
    kept = mask_names(model)
    output = prunable_weight_names(model)[-1]  # the output layer's weight, pruned or not
    own = {resolve_mask_name(n, kept) for n, _ in p.layer_fractions}
    target = kept[-1]  # the weight the run gives --output_pruning_fraction (the last one pruned)
    if p.output_fraction and target in own and SETTING["output_pruning_fraction"].is_set(config):
        raise _unread(
            "output_pruning_fraction", config, f"--layer_pruning_fractions gives {target} a fraction of its own"
        )
    if p.output_fraction and target not in own and target != output:
        excluded = ",".join(p.exclude_layers)
        if SETTING["output_pruning_fraction"].is_set(config):
            raise ConfigError(
                "output_pruning_fraction",
                f"{SETTING['output_pruning_fraction'].shown(config)} is set, but --exclude_layers={excluded} leaves "
                f"the output layer's weight {output} dense, so no output layer is pruned (the fraction would "
                f"prune {target} instead); remove it, or pass --output_pruning_fraction=0",
            )
        raise ConfigError(
            "exclude_layers",
            f"{excluded} leaves the output layer's weight {output} dense, so --output_pruning_fraction "
            f"({p.output_fraction:g}, its default) would prune {target} instead; pass --output_pruning_fraction=0 "
            f"to prune {target} at --pruning_fraction like the other layers",
        )
    pooled = [n for n in kept if n not in own and not (n == target and p.output_fraction)]
    if not pooled and SETTING["pruning_fraction"].is_set(config):
        raise _unread(
            "pruning_fraction",
            config,
            f"every weight --model={name} prunes has a fraction of its own (--layer_pruning_fractions, "
            "--output_pruning_fraction)",
        )
