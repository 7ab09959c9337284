"""rl-zoo3 YAML files that name our classes train and enjoy (its own scripts, in a subprocess)."""

from __future__ import annotations

import subprocess
import sys

from stable_baselines3 import PPO

from sparse_rl import SparseActorCriticPolicy, sparsity_report

HYPERPARAMS = """\
CartPole-v1:
  n_envs: 2
  n_timesteps: 512
  policy: 'sparse_rl.SparseActorCriticPolicy'
  n_steps: 64
  batch_size: 64
  policy_kwargs: "dict(sparsity=0.9, topology='set', update_interval=10, net_arch=[32, 32])"
"""


def test_rl_zoo3_trains_and_enjoys_a_sparse_policy_named_in_its_yaml(tmp_path):
    (tmp_path / "ppo.yml").write_text(HYPERPARAMS)
    env = {"OMP_NUM_THREADS": "1", "PATH": ""}
    train = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "CartPole-v1", "-conf", "ppo.yml",
             "-f", "logs", "--seed", "0", "--device", "cpu"]
    done = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    enjoy = [sys.executable, "-m", "rl_zoo3.enjoy", "--algo", "ppo", "--env", "CartPole-v1", "-f", "logs", "-n", "50",
             "--no-render", "--device", "cpu"]
    done = subprocess.run(enjoy, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "Mean reward" in done.stdout, done.stderr[-2000:]
    model = PPO.load(tmp_path / "logs" / "ppo" / "CartPole-v1_1" / "CartPole-v1.zip", device="cpu")
    assert isinstance(model.policy, SparseActorCriticPolicy)
    assert all(abs(net["density"] - 0.1) < 0.01 for net in sparsity_report(model).values())
