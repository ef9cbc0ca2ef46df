"""Runs TFMOT's own pruning on a small tf_keras model and prints what it did, as JSON.

Run with TF_USE_LEGACY_KERAS=1 in a process of its own (TFMOT needs legacy Keras).
Prints, for every training step t (1-based): the raw kernels at the start of batch t
(what TFMOT's mask update reads) and the masks after batch t; and the initial kernels.
"""

import json
import sys

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

keras = tf.keras
args = json.loads(sys.argv[1])
tf.random.set_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(args["examples"], 6)).astype(np.float32)
y = rng.integers(0, 3, size=args["examples"])
schedule = tfmot.sparsity.keras.PolynomialDecay(
    args["initial"], args["final"], args["begin"], args["end"], frequency=args["frequency"]
)
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(3, name="b")])
pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
pruned.compile(
    optimizer=keras.optimizers.SGD(args["learning_rate"]),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
wrappers = [layer for layer in pruned.layers if hasattr(layer, "pruning_vars")]
# tf_keras's initializers do not follow tf.random.set_seed here, so the kernels come from numpy: the
# same record on every run.
init = np.random.default_rng(args["init_seed"])
for w in wrappers:
    w.layer.kernel.assign(init.uniform(-0.6, 0.6, size=w.layer.kernel.shape).astype(np.float32))
initial = {w.layer.name: w.layer.kernel.numpy().tolist() for w in wrappers}
record = {"initial": initial, "steps": []}


class Recorder(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.kernels = {w.layer.name: w.layer.kernel.numpy().tolist() for w in wrappers}

    def on_train_batch_end(self, batch, logs=None):
        masks = {w.layer.name: w.pruning_vars[0][1].numpy().tolist() for w in wrappers}
        record["steps"].append({"kernels": self.kernels, "masks": masks})


pruned.fit(
    x,
    y,
    batch_size=args["batch_size"],
    epochs=args["epochs"],
    shuffle=False,
    verbose=0,
    callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), Recorder()],
)
print(json.dumps(record))
