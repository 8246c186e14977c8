"""Small hand-made data for the training and evaluation tests (generated on the fly, never committed
binaries)."""
