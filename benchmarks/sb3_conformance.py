"""Stable-Baselines3's own test suite, run with sparse_rl's policies in place of SB3's.

    python benchmarks/sb3_conformance.py [--algos sac,td3,ddpg,ppo,a2c,dqn] [--files test_save_load.py ...]

Downloads SB3's source distribution (the version installed here) from the package index into a temporary
directory, and runs its tests with ``benchmarks/sb3_suite/sparse_plugin.py``, which points every algorithm's
``policy_aliases`` at our classes (``sparse_rl.install_aliases``): ``SAC("MlpPolicy", env)`` in those tests
builds a ``SparseSACPolicy`` at the default 90% sparsity. Only tests whose id names one of ``--algos`` run.
Prints pytest's summary line and each failure; exits with pytest's status. SB3's callback tests need its
``[extra]`` packages tqdm and rich (``pip install tqdm rich``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import stable_baselines3

HERE = Path(__file__).resolve().parent
#: the test files that exercise policies (the rest test envs, buffers, loggers, wrappers)
FILES = ["test_save_load.py", "test_train_eval_mode.py", "test_predict.py", "test_her.py", "test_dict_env.py",
         "test_sde.py", "test_run.py", "test_deterministic.py", "test_custom_policy.py", "test_vec_normalize.py",
         "test_callbacks.py", "test_cnn.py", "test_identity.py"]


def fetch_suite(into: Path) -> Path:
    """SB3's tests for the installed version, from its sdist on the package index."""
    version = stable_baselines3.__version__
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", "-d", str(into),
                    f"stable-baselines3=={version}"], check=True)
    archive = next(into.glob("stable_baselines3-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / archive.name.removesuffix(".tar.gz") / "tests"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default="sac,td3,ddpg,ppo,a2c,dqn", help="comma-separated algorithms (default: %(default)s)")
    p.add_argument("--files", nargs="*", default=FILES, help="SB3 test files to run")
    p.add_argument("--suite", type=Path, default=None, help="an extracted SB3 tests/ directory (default: download)")
    p.add_argument("-n", default="0", help="pytest-xdist workers (default: %(default)s)")
    args = p.parse_args()
    algos = [a.strip().lower() for a in args.algos.split(",") if a.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        suite = args.suite or fetch_suite(Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE / "sb3_suite"), os.environ.get("PYTHONPATH", "")]),
               "SB3_SPARSE_ALGOS": ",".join(algos), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "sparse_plugin", "-p", "no:cacheprovider", "-k", " or ".join(algos),
               "-n", args.n, "-W", "ignore::UserWarning", *[str(suite / f) for f in args.files]]
        return subprocess.run(cmd, cwd=suite.parent, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
