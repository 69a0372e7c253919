"""Pure-torch models (no Ray)."""
