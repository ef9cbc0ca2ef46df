"""The Keras library: masks on any model's weights, the pruning decision, IMP with rewinding inside ``fit``.

Nothing here reads run folders or flags. ``keras_compat`` is the one module
that imports Keras (``requested_backend`` says which backend it will load,
without importing it); ``naming`` gives every variable its unique name;
``masking`` is where the mask is applied; ``pruning`` is where the pruning
decision is (pure numpy: magnitude, blocks, N:M); ``callbacks`` and ``rewind``
run IMP with rewinding inside ``model.fit``; ``saliency`` and ``gradual`` are
the baselines' maths (pruning at initialization, gradual magnitude pruning);
``optimizers`` and ``schedules`` are the recipes' optimizers and learning
rates; ``litert`` converts, reads back and runs LiteRT files; ``analysis`` is
the maths of instability and stability.
"""
