"""A pytest plugin that runs Stable-Baselines3's own test suite with sparse_rl's policies in place of SB3's.

Every algorithm's ``policy_aliases`` (what ``SAC("MlpPolicy", env)`` resolves) points at our classes, so
SB3's tests build, train, save and load sparse networks without a line of them changed. See
``benchmarks/sb3_conformance.py``, which fetches the suite and runs it with this plugin.
"""

from __future__ import annotations

import os

from sparse_rl.agents.aliases import install_aliases

#: the algorithms whose aliases are replaced (``SB3_SPARSE_ALGOS``, comma-separated; default all we cover)
ALGOS = [a for a in os.environ.get("SB3_SPARSE_ALGOS", "").split(",") if a] or None


def pytest_configure(config) -> None:
    install_aliases(ALGOS)
