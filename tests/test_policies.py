import random

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sparse_rl import SparseSACPolicy, SparseTD3Policy, sparsity_report
from sparse_rl.sparse import MaskedLinear, masked_layers

SMALL = dict(net_arch=[64, 64])
ALGOS = [(SAC, SparseSACPolicy), (TD3, SparseTD3Policy)]


def small_model(algo, policy, env="Pendulum-v1", seed=0, policy_kwargs=None, **kwargs):
    pk = {**SMALL, "sparsity": 0.8, "update_interval": 20, **(policy_kwargs or {})}
    kwargs.setdefault("learning_starts", 50)
    kwargs.setdefault("batch_size", 32)
    kwargs.setdefault("buffer_size", 10_000)  # holds every step these tests take; a saved buffer stays small
    return algo(policy, env, policy_kwargs=pk, seed=seed, **kwargs)


@pytest.mark.parametrize(
    "kwargs, err, needle",
    [
        (dict(sparsity=1.0), ValueError, "1.0"),
        (dict(sparsity=-0.1), ValueError, "-0.1"),
        (dict(actor_sparsity=1.2), ValueError, "1.2"),
        (dict(critic_sparsity="0.5"), TypeError, "'0.5'"),
        (dict(topology="rigel"), ValueError, "'rigel'; known: .*rigl, set, .*static"),
        (dict(distribution="gauss"), ValueError, "'gauss'.*er, erk, uniform"),
        (dict(drop_schedule="linear"), ValueError, "'linear'.*constant, cosine"),
        (dict(update_interval=0), ValueError, "update_interval.*0"),
        (dict(drop_fraction=0.0), ValueError, "drop_fraction.*0.0"),
        (dict(drop_fraction=1.01), ValueError, "drop_fraction.*1.01"),
        (dict(end_fraction=0), ValueError, "end_fraction"),
        (dict(sparsityy=0.9), TypeError, "'sparsityy'.*did you mean 'sparsity'"),
        (dict(actor_sparsity=0.99, dense_first_layer=True, dense_last_layer=True), ValueError, "actor.*kept dense"),
    ],
)
@pytest.mark.parametrize("algo, policy", ALGOS)
def test_bad_policy_kwargs_fail_at_construction(algo, policy, kwargs, err, needle):
    with pytest.raises(err, match=needle):
        algo(policy, "Pendulum-v1", policy_kwargs=dict(kwargs))


@pytest.mark.parametrize("algo, policy", ALGOS)
def test_separate_actor_critic_sparsity_and_dense_layers(algo, policy):
    model = algo(
        policy,
        "Pendulum-v1",
        policy_kwargs=dict(actor_sparsity=0.9, critic_sparsity=0.7, dense_last_layer=True, distribution="uniform"),
    )
    report = sparsity_report(model, per_layer=True)
    assert report["actor"]["density"] == pytest.approx(0.1, abs=1e-4)
    assert report["critic"]["density"] == pytest.approx(0.3, abs=1e-4)
    assert report["critic"]["layers"][2]["density"] == 1.0  # q-net output layer kept dense
    for name in ("actor", "critic"):
        assert all(isinstance(m, MaskedLinear) for m in model.policy.topology_controllers()[name].layers)


@pytest.mark.parametrize("algo, policy", ALGOS)
@pytest.mark.parametrize("rewire", [False, True])
def test_target_networks_follow_online_masks(algo, policy, rewire):
    model = small_model(
        algo,
        policy,
        policy_kwargs=dict(
            update_interval=10, drop_schedule="constant", end_fraction=1.0,
            topology_kwargs=dict(rewire_dormant=rewire, dormant_tau=0.3),
        ),
    )
    model.learn(400)
    pairs = [(model.policy.critic, model.policy.critic_target)]
    if algo is TD3:
        pairs.append((model.policy.actor, model.policy.actor_target))
    for online, target in pairs:
        for a, b in zip(masked_layers(online), masked_layers(target)):
            assert torch.equal(a.mask, b.mask)
            assert torch.all(b.weight[~a.mask] == 0)
            assert torch.all(a.weight[~a.mask] == 0)
            assert int((b.weight != 0).sum()) <= a.nnz
    report = sparsity_report(model)
    assert report["critic"]["topology_updates"] > 10
    assert report["critic"]["itop_rate"] > report["critic"]["density"]
    assert report["critic"]["density"] == pytest.approx(0.2, abs=1e-3)
    assert (report["critic"]["last_rewired"] > 0) == rewire


@pytest.mark.parametrize("algo, policy", ALGOS)
def test_metrics_reach_the_logger(algo, policy, tmp_path):
    model = small_model(algo, policy)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(300, log_interval=1)
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    for net in ("actor", "critic"):
        for key in ("density", "itop_rate", "last_dropped", "last_grown", "flops", "dense_flops"):
            assert f"sparsity/{net}_{key}" in header


@pytest.mark.parametrize("algo, policy", ALGOS)
def test_save_load_restores_masks_state_and_predictions(algo, policy, tmp_path):
    model = small_model(algo, policy, policy_kwargs=dict(topology="set"))
    model.learn(300)
    model.save(tmp_path / "m")
    loaded = algo.load(tmp_path / "m")
    obs = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    for a, b in zip(model.policy.modules(), loaded.policy.modules()):
        if isinstance(a, MaskedLinear):
            assert torch.equal(a.mask, b.mask) and torch.equal(a.explored, b.explored)
    for name, ctrl in model.policy.topology_controllers().items():
        other = loaded.policy.topology_controllers()[name]
        assert ctrl.training_state().keys() == other.training_state().keys()
        for k, v in ctrl.training_state().items():
            w = other.training_state()[k]
            if k == "initial_masks":
                assert all(torch.equal(x, y) for x, y in zip(v, w))
            else:
                assert torch.equal(v, w) if torch.is_tensor(v) else v == w, k
    assert sparsity_report(model) == sparsity_report(loaded)


def _rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng_states(states):
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


@pytest.mark.parametrize("algo, policy", ALGOS)
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_training_after_load_equals_uninterrupted(algo, policy, schedule, tmp_path):
    """Continuing after save/load matches continuing in memory, step for step.

    SB3 itself re-seeds the global RNGs on load, so the test carries them over by hand: what is under
    test is that masks, optimizer state, counters and the topology RNG come back exactly.
    """
    kwargs = dict(topology="set" if algo is TD3 else "rigl", drop_schedule=schedule, end_fraction=0.6, update_interval=15)

    def fresh():
        env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
        return small_model(algo, policy, env=env, policy_kwargs=kwargs, gradient_steps=2)

    reference = fresh()
    reference.learn(200)
    reference.learn(200, reset_num_timesteps=False)

    model = fresh()
    model.learn(200)
    model.save(tmp_path / "m")
    model.save_replay_buffer(tmp_path / "buf")
    states = _rng_states()
    resumed = algo.load(tmp_path / "m", env=model.get_env(), force_reset=False)
    resumed.load_replay_buffer(tmp_path / "buf")
    _set_rng_states(states)
    resumed.learn(200, reset_num_timesteps=False)

    ref_sd, res_sd = reference.policy.state_dict(), resumed.policy.state_dict()
    assert ref_sd.keys() == res_sd.keys()
    for key, value in ref_sd.items():
        if torch.is_tensor(value):
            assert torch.equal(value, res_sd[key]), key
    ref_report, res_report = sparsity_report(reference), sparsity_report(resumed)
    assert ref_report == res_report
    # updates stop at end_fraction of the 400 total steps, also across the load
    assert 0 < ref_report["critic"]["topology_updates"] < ref_report["critic"]["optimizer_steps"] // 15


@pytest.mark.parametrize("algo, policy", ALGOS)
@pytest.mark.parametrize("env_id", ["Pendulum-v1", "HalfCheetah-v5"])
def test_smoke(algo, policy, env_id):
    model = algo(
        policy,
        env_id,
        policy_kwargs=dict(sparsity=0.9, update_interval=25),
        learning_starts=50,
        batch_size=64,
        train_freq=1,
        seed=1,
    )
    model.learn(300)
    report = sparsity_report(model)
    for net in ("actor", "critic"):
        assert report[net]["density"] == pytest.approx(0.1, abs=1e-4)
        assert report[net]["flops"] < 0.2 * report[net]["dense_flops"]


def test_td3_actor_counts_its_own_steps():
    model = small_model(TD3, SparseTD3Policy, policy_delay=2, learning_starts=100)
    model.learn(300)
    report = sparsity_report(model)
    assert report["critic"]["optimizer_steps"] == 200
    assert report["actor"]["optimizer_steps"] == 100


def test_dense_model_report():
    report = sparsity_report(SAC("MlpPolicy", "Pendulum-v1"))
    assert report["actor"]["density"] == 1.0 and report["critic"]["itop_rate"] == 1.0
    with pytest.raises(TypeError, match="SAC, TD3, DDPG"):
        sparsity_report(object())


@pytest.mark.slow
def test_sparse_sac_learns_pendulum():
    """At 80% sparsity SAC must swing Pendulum up; a random or broken learner scores about -1200."""
    from stable_baselines3.common.evaluation import evaluate_policy

    model = SAC(
        SparseSACPolicy,
        "Pendulum-v1",
        policy_kwargs=dict(sparsity=0.8, topology="rigl", update_interval=250, net_arch=[64, 64]),
        learning_starts=500,
        learning_rate=3e-3,
        batch_size=128,
        seed=0,
    )
    model.learn(5000)
    mean, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=10, deterministic=True)
    assert sparsity_report(model)["actor"]["density"] == pytest.approx(0.2, abs=1e-3)
    assert mean > -400, mean


@pytest.mark.parametrize("algo, policy", ALGOS)
def test_diagnostics_on_replay_data_leave_rngs_untouched(algo, policy):
    from sparse_rl.agents.model_diagnostics import model_diagnostics

    model = small_model(algo, policy)
    assert model_diagnostics(model) == {}  # empty buffer
    model.learn(300)
    before = _rng_states()
    d = model_diagnostics(model, batch_size=64)
    after = _rng_states()
    assert torch.equal(before[0], after[0]) and before[2] == after[2]
    assert all(np.array_equal(a, b) for a, b in zip(before[1][1:2], after[1][1:2]))
    assert 0.0 <= d["actor_dormant"] <= 1.0 and 0.0 <= d["critic_dormant"] <= 1.0
    assert d["critic_grad_snr"] > 0
    assert all(p.grad is None for p in model.policy.critic.parameters())


def test_the_user_snippet(tmp_path):
    """The README/issue snippet, with smaller budgets."""
    model = SAC(
        SparseSACPolicy,
        "HalfCheetah-v5",
        policy_kwargs=dict(sparsity=0.9, topology="rigl"),
        seed=0,
        learning_starts=100,
        batch_size=64,
    )
    model.learn(400)
    report = sparsity_report(model)
    assert report["actor"]["density"] == pytest.approx(0.1, abs=1e-4)
    model.save(tmp_path / "cheetah")
    loaded = SAC.load(tmp_path / "cheetah")
    for (name, a), (_, b) in zip(model.policy.named_buffers(), loaded.policy.named_buffers()):
        if name.endswith("mask"):
            assert torch.equal(a, b), name
    td3 = TD3(
        SparseTD3Policy,
        "Hopper-v5",
        policy_kwargs=dict(actor_sparsity=0.9, critic_sparsity=0.8),
        learning_starts=100,
        batch_size=64,
    )
    td3.learn(300)
    td3_report = sparsity_report(td3)
    assert td3_report["actor"]["density"] == pytest.approx(0.1, abs=1e-4)
    assert td3_report["critic"]["density"] == pytest.approx(0.2, abs=1e-4)


def test_bare_use_without_an_algorithm_fails_at_the_first_step_with_a_clear_message():
    model = small_model(SAC, SparseSACPolicy, policy_kwargs=dict(update_interval=1000))
    policy = model.policy
    obs = torch.zeros(4, *model.observation_space.shape)
    actions = torch.zeros(4, *model.action_space.shape)
    loss = sum(q.sum() for q in policy.critic(obs, actions))
    policy.critic.optimizer.zero_grad()
    loss.backward()
    # a custom loop, outside SAC.train and with no bind(): the first optimizer step says what to do
    with pytest.raises(RuntimeError, match=r"cannot find the SB3 algorithm training it; call policy.bind\(model\)"):
        policy.critic.optimizer.step()
    policy.bind(model)
    policy.critic.optimizer.step()  # bound: fine


def test_the_cli_binds_policy_and_replay_buffer_explicitly():
    from sparse_rl.config import resolve_config
    from sparse_rl.envs import make_env
    from sparse_rl.models import build_model

    config = resolve_config("sac", "Pendulum-v1", "sparse_rl", {"n_steps": 3, "net_arch": [16, 16], "buffer_size": 1000})
    model = build_model("sac", config, make_env("Pendulum-v1", seed=0), seed=0)
    assert model.policy._model_ref() is model and model.replay_buffer._model_ref() is model
