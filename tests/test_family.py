"""The sparse policies of the SB3 family beyond SAC/TD3: each trains sparse, evolves, saves, loads and reports."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import TQC, CrossQ
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3, HerReplayBuffer

from sparse_rl import (
    SparseActorCriticPolicy,
    SparseCnnDQNPolicy,
    SparseCrossQPolicy,
    SparseDQNPolicy,
    SparseMultiInputSACPolicy,
    SparseMultiInputTD3Policy,
    SparseSACPolicy,
    SparseTD3Policy,
    SparseTQCPolicy,
    install_aliases,
    sparsity_report,
)
from sparse_rl.agents.extractors import MinAtarCNN
from sparse_rl.sparse import MaskedConv2d, SparseLinear


def _minatar() -> str:
    import minatar.gym

    if "MinAtar/Breakout-v1" not in gym.registry:
        minatar.gym.register_envs()
    return "MinAtar/Breakout-v1"


def _point_maze() -> str:
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    return "PointMaze_UMaze-v3"


OFF = dict(learning_starts=50, batch_size=32, buffer_size=2000)
CASES = {
    "sac-gsde": (SAC, SparseSACPolicy, "Pendulum-v1", dict(use_sde=True, **OFF)),
    "ddpg": (DDPG, SparseTD3Policy, "Pendulum-v1", OFF),
    "tqc": (TQC, SparseTQCPolicy, "Pendulum-v1", dict(top_quantiles_to_drop_per_net=2, **OFF)),
    "crossq": (CrossQ, SparseCrossQPolicy, "Pendulum-v1", OFF),
    "ppo": (PPO, SparseActorCriticPolicy, "Pendulum-v1", dict(n_steps=64, batch_size=32, n_epochs=2)),
    "a2c": (A2C, SparseActorCriticPolicy, "CartPole-v1", dict(n_steps=8)),
    "dqn": (DQN, SparseDQNPolicy, "CartPole-v1", dict(target_update_interval=50, **OFF)),
    "dqn-cnn": (DQN, SparseCnnDQNPolicy, "minatar", dict(target_update_interval=50, **OFF)),
}


def _build(case: str, backend: str = "sparse", **policy_kwargs):
    algo, policy, env, kwargs = CASES[case]
    extra: dict = {"net_arch": [64, 64]}
    if env == "minatar":
        env, extra = _minatar(), {"net_arch": [64], "features_extractor_class": MinAtarCNN}
    policy_kwargs = {"update_interval": 10, "drop_schedule": "constant", "backend": backend, **extra, **policy_kwargs}
    return algo(policy, env, seed=0, device="cpu", policy_kwargs=policy_kwargs, **kwargs)


def _check_invariants(model) -> None:
    policy = model.policy
    for name, ctrl in policy.topology_controllers().items():
        assert ctrl.n_updates > 0, f"{name} never changed its topology"
        optimizer = policy._optimizer_of(name)
        for layer in ctrl.layers:
            assert torch.all(layer.weight[~layer.mask] == 0)
            if layer.storage == "dense":
                for slot in optimizer.state[layer.weight].values():
                    if isinstance(slot, torch.Tensor) and slot.shape == layer.mask.shape:
                        assert torch.all(slot[~layer.mask] == 0)  # Adam never remembers an absent connection
        for target in ctrl._targets:
            for layer, copy in zip(ctrl.layers, target):
                assert torch.equal(layer.mask, copy.mask)


@pytest.mark.parametrize("case", list(CASES))
def test_each_algorithm_trains_sparse_evolves_and_round_trips(case, tmp_path):
    model = _build(case)
    model.learn(300)
    report = sparsity_report(model)
    assert set(report) == ({"q_net"} if case.startswith("dqn") else {"actor", "critic"})
    assert all(abs(stats["density"] - 0.1) < 0.01 for stats in report.values())
    _check_invariants(model)
    obs = model.observation_space.sample()[None]
    action = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "m")
    loaded = type(model).load(tmp_path / "m", env=model.get_env(), device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)
    assert sparsity_report(loaded) == report
    loaded.learn(100, reset_num_timesteps=False)  # and it trains on from the file


def test_dqn_cnn_masks_its_convolutions_erk_counting_kernels():
    model = _build("dqn-cnn", backend="sparse")
    layers = model.policy.q_net_topology.layers
    assert isinstance(layers[0], MaskedConv2d) and layers[0].storage == "dense"  # convs keep dense storage
    assert all(isinstance(layer, SparseLinear) for layer in layers[1:-1])
    conv = layers[0]
    assert conv.mask.shape == (16, 4, 3, 3) and 0 < conv.density < 1
    # ERK: a layer's density is proportional to sum(shape) / prod(shape), kernel sizes included
    assert conv.density > layers[1].density


def test_ppo_networks_share_one_optimizer_each_with_its_own_topology():
    model = _build("ppo", backend="sparse")
    model.learn(256)
    controllers = model.policy.topology_controllers()
    assert set(controllers) == {"actor", "critic"}
    assert {id(model.policy._optimizer_of(name)) for name in controllers} == {id(model.policy.optimizer)}
    state = model.policy.optimizer.state_dict()["sparse_rl_topology"]
    assert set(state) == {"actor", "critic"}
    assert any(isinstance(layer, SparseLinear) for layer in controllers["actor"].layers)  # CSR storage swapped in place
    assert model.policy.action_net is controllers["actor"].layers[-1]
    assert model.policy.value_net is controllers["critic"].layers[-1]
    params = model.get_parameters()
    other = _build("ppo", backend="sparse")
    other.set_parameters(params, exact_match=True)
    for name, ctrl in controllers.items():
        theirs = other.policy.topology_controllers()[name]
        assert (theirs.step, theirs.n_updates) == (ctrl.step, ctrl.n_updates)
        assert all(torch.equal(a.mask, b.mask) for a, b in zip(ctrl.layers, theirs.layers))


@pytest.mark.parametrize("algo, policy", [(SAC, SparseMultiInputSACPolicy), (TD3, SparseMultiInputTD3Policy)])
def test_dict_observations_with_her_on_a_goal_conditioned_mujoco_task(algo, policy, tmp_path):
    env = gym.make(_point_maze(), max_episode_steps=50)
    model = algo(policy, env, replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs=dict(n_sampled_goal=4),
                 learning_starts=50, batch_size=32, seed=0, device="cpu",
                 policy_kwargs=dict(net_arch=[32, 32], update_interval=10, drop_schedule="constant", backend="sparse"))
    model.learn(150)
    _check_invariants(model)
    assert all(abs(s["density"] - 0.1) < 0.01 for s in sparsity_report(model).values())
    obs = {k: v[None] for k, v in env.observation_space.sample().items()}
    action = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "her")
    loaded = algo.load(tmp_path / "her", env=env, device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)


@pytest.mark.parametrize("case, topology, needle", [
    ("ppo", "grasp", "scores connections with the algorithm's loss"),
    ("dqn", "rigl", "rewires dormant units"),
    ("crossq", "grasp", "SparseCrossQPolicy does not support"),
])
def test_methods_that_need_replay_losses_are_refused_where_there_are_none(case, topology, needle):
    kwargs = {"topology": topology}
    if topology == "rigl":
        kwargs["topology_kwargs"] = {"rewire_dormant": True}
    with pytest.raises(ValueError, match=needle):
        _build(case, **kwargs)


def test_install_aliases_makes_sb3_names_sparse_and_restores_them():
    restore = install_aliases()
    try:
        assert SAC("MlpPolicy", "Pendulum-v1", device="cpu").policy.__class__ is SparseSACPolicy
        assert DQN("MlpPolicy", "CartPole-v1", device="cpu").policy.__class__ is SparseDQNPolicy
        assert PPO("MlpPolicy", "CartPole-v1", device="cpu").policy.__class__ is SparseActorCriticPolicy
        assert TQC("MlpPolicy", "Pendulum-v1", device="cpu").policy.__class__ is SparseTQCPolicy
    finally:
        restore()
    assert SAC("MlpPolicy", "Pendulum-v1", device="cpu").policy.__class__ is not SparseSACPolicy


@pytest.mark.parametrize("algo, env, keys", [(PPO, "CartPole-v1", {"actor", "critic"}), (DQN, "CartPole-v1", {"q_net"}),
                                             (CrossQ, "Pendulum-v1", {"actor", "critic"})])
def test_sparsity_report_takes_dense_baselines_of_every_algorithm(algo, env, keys):
    report = sparsity_report(algo("MlpPolicy", env, device="cpu"))
    assert set(report) == keys and all(s["density"] == 1.0 for s in report.values())
