"""Export of trained sparse (or dense) SAC/TD3 actors for deployment.

- :mod:`sparse_rl.export.runtime`: numpy-only loader/runner of the compact sparse file (no torch).
- :mod:`sparse_rl.export.graph`: the actor as a plain graph (:func:`~sparse_rl.export.graph.extract_actor`).
- :mod:`sparse_rl.export.formats`: sparse ``.npz``, ONNX and C99 writers.
- :mod:`sparse_rl.export.cli`: ``python -m sparse_rl.export``.

This package imports nothing at import time, so the runtime stays torch-free.
"""
