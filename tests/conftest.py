import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
# One scratch folder per test process, removed when it exits: backend="auto" measures break-even densities
# once per machine and tests keep that cache to themselves; SB3 makes an (empty) log folder in the system
# temp dir for every learn() without a logger, and the tests' ones go here instead of piling up in /tmp.
_SCRATCH = tempfile.mkdtemp(prefix="sparse_rl_tests_")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ.setdefault("SPARSE_RL_CACHE_DIR", os.path.join(_SCRATCH, "cache"))
os.environ.setdefault("SB3_LOGDIR", os.path.join(_SCRATCH, "sb3"))
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # the longest tests first: with -n 2 the workers then end together on short ones, instead of one waiting
    # while the other runs a minute-long sweep test that happened to come last
    items.sort(key=lambda item: "slow" not in item.keywords)
    if os.environ.get("SPARSE_RL_EXPENSIVE") == "1":
        return
    skip = pytest.mark.skip(reason="expensive: set SPARSE_RL_EXPENSIVE=1 to run")
    for item in items:
        if "expensive" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    """Where the device-aware tests run: ``cpu`` (CI), or ``SPARSE_RL_TEST_DEVICE=cuda`` on a GPU machine."""
    dev = torch.device(os.environ.get("SPARSE_RL_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("SPARSE_RL_TEST_DEVICE=cuda, but torch sees no GPU here")
    return dev
