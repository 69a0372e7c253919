"""Where facray meets Ray: the only package that imports it (``tune_spaces/`` aside, and checked by
``tests/test_structure.py``). Each module wires pure parts from ``data/``, ``labelling/``,
``training/`` and ``predictors/`` into Ray Data, Ray Train or Ray Tune:

- :mod:`.runtime`: start or join Ray (``ray.init``), signals, Ray's console output;
- :mod:`.datasets`: metadata tables -> Ray Data blocks;
- :mod:`.prepare`, :mod:`.label`: the ``prepare`` and ``label`` pipelines;
- :mod:`.train_binary`, :mod:`.binary_worker`, :mod:`.train_multitask`, :mod:`.multitask_worker`:
  the Ray Train drivers and their per-worker loops; :mod:`.ranks`: what every worker rank does
  together; :mod:`.streaming`: training batches streamed by Ray Data;
- :mod:`.sweep`: Ray Tune sweeps.
"""
