"""The experiment engine: settings, the IMP main line and its levels, branches, recipes, data and models.

``config`` declares every setting once (flag, type, range, reader, identity);
``experiment`` runs the main line per replicate and then the branches, after
every check; ``levels`` trains one level (checkpoints, resume, lineages);
``branches`` is the branch registry with its families (controls, analyses,
baselines); ``recipe`` builds and compiles a model as a run does;
``run_dir`` decides where a run's folder is; ``repair`` rebuilds what a
damaged store lost; ``ticket`` loads a run's ticket into Keras; ``data`` and
``models`` are the registries; ``distribute``, ``loop`` and ``monitor`` run
training under a strategy and evaluate it.
"""
