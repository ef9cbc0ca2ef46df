"""Keras callbacks: iterative magnitude pruning with rewinding inside ``fit``."""

from __future__ import annotations

import collections
import dataclasses
import weakref
from collections.abc import Mapping

import numpy as np

from lottery_tf.core import rewind
from lottery_tf.core.keras_compat import BACKEND, all_sublayers, execution_problem, keras, learning_rate_object
from lottery_tf.core.masking import (
    apply_masks,
    get_masks,
    get_prunable_weights,
    mask_names,
    retrace_training,
    set_masks,
)
from lottery_tf.core.pruning import PruningSpec, prune_by_magnitude, resolve_mask_name


class PruneRewindCallback(keras.callbacks.Callback):
    """Iterative magnitude pruning (IMP) with reset or rewinding, one level per ``fit``.

    During the first ``fit`` the callback records the *rewind point*: every
    non-mask variable at training step ``rewind_step`` (0 = the original
    initialization, Frankle & Carbin 2019; k > 0 = rewinding, Frankle et al.
    2019/2020). Each ``fit`` trains one level, and when it returns the model
    holds the weights that level trained: ``evaluate``, ``save``,
    :func:`~lottery_tf.core.masking.strip_masks` and export see the trained
    ticket. When the next ``fit`` begins (or on an explicit
    :meth:`prune_and_rewind`), the callback prunes ``spec`` of the remaining
    weights by magnitude, sets the survivors back to their values at the rewind
    point and rewinds the optimizer to step ``rewind_step`` (see
    ``rewind_optimizer``), so the learning-rate schedule restarts from there.

    One callback drives one model: a callback that has seen a model refuses
    another (create one callback per model, or call :meth:`reset` to start
    over with a new model).

    Custom training loops call the same steps by hand (:meth:`attach`,
    :meth:`begin_level`, :meth:`end_step`, :meth:`end_level`); the learning
    rate after a rewind is right in eager, ``tf.function`` and XLA steps,
    because :meth:`attach` makes the schedule rewindable before the step is
    traced, and refuses an optimizer with a schedule that has already taken a
    step (a step traced then could not see a rewind).

    With ``rewind_weights=False`` the survivors keep their trained values and
    only the learning-rate schedule (and optimizer) is rewound: learning-rate
    rewinding (Renda et al. 2020), where each level prunes the previous
    level's trained weights.

    Train each level for the same number of steps minus ``rewind_step`` after the
    first, so every level ends at the same point of the schedule.

    Everything that can be checked is checked when the first ``fit`` begins,
    before any step: that the model has masked weights, that it is built (a
    subclassed model must be called on data first when ``rewind_step=0``), and
    that ``output_layer`` and ``spec.layer_fractions`` name its masks. If
    pruning fails, the model's masks and weights are left as they were.

    Args:
        spec: A :class:`PruningSpec` (method, fraction, output and per-layer
            fractions). Per-layer fractions may name a mask
            (``"fc1/kernel"``) or a layer with one mask (``"fc1"``).
        rewind_step: Training step to rewind to; must be reached in the first
            ``fit``, at an execution boundary (a multiple of the model's
            ``steps_per_execution``).
        levels: If set, the total number of levels; a ``fit`` after the last
            one goes on training the last level instead of pruning. ``None``
            prunes before every ``fit`` after the first.
        output_layer: The mask (``"<layer>/<attribute>"``, or a layer name with
            one mask) that gets ``spec.output_fraction``; defaults to the last
            masked weight.
        verbose: If true, prints one line per pruning step.
        on_capture: Optional function called with the rewind point when it is
            recorded (for example to save it to disk at once).
        rewind_optimizer: ``"fresh"`` (default, as open_lth): a freshly built
            optimizer state at each rewind, with its own step counter at 0 and
            the learning-rate schedule offset to ``rewind_step``; ``"reset"``:
            the fresh state with the step counter set to ``rewind_step``
            (Adam's bias correction then treats zero moments as k steps old);
            ``"restore"``: the optimizer variables saved at ``rewind_step``
            (saved with the weights; with ``rewind_weights=False`` set
            ``optimizer_point`` yourself).
            See :func:`lottery_tf.core.rewind.reset_optimizer`.
        rewind_weights: ``True`` rewinds the weights (IMP); ``False`` keeps
            the trained weights (learning-rate rewinding).
        agree_on_masks: Optional function applied to each new set of masks
            before they are set, so that all workers of a multi-worker run
            keep one decision (e.g.
            :func:`lottery_tf.engine.distribute.broadcast_from_chief`).

    Raises:
        ValueError: If ``rewind_step`` or ``levels`` is not a non-negative
            (positive) integer, or ``rewind_optimizer`` is unknown.

    Example:

    >>> model = lottery_tf.wrap_model(dense_model)
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> imp = PruneRewindCallback(PruningSpec("layerwise", 0.2, output_fraction=0.1))
    >>> for level in range(5):
    ...     model.fit(x, y, epochs=2, callbacks=[imp])
    ...     model.evaluate(x_test, y_test)  # the ticket this level trained
    """

    def __init__(
        self,
        spec: PruningSpec | None = None,
        rewind_step: int = 0,
        levels: int | None = None,
        output_layer: str | None = None,
        verbose: bool = False,
        on_capture=None,
        rewind_optimizer: str = "fresh",
        rewind_weights: bool = True,
        agree_on_masks=None,
    ):
        super().__init__()
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, (int, np.integer)) or rewind_step < 0:
            raise ValueError(f"rewind_step must be an integer >= 0; got {rewind_step!r}.")
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1):
            raise ValueError(f"levels must be a positive integer or None; got {levels!r}.")
        if rewind_optimizer not in rewind.REWIND_OPTIMIZER:
            raise ValueError(
                f"rewind_optimizer must be one of {', '.join(rewind.REWIND_OPTIMIZER)}; got {rewind_optimizer!r}."
            )
        self.rewind_optimizer = rewind_optimizer
        self.rewind_weights = bool(rewind_weights)
        self.optimizer_point = None
        self.spec = spec if spec is not None else PruningSpec()
        self.rewind_step = int(rewind_step)
        self.levels = levels
        self.output_layer = output_layer
        self.verbose = verbose
        self.on_capture = on_capture
        self.agree_on_masks = agree_on_masks
        self.level = 0
        self.rewind_point: collections.OrderedDict[str, np.ndarray] | None = None
        self.history: list[dict] = []
        self._checked = False
        self._owner = None  # weak reference to the one model this callback drives
        self._trained = False  # a level has trained and is not yet pruned

    @property
    def level_trained(self) -> bool:
        """Whether a level has trained and the next one is not yet pruned and rewound."""
        return self._trained

    # -- one model ----------------------------------------------------------------------
    def set_model(self, model):
        """Binds the callback to ``model`` (Keras calls this in ``fit``).

        Raises:
            ValueError: If the callback already drives another model.
        """
        owner = self._owner() if self._owner is not None else None
        if self._owner is not None and owner is not model:
            raise ValueError(
                f"This PruneRewindCallback drives model {self._owner_name!r} (level {self.level}); its rewind point "
                f"and masks belong to it, not to model {model.name!r}. Create one callback per model, or call "
                "callback.reset() to start over with another model."
            )
        if self._owner is None:
            self._owner = weakref.ref(model)
            self._owner_name = model.name
        super().set_model(model)
        optimizer = getattr(model, "optimizer", None)
        if self.rewind_optimizer == "fresh" and optimizer is not None and not optimizer.built:
            rewind.install_offset_schedule(optimizer)  # before any training step is traced

    def reset(self) -> None:
        """Forgets the model, its rewind point, level and history, so the callback can drive a new model."""
        self._owner = None
        self.level = 0
        self.rewind_point = None
        self.optimizer_point = None
        self.history = []
        self._checked = False
        self._trained = False

    # -- custom training loops ------------------------------------------------------------
    def attach(self, model) -> None:
        """Binds a model for a custom training loop; call it before the training step is traced or run.

        Makes the optimizer's learning-rate schedule rewindable (a step traced
        afterwards reads the rewound position from a variable), so the
        learning rate after a rewind is right in eager, ``tf.function`` and XLA.

        Raises:
            ValueError: If the model is not compiled with an optimizer, or its
                optimizer has already been built (a step traced before could not
                see the rewind) while its schedule is not yet rewindable.
        """
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(
                f"Model {model.name!r} has no optimizer; model.compile(optimizer=...) (or set model.optimizer) "
                "before attach(), and train with that optimizer."
            )
        schedule = learning_rate_object(rewind.optimizer_chain(optimizer)[-1])
        needs_offset = (
            self.rewind_optimizer == "fresh"
            and isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
            and not isinstance(schedule, rewind.OffsetSchedule)
        )
        if needs_offset and optimizer.built:
            raise ValueError(
                "The optimizer has already been built (a training step ran or was traced), so a compiled step "
                "would keep the schedule it traced and ignore rewinds; call attach(model) before the first step."
            )
        self.set_model(model)

    def _attached(self, what: str) -> None:
        if self.model is None:
            raise ValueError(f"{what}() before attach(model): call callback.attach(model) first.")

    def begin_level(self) -> None:
        """Custom loops: call before a level's first step (prunes and rewinds after a trained level)."""
        self._attached("begin_level")
        level = self.level
        self.on_train_begin()
        # JAX: a step the user compiled before this pruning holds the old masks; the first step shows it.
        self._check_next_step = BACKEND == "jax" and self.level != level

    def end_step(self) -> None:
        """Custom loops: call after every training step (records the rewind point at ``rewind_step``).

        Raises:
            ValueError: On JAX, after the first step of a pruned level, if that
                step left pruned weights non-zero: it was compiled before
                ``begin_level()`` and holds the old masks.
        """
        self._attached("end_step")
        if getattr(self, "_check_next_step", False):
            self._check_next_step = False
            masks, weights = get_masks(self.model), get_prunable_weights(self.model)
            if any(np.any(weights[name][masks[name] == 0]) for name in masks):
                raise ValueError(
                    "The training step left pruned weights non-zero: on JAX a step compiled (jax.jit) before "
                    "begin_level() holds the masks and learning-rate offset it was traced with; compile it again "
                    "after begin_level()."
                )
        self.on_train_batch_end(None)

    def end_level(self) -> None:
        """Custom loops: call after a level's last step; the model keeps the trained weights."""
        self._attached("end_level")
        self.on_train_end()

    # -- checks before any step -------------------------------------------------------
    def _step(self) -> int:
        return rewind.global_step(self.model.optimizer)

    def _model_built(self) -> bool:
        return all(layer.built for layer in all_sublayers(self.model))

    def check_model(self) -> None:
        """Masks exist and every name the spec uses is one of them (resolved to mask names)."""
        names = mask_names(self.model)  # ValueError if the model has nothing masked
        if self.output_layer is not None:
            self.output_layer = resolve_mask_name(self.output_layer, names, "output_layer")
        fractions = {resolve_mask_name(n, names, "layer_fractions"): f for n, f in self.spec.layer_fractions.items()}
        if fractions != self.spec.layer_fractions:
            self.spec = dataclasses.replace(self.spec, layer_fractions=fractions)
        if self.rewind_optimizer == "fresh" and rewind.install_offset_schedule(self.model.optimizer):
            self.model.make_train_function(force=True)  # trace again with the offsettable schedule
        self._checked = True

    def on_train_begin(self, logs=None):
        if self._trained:
            self.prune_and_rewind()  # the previous level trained: this fit trains the next one
        built = self._model_built()
        if built and not self._checked:
            self.check_model()
        if built and self._checked:
            retrace_training(self.model, only_if_stale=True)  # JAX: masks assigned since the step was traced
        if self.rewind_optimizer == "restore" and not self.rewind_weights and self.rewind_step:
            if self.optimizer_point is None:  # checked before the first step, not after a trained level
                raise ValueError(
                    f"rewind_optimizer='restore' needs the optimizer state of step {self.rewind_step}, which this "
                    "callback saves only with the weights; with rewind_weights=False (learning-rate rewinding) "
                    "use rewind_optimizer='fresh' or 'reset', or set its optimizer_point to a state saved at that "
                    "step (lottery_tf.core.rewind.optimizer_values)."
                )
        if self.rewind_point is not None or not self.rewind_weights:
            return  # learning-rate rewinding keeps the trained weights: nothing to record
        start = rewind.global_step(self.model.optimizer)
        if problem := execution_problem(self.model, self.params, start, [self.rewind_step]):
            raise ValueError(f"rewind_step={self.rewind_step} cannot be observed: {problem}")
        if not built:
            if self.rewind_step == 0:
                raise ValueError(
                    f"Model {self.model.name!r} is not built, so its initialization cannot be "
                    "recorded before training; call it on a batch (model(x[:1])) or "
                    "model.build(input_shape) before fit."
                )
            return  # capture (and the checks) after the first steps build it
        step = self._step()
        if step > self.rewind_step:
            raise ValueError(
                f"The optimizer is already at step {step}, past rewind_step="
                f"{self.rewind_step}; create the callback before the first fit."
            )
        if step == self.rewind_step:
            self._capture()

    def on_train_batch_end(self, batch, logs=None):
        if not self._checked:
            self.check_model()
        if self.rewind_point is None and self.rewind_weights and self._step() == self.rewind_step:
            self._capture()

    def _capture(self):
        self.rewind_point = rewind.capture(self.model)
        optimizer = getattr(self.model, "optimizer", None)
        if self.rewind_optimizer == "restore" and optimizer is not None and optimizer.built and self.rewind_step:
            self.optimizer_point = rewind.optimizer_values(optimizer)
        if self.on_capture is not None:
            self.on_capture(self.rewind_point)

    # -- pruning and rewinding -------------------------------------------------------
    def on_train_end(self, logs=None):
        if self.rewind_point is None and self.rewind_weights:
            raise ValueError(
                f"Training ended at step {self._step()} before rewind_step="
                f"{self.rewind_step} was reached; train the first level longer."
            )
        # Keras copies exponential moving averages into the weights at the end of
        # fit without constraints: pruned entries must be zero again.
        apply_masks(self.model)
        # The model keeps what this level trained; the next level is pruned and rewound when it begins.
        self._trained = self.levels is None or self.level + 1 < self.levels

    def prune_and_rewind(self) -> Mapping[str, np.ndarray]:
        """Prunes the current weights, rewinds survivors, rewinds the optimizer.

        Called when the next ``fit`` (or :meth:`begin_level`) begins after a
        trained level; call it directly to prune and rewind at once (the next
        ``fit`` then does not prune again). Transactional: if anything fails,
        the model's masks and weights are as they were before the call.

        Returns:
            The new masks (name -> array).
        """
        if self.rewind_weights:
            rewind.check_matches(self.model, self.rewind_point)
        old_masks = get_masks(self.model)
        old_state = rewind.capture(self.model)
        masks = self.next_masks()
        if self.agree_on_masks is not None:
            masks = self.agree_on_masks(masks)
        try:
            set_masks(self.model, masks)
            self.rewind()
        except BaseException:
            set_masks(self.model, old_masks)
            rewind.restore(self.model, old_state)
            raise
        self.level += 1
        self._trained = False
        alive = sum(int(np.count_nonzero(m)) for m in masks.values())
        total = sum(m.size for m in masks.values())
        self.history.append({"level": self.level, "density": alive / total})
        if self.verbose:
            print(f"PruneRewindCallback: level {self.level}, density {alive / total:.4f}")
        return masks

    def next_masks(self) -> dict:
        """The pruning decision from the model's current weights and masks (nothing is changed).

        Raises:
            ValueError: If a name in the spec matches no masked weight.
        """
        if not self._checked:
            self.check_model()
        names = mask_names(self.model)
        return prune_by_magnitude(
            get_prunable_weights(self.model), get_masks(self.model), self.spec, self.output_layer or names[-1]
        )

    def rewind(self) -> None:
        """Restores the rewind point (or keeps the weights) under the current masks; rewinds the optimizer.

        Raises:
            ValueError: If no rewind point has been recorded or set.
        """
        if self.rewind_point is None and self.rewind_weights:
            raise ValueError("No rewind point: train a first level, or set callback.rewind_point.")
        if self.rewind_weights:
            rewind.restore(self.model, self.rewind_point)
        else:
            apply_masks(self.model)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or not optimizer.built:
            return
        rewind.reset_optimizer(optimizer, self.rewind_step, self.rewind_optimizer, self.optimizer_point)
        retrace_training(self.model)  # JAX: a traced step holds the schedule's offset as it was
