"""What SB3 and code written for it do with a policy, done to ours: random state_dicts, old files, wiring."""

from __future__ import annotations

import copy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC, TD3

from sparse_rl import SparseSACPolicy, SparseTD3Policy
from sparse_rl.sparse import MaskedLinear

DATA = Path(__file__).parent / "data"
ALGOS = {"sac": (SAC, SparseSACPolicy), "td3": (TD3, SparseTD3Policy)}


def _model(algo: str, backend: str = "sparse", **kwargs):
    cls, policy = ALGOS[algo]
    kwargs = {"net_arch": [32, 32], "sparsity": 0.5, "topology": "rigl", "update_interval": 20, "backend": backend, **kwargs}
    return cls(policy, "Pendulum-v1", seed=0, learning_starts=30, batch_size=16, policy_kwargs=kwargs, device="cpu")


@pytest.mark.parametrize("algo", ["sac", "td3"])
@pytest.mark.parametrize("backend", ["sparse", "dense"])
def test_state_dict_takes_rand_like_as_sb3_tests_do(algo, backend, tmp_path):
    """SB3's test_save_load: every state_dict entry replaced by ``th.rand_like`` of it, loaded, saved, loaded."""
    model = _model(algo, backend)
    model.learn(60)
    params = copy.deepcopy(model.policy.state_dict())
    assert all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in params.values())
    model.policy.load_state_dict({k: torch.rand_like(v) for k, v in params.items()})
    new = model.policy.state_dict()
    assert all(not torch.allclose(params[k], new[k]) for k in params)
    for layer in model.policy.modules():
        if isinstance(layer, MaskedLinear):  # the invariant holds: absent weights are exactly zero
            assert layer.mask.dtype == torch.bool and torch.all(layer.weight[~layer.mask] == 0)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(4, 3)).astype(np.float32)
    action = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "m")
    loaded = ALGOS[algo][0].load(tmp_path / "m", env=model.get_env(), device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)
    loaded.learn(40)  # and it trains on


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_masks_save_as_floats_and_load_as_the_same_topology(algo):
    model = _model(algo)
    model.learn(60)
    saved = model.policy.state_dict()
    masks = {k: v for k, v in saved.items() if k.endswith(".mask")}
    assert masks and all(v.dtype == torch.float32 and set(v.unique().tolist()) <= {0.0, 1.0} for v in masks.values())
    other = _model(algo)
    other.policy.load_state_dict({k: v.bool() if k in masks else v for k, v in saved.items()})  # booleans load too
    for a, b in zip(model.policy.modules(), other.policy.modules()):
        if isinstance(a, MaskedLinear):
            assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_models_saved_by_0_1_0_load_and_act_as_they_did(algo):
    """Files saved when masks were boolean and the topology state sat in the policy's state_dict."""
    expected = np.load(DATA / "legacy-0.1.0-expected.npz")
    model = ALGOS[algo][0].load(DATA / f"legacy-{algo}-0.1.0.zip", env=gym.make("Pendulum-v1"), device="cpu")
    np.testing.assert_array_equal(model.predict(expected["obs"], deterministic=True)[0], expected[f"{algo}_actions"])
    steps = [c.step for c in model.policy.topology_controllers().values()]
    assert steps == expected[f"{algo}_steps"].tolist()  # the controllers' counters came back
    model.learn(30)


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_get_and_set_parameters_carry_the_topology_state(algo):
    model = _model(algo)
    model.learn(100)
    params = model.get_parameters()
    other = _model(algo, update_interval=20)
    other.set_parameters(params, exact_match=True)
    for name, ctrl in model.policy.topology_controllers().items():
        theirs = other.policy.topology_controllers()[name]
        assert (theirs.step, theirs.n_updates) == (ctrl.step, ctrl.n_updates) and ctrl.n_updates > 0
    obs = np.zeros((1, 3), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], other.predict(obs, deterministic=True)[0])


def test_every_input_and_unit_is_on_a_path_at_initialisation():
    """SB3's test_td3_train_with_batch_norm: a [16, 16] TD3 at 90% had no path from its inputs; now it warns,
    connects every unit, and the features extractor's BatchNorm trains."""
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class BatchNormExtractor(BaseFeaturesExtractor):
        def __init__(self, observation_space):
            super().__init__(observation_space, observation_space.shape[0])
            self.norm = torch.nn.BatchNorm1d(observation_space.shape[0])

        def forward(self, obs):
            return self.norm(obs)

    with pytest.warns(UserWarning, match=r"sparsity 0.9 is too high.*using sparsity 0.85"):
        model = TD3(SparseTD3Policy, "Pendulum-v1", learning_starts=0, seed=1, device="cpu",
                    policy_kwargs=dict(net_arch=[16, 16], features_extractor_class=BatchNormExtractor))
    for name in ("actor", "critic"):
        assert model.policy.unconnected(name) == {"unconnected_inputs": 0, "unconnected_units": 0}
    bias = model.actor.features_extractor.norm.bias.detach().clone()
    model.learn(200)
    assert not torch.allclose(bias, model.actor.features_extractor.norm.bias)


def test_connect_mask_repairs_only_what_is_unconnected():
    from sparse_rl.sparse.networks import connect_mask, random_mask, unconnected_units

    generator = torch.Generator().manual_seed(0)
    for shape, nnz in [((16, 3), 3), ((16, 16), 16), ((1, 16), 16), ((16, 16), 20), ((5, 40), 40), ((40, 5), 41)]:
        for _ in range(50):
            mask = random_mask(shape, nnz, generator)
            fixed = connect_mask(mask)
            assert int(fixed.sum()) == nnz and unconnected_units(fixed)[1] == 0  # every input unit feeds an output
            assert torch.equal(fixed, mask) == (unconnected_units(mask)[1] == 0)
            if unconnected_units(mask)[1] == 0:
                assert fixed is mask  # a connected draw is kept as it is: no extra random numbers, same masks
    with pytest.raises(ValueError, match="at least 16 connections"):
        connect_mask(random_mask((3, 16), 10, generator))


def test_distribution_floors_hold_and_bind_only_when_needed():
    from sparse_rl.sparse.distributions import BudgetTooSmall, connected_nonzeros, layer_nonzeros

    cheetah = [(256, 17), (256, 256), (6, 256), (6, 256)]
    assert connected_nonzeros(cheetah, 0.1, "erk") == (layer_nonzeros(cheetah, 0.1, "erk"), 0.1)  # unchanged
    small = [(16, 3), (16, 16), (1, 16)]
    assert layer_nonzeros(small, 0.1, "erk") == [9, 15, 8]
    with pytest.raises(BudgetTooSmall, match="fewer than the 48"):
        layer_nonzeros(small, 0.1, "erk", min_counts=[16, 16, 16])
    assert connected_nonzeros(small, 0.1, "erk") == ([16, 16, 16], 0.15)
    assert layer_nonzeros(small, 0.2, "erk", min_counts=[16, 16, 16]) == [18, 30, 16]  # floors bind only when hit
