"""Where facray meets Ray: the only package that imports it (``tune_spaces/`` aside, and checked by
``tests/test_structure.py``). Each module wires pure parts from ``data/``, ``labelling/``,
``training/`` and ``predictors/`` into Ray Data, Ray Train or Ray Tune:

- :mod:`.runtime`: start or join Ray (``ray.init``), signals, Ray's console output;
- :mod:`.datasets`: metadata tables -> Ray Data blocks;
- :mod:`.prepare`, :mod:`.label`: the ``prepare`` and ``label`` pipelines;
- :mod:`.train`, :mod:`.worker`: the one Ray Train driver and worker loop for every training task
  (:mod:`facray.training.tasks`); :mod:`.ranks`: what every worker rank does together;
  :mod:`.mlflow_callback`: epochs to MLflow as they arrive; :mod:`.streaming`: training data
  streamed by Ray Data;
- :mod:`.sweep`: Ray Tune sweeps.
"""
