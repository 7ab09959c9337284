"""Noisy and shifting inputs (sparse_rl.envs.wrappers): noise features, a feature permutation, their state."""

import csv
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from helpers import assert_same_evaluations, assert_same_policy
from test_cli import TINY, Crash, run_cli

from sparse_rl import train
from sparse_rl.envs import make_env
from sparse_rl.envs.state import get_env_state, set_env_state
from sparse_rl.envs.wrappers import (
    NoiseFeatures,
    PermuteFeatures,
    WrapperError,
    feature_statistics,
    noise_feature_count,
    sync_permutation,
    wrap_env,
)
from sparse_rl.models import load_run_model


def test_noise_feature_counts_give_the_asked_fraction():
    assert noise_feature_count(17, 0.9) == 153 and noise_feature_count(17, 0.99) == 1683
    assert noise_feature_count(17, 0.0) == 0 and noise_feature_count(11, 0.5) == 11
    for bad in (1.0, -0.1):
        with pytest.raises(WrapperError, match="noise_fraction must be in"):
            noise_feature_count(17, bad)


@pytest.mark.parametrize("kind", ["normal", "uniform", "matched"])
def test_noise_features_follow_the_real_ones_and_leave_them_untouched(kind):
    plain = gym.make("HalfCheetah-v5")
    stats = feature_statistics("HalfCheetah-v5") if kind == "matched" else None
    noisy = NoiseFeatures(gym.make("HalfCheetah-v5"), count=153, kind=kind, seed=0, stats=stats)
    assert noisy.observation_space.shape == (170,)
    a, _ = plain.reset(seed=3)
    b, _ = noisy.reset(seed=3)
    rows = [b[17:]]
    np.testing.assert_array_equal(a, b[:17])
    for _ in range(300):
        action = plain.action_space.sample()
        a = plain.step(action)[0]
        b = noisy.step(action)[0]
        np.testing.assert_array_equal(a, b[:17])
        rows.append(b[17:])
    noise = np.asarray(rows)
    assert noisy.observation_space.contains(b.astype(np.float64))
    if kind == "uniform":
        assert noise.min() >= -1 and noise.max() <= 1
    elif kind == "normal":
        assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05
    else:  # each noise feature with the mean and std of real feature j mod 17: scale does not give it away
        mean, std = stats
        index = np.arange(153) % 17
        assert np.all(np.abs(noise.mean(0) - mean[index]) <= 4 * std[index] / np.sqrt(len(noise)) + 1e-6)
        np.testing.assert_allclose(noise.std(0), std[index], rtol=0.35)
    # the same seed draws the same noise, another seed other noise
    again = NoiseFeatures(gym.make("HalfCheetah-v5"), 153, kind, 0, stats)
    other = NoiseFeatures(gym.make("HalfCheetah-v5"), 153, kind, 0, stats)
    np.testing.assert_array_equal(again.reset(seed=3)[0], noisy.reset(seed=3)[0])
    assert not np.array_equal(other.reset(seed=4)[0][17:], noisy.reset(seed=3)[0][17:])


def test_the_permutation_switches_on_at_its_step_with_its_own_seed():
    env = PermuteFeatures(gym.make("Pendulum-v1"), at=5, seed=1)
    same = PermuteFeatures(gym.make("Pendulum-v1"), at=5, seed=1)
    plain = gym.make("Pendulum-v1")
    np.testing.assert_array_equal(env.order, same.order)  # the permutation does not depend on the run's seed
    assert sorted(env.order) == [0, 1, 2] and list(env.order) != [0, 1, 2]
    a, b = plain.reset(seed=0)[0], env.reset(seed=0)[0]
    for step in range(1, 9):
        action = np.array([0.5], dtype=np.float32)
        a, b = plain.step(action)[0], env.step(action)[0]
        np.testing.assert_array_equal(b, a[env.order] if step >= 5 else a)
    # an evaluation env follows its training env's step count, not its own
    venv = make_env("Pendulum", seed=0, wrappers={"permute_at": 100})
    sync_permutation(venv, 99, at=100)
    assert not venv.envs[0].active
    sync_permutation(venv, 100, at=100)
    assert venv.envs[0].active


def test_wrappers_need_a_flat_box_observation():
    class Image(gym.Env):
        observation_space = gym.spaces.Box(0, 1, (4, 4))
        action_space = gym.spaces.Box(-1, 1, (1,))

    with pytest.raises(WrapperError, match="flat Box observation"):
        wrap_env(Image(), "Image", {"noise_fraction": 0.5})
    with pytest.raises(WrapperError, match="flat Box observation"):
        PermuteFeatures(Image(), at=3)


def test_env_snapshots_carry_the_noise_generator_and_the_permutation():
    wrappers = {"noise_fraction": 0.75, "noise_kind": "normal", "permute_at": 30, "permute_seed": 2}
    venv = make_env("Pendulum", seed=0, wrappers=wrappers)
    venv.reset()
    for _ in range(40):
        venv.step(np.zeros((1, 1), dtype=np.float32))
    state = get_env_state(venv)
    ahead = [venv.step(np.zeros((1, 1), dtype=np.float32))[0] for _ in range(5)]
    fresh = make_env("Pendulum", seed=0, wrappers=wrappers)
    set_env_state(fresh, state)
    assert fresh.envs[0].active and fresh.envs[0].steps == 40
    again = [fresh.step(np.zeros((1, 1), dtype=np.float32))[0] for _ in range(5)]
    for x, y in zip(ahead, again):
        np.testing.assert_array_equal(x, y)


NOISY = ["--set", "noise_fraction=0.75", "--set", "noise_kind=matched", "--set", "permute_at=250"]
SMALL_BUFFER = ["--set", "buffer_size=1000"]  # holds every step of these runs; keeps their checkpoints small


@pytest.mark.slow
def test_a_noisy_permuted_run_resumes_as_if_never_stopped(tmp_path, capsys):
    argv = ["--algo", "sac", "--env", "Pendulum", *NOISY, "--set", "checkpoint_freq=150", "--save-replay-buffer",
            *SMALL_BUFFER, *TINY, "--n-timesteps", "500", "--eval-freq", "100", "--eval-episodes", "1",
            "--set", "normalize=true"]
    code, _, err = run_cli(train, [*argv, "--run-dir", tmp_path / "a"], capsys)
    assert code == 0, err
    with pytest.raises(KeyboardInterrupt):  # after the permutation switched on, from a checkpoint before it
        train.train(train.build_parser().parse_args([str(a) for a in [*argv, "--run-dir", tmp_path / "b"]]),
                    extra_callbacks=[Crash(330)])
    code, _, err = run_cli(train, ["--resume", tmp_path / "b", "--no-progress"], capsys)
    assert code == 0 and "warning" not in err, err
    a, b = load_run_model(tmp_path / "a"), load_run_model(tmp_path / "b")
    assert a.observation_space.shape == (12,)  # 3 real features, 9 of noise
    assert_same_policy(a, b)
    # the evaluation env's noise, episodes and permutation resume where they stood (after it had evaluated)
    assert_same_evaluations(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_a_checkpoint_from_before_evaluation_env_state_resumes_and_says_so(tmp_path, capsys):
    """Checkpoints written before the evaluation env's state was kept still resume (the policy exactly); the run
    warns that its later evaluations start from a fresh evaluation env."""
    import hashlib
    import json

    run = tmp_path / "old"
    argv = ["--algo", "sac", "--env", "Pendulum", "--set", "checkpoint_freq=150", "--save-replay-buffer",
            *SMALL_BUFFER, *TINY, "--n-timesteps", "400", "--eval-freq", "100", "--eval-episodes", "1", "--run-dir", run]
    with pytest.raises(KeyboardInterrupt):
        train.train(train.build_parser().parse_args([str(a) for a in argv]), extra_callbacks=[Crash(330)])
    [ckpt] = (run / "checkpoints").iterdir()
    state = json.loads((ckpt / "state.json").read_text())
    assert state.pop("eval_env") is not None  # evaluations had run: the snapshot holds their env
    (ckpt / "state.json").write_text(json.dumps(state))  # as an older version wrote it
    manifest = json.loads((ckpt / "manifest.json").read_text())
    data = (ckpt / "state.json").read_bytes()
    manifest["files"]["state.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(train, ["--resume", run, "--no-progress"], capsys)
    assert code == 0, err
    assert "predates evaluation-env state, so the evaluations from step 300 on start from a fresh" in err
    assert [r["timesteps"] for r in csv.DictReader(open(run / "evaluations.csv"))] == ["100", "200", "300", "400"]
    # benchmarks/compare_runs.py against the same run uninterrupted: the same policy, the same rows up to the
    # resume; the one after it was evaluated on other episodes
    (tmp_path / "old.log").write_text(err)
    code, _, err = run_cli(train, [*argv[:-1], tmp_path / "new"], capsys)
    assert code == 0, err
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"
    out = subprocess.run([sys.executable, path, run, tmp_path / "new", "--log", tmp_path / "old.log"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "final policy: equal in all" in out.stdout and "resumed at 300 steps" in out.stdout
    assert out.stdout.count("(before the resume): equal in all") == 3
    assert "400 steps (after the resume): differ in return_mean" in out.stdout


@pytest.mark.parametrize("sets, needle", [
    (["noise_fraction=1.0"], "noise_fraction must be in [0, 1), got 1.0"),
    (["noise_kind=laplace"], "noise_kind must be one of normal, uniform, matched, got 'laplace'"),
    (["permute_at=900"], "permute_at must be in [0, n_timesteps=400] (0: never), got 900"),
])
def test_bad_wrapper_settings_exit_2_with_one_line_and_nothing_on_disk(sets, needle, tmp_path, capsys):
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", tmp_path / "r", *TINY]
    for item in sets:
        argv += ["--set", item]
    code, _, err = run_cli(train, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_input_importance_is_the_strength_and_count_of_each_inputs_connections():
    from stable_baselines3 import SAC

    from sparse_rl import SparseSACPolicy
    from sparse_rl.features import input_importance

    model = SAC(SparseSACPolicy, "Pendulum-v1", policy_kwargs=dict(sparsity=0.8, net_arch=[16, 16]), seed=0,
                learning_starts=50)
    model.learn(100)
    importance = input_importance(model.policy)
    first = model.policy.actor.latent_pi[0]
    w, m = first.weight.detach(), first.mask
    np.testing.assert_allclose(importance["actor"]["strength"], (w.abs() * m).sum(0).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(importance["actor"]["connections"], m.sum(0).numpy())
    assert len(importance["critic"]["strength"]) == 4  # 3 observation features and the action
    masks = [q[0].mask for q in model.policy.critic.q_networks]
    np.testing.assert_array_equal(importance["critic"]["connections"], sum(mk.sum(0) for mk in masks).numpy())
    dense = SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[16, 16]), seed=0)
    assert input_importance(dense.policy)["actor"]["connections"].tolist() == [16, 16, 16]


def test_a_noisy_run_records_its_inputs_and_the_features_command_ranks_them(tmp_path, capsys):
    import csv

    from sparse_rl import features

    run = tmp_path / "run"
    # two evaluation episodes of 200 steps each: the evaluation env's own 400 steps must not switch it on
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", run, *TINY, *NOISY, "--set", "permute_at=300"]
    assert run_cli(train, argv, capsys)[0] == 0
    rows = list(csv.DictReader(open(run / "evaluations.csv")))
    table = features.read_features(run / "features.csv")
    assert sorted(table) == [200, 400] and [int(r["timesteps"]) for r in rows] == [200, 400]
    for row in rows:
        at = table[int(row["timesteps"])]
        assert len(at["actor"]) == 12 and len(at["critic"]) == 13
        names = [r["name"] for r in at["actor"]]
        assert sorted(names) == sorted([f"obs[{i}]" for i in range(3)] + [f"noise[{j}]" for j in range(9)])
        for net in ("actor", "critic"):
            real = sum(r["connections"] for r in at[net] if r["name"].startswith("obs["))
            noise = sum(r["connections"] for r in at[net] if r["name"].startswith("noise["))
            assert float(row[f"{net}_real_input_fraction"]) == pytest.approx(real / (real + noise))
    # after the permutation (step 300) an input position reads another feature, and the names say which
    assert [r["name"] for r in table[200]["actor"]][:3] == ["obs[0]", "obs[1]", "obs[2]"]
    assert [r["name"] for r in table[400]["actor"]][:3] != ["obs[0]", "obs[1]", "obs[2]"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run / "tb").rglob("events.out.tfevents*"))), size_guidance={"histograms": 0})
    events.Reload()
    assert {"features/actor_strength", "features/critic_connections"} <= set(events.Tags()["histograms"])
    assert "eval/actor_real_input_fraction" in events.Tags()["scalars"]
    code, out, err = run_cli(features, [run, "--top", "3", "--plot", tmp_path / "f.png"], capsys)
    assert code == 0, err
    assert "3 real and 9 noise" in out and "real-feature connection fraction" in out and out.count("strength ") == 6
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    (run / "features.csv").unlink()
    code, _, err = run_cli(features, [run], capsys)
    assert code == 2 and err.count("\n") == 1 and "has no features.csv" in err


def test_a_plain_run_writes_no_optional_columns():
    from sparse_rl.eval_callback import EVAL_FIELDS, OPTIONAL_FIELDS

    assert not set(OPTIONAL_FIELDS) & set(EVAL_FIELDS)


def test_the_anf_preset_makes_the_input_layers_alone_sparse_and_evolving(tmp_path, capsys):
    run = tmp_path / "anf"
    argv = ["--algo", "td3", "--env", "Pendulum", "--preset", "anf", "--run-dir", run, *TINY, "--set", "noise_fraction=0.75"]
    assert run_cli(train, argv, capsys)[0] == 0
    model = load_run_model(run)
    for name, ctrl in model.policy.topology_controllers().items():
        densities = [layer.density for layer in ctrl.layers]
        first = [layer.in_features in (12, 13) for layer in ctrl.layers]  # 3 real + 9 noise (+ the action)
        assert [d for d, f in zip(densities, first) if f] == pytest.approx([0.2] * sum(first), abs=1e-3), name
        assert all(d == 1.0 for d, f in zip(densities, first) if not f), name
        assert ctrl.n_updates > 0  # SET every 25 steps (TINY) moved the input connections
    code, _, err = run_cli(train, ["--algo", "sac", "--env", "Pendulum", "--preset", "anf", "--sparsity", "0.9",
                                   "--run-dir", tmp_path / "bad", *TINY], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot be combined with sparsity" in err
