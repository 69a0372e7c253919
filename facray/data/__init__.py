"""Readers, generated data, image transforms and batch ops. Pure Python/numpy/OpenCV: no Ray here
except in ``facray.runners.datasets`` and ``facray.data.pipeline``, which build Ray Datasets."""
