"""The CLI beyond SAC/TD3: every algorithm trains, evaluates and resumes exactly; impossible pairs are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_same_policy
from test_cli import Crash, run_cli

from sparse_rl import evaluate, train
from sparse_rl.models import load_run_model

#: (algo, env, extra flags): tiny budgets, topology updates every 10 optimizer steps; replay buffers of 2000
#: slots hold every step of these runs, and keep the checkpoints (which save them) small
CASES = {
    "ddpg": ("Pendulum", ["--set", "learning_starts=100", "--set", "batch_size=32", "--set", "buffer_size=2000"]),
    "tqc": ("Pendulum", ["--set", "learning_starts=100", "--set", "batch_size=32", "--set", "buffer_size=2000"]),
    "crossq": ("Pendulum", ["--set", "learning_starts=100", "--set", "batch_size=32", "--set", "buffer_size=2000"]),
    "ppo": ("CartPole-v1", ["--set", "n_envs=1", "--set", "n_steps=64", "--set", "n_epochs=2", "--set", "batch_size=32"]),
    "a2c": ("CartPole-v1", ["--set", "n_envs=1"]),
    # rl-zoo3's MuJoCo PPO: VecNormalize, ReLU, no orthogonal init, a lower initial std
    "ppo-normalize": ("Pendulum", ["--set", "n_envs=1", "--set", "n_steps=64", "--set", "n_epochs=2", "--set", "batch_size=32",
                                   "--set", "normalize=true", "--set", "activation=relu", "--set", "ortho_init=false",
                                   "--set", "log_std_init=-1.0"]),
    # dict observations with hindsight replay: the maze's goal and the robot's state resume with the run
    "sac-her": ("PointMaze_UMaze-v3", ["--env-kwargs", "max_episode_steps=50", "--set", "her=true",
                                       "--set", "learning_starts=100", "--set", "batch_size=32",
                                       "--set", "buffer_size=2000"]),  # HER builds an info dict per slot
    "dqn": ("CartPole-v1", ["--set", "learning_starts=100", "--set", "train_freq=1", "--set", "gradient_steps=1",
                            "--set", "buffer_size=2000"]),
    "dqn-minatar": ("MinAtar/Breakout-v1", ["--set", "learning_starts=100", "--set", "train_freq=1",
                                            "--set", "buffer_size=2000"]),
}


def _argv(case: str, steps: int) -> list[str]:
    env, extra = CASES[case]
    return ["--algo", case.split("-")[0], "--env", env, *extra, "--n-timesteps", str(steps), "--set", "update_interval=10",
            "--set", "backend=sparse",  # CSR where it applies, and no per-machine timing of new layer shapes
            "--set", "net_arch=[32,32]" if "minatar" not in case else "net_arch=[32]", "--no-progress"]


@pytest.mark.parametrize("case", list(CASES))
def test_each_algorithm_trains_evaluates_and_resumes_exactly(case, tmp_path, capsys):
    argv = [*_argv(case, 300), "--set", "checkpoint_freq=150", "--save-replay-buffer", "--eval-freq", "150",
            "--eval-episodes", "1"]
    code, _, err = run_cli(train, [*argv, "--run-dir", tmp_path / "a"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    nets = summary["sparsity"]
    assert set(nets) == ({"q_net"} if case.startswith("dqn") else {"actor", "critic"})
    assert all(abs(n["density"] - 0.1) < 0.02 for n in nets.values()) and "critic_density" in summary["final_eval"]
    with pytest.raises(KeyboardInterrupt):
        train.train(train.build_parser().parse_args([str(a) for a in [*argv, "--run-dir", tmp_path / "b"]]),
                    extra_callbacks=[Crash(220)])
    code, _, err = run_cli(train, ["--resume", tmp_path / "b", "--no-progress"], capsys)
    assert code == 0, err
    a, b = load_run_model(tmp_path / "a"), load_run_model(tmp_path / "b")
    assert a.num_timesteps == b.num_timesteps
    assert_same_policy(a, b)
    if case == "ppo-normalize":  # the statistics went through the checkpoint too
        from sparse_rl.models import run_normalization

        stats_a, stats_b = run_normalization(tmp_path / "a"), run_normalization(tmp_path / "b")
        assert stats_a["obs_count"] > 300 and all(np.array_equal(stats_a[k], stats_b[k]) for k in stats_a)
    code, _, err = run_cli(evaluate, [tmp_path / "a", "--episodes", "1"], capsys)
    assert code == 0, err
    if case == "ppo-normalize":
        _check_normalized_export(tmp_path / "a", tmp_path, capsys)
    if case in ("dqn", "dqn-minatar", "ppo", "sac-her"):  # argmax (discrete), dict observations: on a Cortex-M4
        from sparse_rl.export import cli as export_cli
        from sparse_rl.export.qemu import missing_tools

        code, _, err = run_cli(export_cli, [tmp_path / "a", "--format", "c", "--out", tmp_path / "c"], capsys)
        header = (tmp_path / "c" / "policy.h").read_text()
        assert code == 0 and ("SPARSE_RL_POLICY_OBS_DESIRED_GOAL_OFFSET" in header if case == "sac-her"
                              else "int sparse_rl_policy_act(const float *obs);" in header)
        if not missing_tools():
            code, out, err = run_cli(export_cli, [tmp_path / "a", "--verify-on", "qemu-cortex-m4", "--steps", "40"], capsys)
            assert code == 0 and "within the bound" in out, (out, err)
        if case == "sac-her":  # the numpy runtime takes the dict itself
            from sparse_rl.export.runtime import SparsePolicy

            code, _, err = run_cli(export_cli, [tmp_path / "a", "--format", "sparse", "--out", tmp_path / "p.npz"], capsys)
            model = load_run_model(tmp_path / "a")
            obs = {k: s.sample()[None].repeat(50, 0) + np.random.default_rng(0).normal(size=(50, *s.shape))
                   for k, s in model.observation_space.spaces.items()}
            obs = {k: np.clip(v, -5, 5).astype(np.float32) for k, v in obs.items()}
            actions = SparsePolicy.load(tmp_path / "p.npz").act(obs)
            assert code == 0 and np.abs(actions - model.predict(obs, deterministic=True)[0]).max() <= 1e-5 * 2



def _check_normalized_export(run, tmp_path, capsys):
    """A run trained under VecNormalize exports with its statistics: the exported policy takes the raw
    observation and acts as the model does on the normalised one (numpy runtime, and C on a Cortex-M4)."""
    from sparse_rl.envs.normalize import obs_normalization
    from sparse_rl.export import cli as export_cli
    from sparse_rl.export.qemu import missing_tools
    from sparse_rl.export.runtime import SparsePolicy
    from sparse_rl.models import run_normalization

    code, _, err = run_cli(export_cli, [run, "--format", "sparse", "--out", tmp_path / "p.npz"], capsys)
    assert code == 0, err
    # the run's model.zip alone brings the run's statistics too
    code, _, err = run_cli(export_cli, [run / "model.zip", "--format", "sparse", "--out", tmp_path / "z.npz"], capsys)
    with np.load(tmp_path / "z.npz") as z, np.load(tmp_path / "p.npz") as d:  # (zip timestamps may differ)
        assert code == 0 and z.files == d.files and all(np.array_equal(z[k], d[k]) for k in z.files)
    model = load_run_model(run)
    mean, std, clip = obs_normalization(run_normalization(run))
    raw = np.random.default_rng(0).uniform(-1, 1, (200, 3)).astype(np.float32) * np.array([1, 1, 8], np.float32)
    expected = model.predict(np.clip((raw - mean) / std, -clip, clip).astype(np.float32), deterministic=True)[0]
    assert np.abs(SparsePolicy.load(tmp_path / "p.npz").act(raw) - expected).max() <= 1e-4
    import onnxruntime as ort

    code, _, err = run_cli(export_cli, [run, "--format", "onnx", "--out", tmp_path / "p.onnx"], capsys)
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    assert code == 0 and np.abs(session.run(None, {"obs": raw})[0] - expected).max() <= 1e-4
    if not missing_tools():
        code, out, err = run_cli(export_cli, [run, "--verify-on", "qemu-cortex-m4", "--steps", "40"], capsys)
        assert code == 0 and "within the bounds" in out, (out, err)


@pytest.mark.parametrize("argv, needle", [
    (["--algo", "dqn", "--env", "Pendulum"], "DQN needs a Discrete one"),
    (["--algo", "tqc", "--env", "CartPole-v1"], "TQC needs a continuous (Box) action space"),
    (["--algo", "ppo", "--env", "Pendulum", "--set", "dynamic_buffer=true"], "do not apply to on-policy PPO/A2C"),
    (["--algo", "dqn", "--env", "CartPole-v1", "--set", "n_steps=3"], "work with sac and td3, not with dqn"),
    (["--algo", "ppo", "--env", "Pendulum", "--topology", "grasp"], "SparseActorCriticPolicy does not support"),
    (["--algo", "crossq", "--env", "Pendulum", "--topology", "grasp"], "SparseCrossQPolicy does not support"),
])
def test_impossible_algorithm_pairs_exit_2_with_one_clear_line(argv, needle, tmp_path, capsys):
    code, _, err = run_cli(train, [*argv, "--run-dir", tmp_path / "run"], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "run").exists()
