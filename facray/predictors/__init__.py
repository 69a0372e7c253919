"""Trained 40-attribute predictors: the folder format (:mod:`.format`, no torch), finding one
(:mod:`.locate`, no torch), decisions from thresholds (:mod:`.thresholds`, no torch), the networks
(:mod:`.networks`, torch) and the MLflow pyfunc wrapper (:mod:`.pyfunc`)."""
