"""Training loops: pure torch (binary.py) and their Ray Train wrappers."""
