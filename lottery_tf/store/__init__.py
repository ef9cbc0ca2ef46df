"""The run store: how run files are written (atomically), checkpointed, locked, and read back.

``atomic`` writes files whole; ``states`` saves weight states (rewind points,
trained weights); ``checkpoint`` saves and verifies checkpoints within a
level; ``locks`` guards what one process trains; ``reader`` is the one code
that reads a run folder back (what is done, damaged, and what a run does
about it), shared by the runner and the health check; ``output_folders``
decides where a command may write its own folder (never over, into or around
run data); ``faults`` names the crash points the crash tests use. Where the
run folder is decided is :mod:`lottery_tf.engine.run_dir`.
"""
