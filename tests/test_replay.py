import pickle

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import SAC, TD3

from sparse_rl import SparseSACPolicy, SparseTD3Policy
from sparse_rl.agents.replay import NStepSoftReplayBuffer

OBS = spaces.Box(-10, 10, (2,), np.float32)
ACT = spaces.Box(-1, 1, (1,), np.float32)


def scripted(size=10, n_steps=3, delay=0, gamma=0.5, steps=7):
    """Rewards 1..steps; step 2 terminates an episode, step 4 is truncated by a time limit."""
    buf = NStepSoftReplayBuffer(size, OBS, ACT, n_steps=n_steps, n_step_delay=delay, gamma=gamma)
    for t in range(steps):
        done = t in (2, 4)
        info = {"TimeLimit.truncated": t == 4}
        obs = np.array([[t, 0]], np.float32)
        buf.add(obs, obs + 100, np.zeros((1, 1)), np.array([t + 1.0]), np.array([done]), [info])
    return buf


def sample(buf, inds):
    s = buf._get_samples(np.array(inds))
    return (
        s.rewards.squeeze(1).tolist(),
        s.dones.squeeze(1).tolist(),
        s.discounts.squeeze(1).tolist(),
        s.next_observations[:, 0],
    )


def test_nstep_returns_cut_at_termination_truncation_and_newest():
    rewards, dones, discounts, next_obs = sample(scripted(), [0, 1, 2, 3, 5, 6])
    # idx 0: 1 + .5*2 + .25*3 (ends: step 2 terminates)   idx 1: 2 + .5*3   idx 2: 3 (terminal itself)
    # idx 3: 4 + .5*5 (step 4 truncated: bootstrap, done 0)  idx 5: 6 + .5*7 (step 6 is the newest)  idx 6: 7
    assert rewards == [2.75, 3.5, 3.0, 6.5, 9.5, 7.0]
    assert dones == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert discounts == [0.125, 0.25, 0.5, 0.25, 0.25, 0.5]
    assert next_obs.tolist() == [102, 102, 102, 104, 106, 106]


def test_nstep_delay_and_wraparound():
    buf = scripted(delay=100)
    assert buf.active_n == 1
    assert sample(buf, [0])[0] == [1.0]
    buf = scripted(size=4, steps=7, delay=0)  # holds steps 3..6 at positions 3,0,1,2; pos = 3 (oldest)
    rewards, dones, discounts, _ = sample(buf, [3, 1, 2])
    # pos 3 = step 3: 4 + .5*5 (truncated at 4); pos 1 = step 5: 6 + .5*7 (newest at pos 2); pos 2 = step 6: 7
    assert rewards == [6.5, 9.5, 7.0]
    assert dones == [0.0, 0.0, 0.0]
    assert discounts == [0.25, 0.25, 0.5]


def test_sac_soft_terms_of_intermediate_states():
    model = SAC(SparseSACPolicy, "Pendulum-v1", ent_coef=0.5, policy_kwargs=dict(net_arch=[16]), seed=0)
    gamma = 0.5
    obs_space = spaces.Box(-10, 10, (3,), np.float32)
    buf = NStepSoftReplayBuffer(10, obs_space, model.action_space, n_steps=3, gamma=gamma)
    for t in range(7):
        obs = np.array([[np.cos(t), np.sin(t), 0.1 * t]], np.float32)
        buf.add(obs, obs, np.zeros((1, 1)), np.array([1.0]), np.array([t == 2]), [{"TimeLimit.truncated": False}])
    model.replay_buffer = buf
    buf.bind(model)
    inds = np.array([0, 1, 3, 5, 6])
    torch.manual_seed(1)
    rewards = buf._get_samples(inds).rewards.squeeze(1)
    # by hand: same random draws (same seed, same batched call), then the window and the discounts
    torch.manual_seed(1)
    idx = (inds[:, None] + np.arange(1, 3)) % 10
    with torch.no_grad():
        _, logp = model.actor.action_log_prob(torch.as_tensor(buf.observations[idx, 0].reshape(-1, 3)))
    logp = logp.reshape(5, 2)
    window = {0: 2, 1: 1, 3: 2, 5: 1, 6: 0}  # intermediate steps used: idx0 -> 1,2; idx1 -> 2; idx5 -> 6 (newest)
    base = {0: 1 + 0.5 + 0.25, 1: 1.5, 3: 1.75, 5: 1.5, 6: 1.0}
    for b, i in enumerate(inds):
        bonus = -0.5 * sum(gamma ** (k + 1) * float(logp[b, k]) for k in range(window[i]))
        assert rewards[b].item() == pytest.approx(base[i] + bonus, abs=1e-5)


@pytest.mark.parametrize("algo, policy", [(SAC, SparseSACPolicy), (TD3, SparseTD3Policy)])
def test_stock_algorithms_train_with_it_and_state_survives_pickle(algo, policy, tmp_path):
    model = algo(
        policy,
        "Pendulum-v1",
        policy_kwargs=dict(net_arch=[32, 32], update_interval=50),
        learning_starts=50,
        batch_size=32,
        replay_buffer_class=NStepSoftReplayBuffer,
        replay_buffer_kwargs=dict(n_steps=3, n_step_delay=100, gamma=0.99),
        seed=0,
    )
    model.learn(200)
    buf = model.replay_buffer
    assert buf.num_timesteps == 200 and buf.active_n == 3
    if algo is SAC:
        assert buf._model() is model  # found on the stack of SAC.train
    model.save_replay_buffer(tmp_path / "b")
    again = pickle.loads(pickle.dumps(buf))
    assert again.num_timesteps == 200 and again._model_ref is None
    np.testing.assert_array_equal(again.rewards, buf.rewards)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_steps"):
        NStepSoftReplayBuffer(10, OBS, ACT, n_steps=0)
    with pytest.raises(ValueError, match="n_step_delay"):
        NStepSoftReplayBuffer(10, OBS, ACT, n_step_delay=-1)


def test_dynamic_buffer_shrink_rule_on_a_scripted_sequence(tmp_path):
    from sparse_rl.agents.replay import DynamicReplayBuffer

    buf = DynamicReplayBuffer(
        100,
        OBS,
        ACT,
        check_interval=20,
        probe_size=10,
        mismatch_threshold=0.2,
        shrink_fraction=0.1,
        min_size=80,
        n_steps=1,
        gamma=0.99,
    )
    policy = {"action": 0.0}
    buf.set_policy_fn(lambda obs: np.full((len(obs), 1), policy["action"], np.float32))

    def add(t):
        obs = np.array([[t, 0]], np.float32)
        buf.add(obs, obs, np.zeros((1, 1)), np.array([float(t)]), np.array([False]), [{}])

    for t in range(100):  # fills the buffer; the policy never changes: mismatch 0, no shrink
        add(t)
    assert buf.full and buf.capacity == 100 and buf.last_mismatch == 0.0 and buf.shrinks == 0
    policy["action"] = 1.0  # now every stored mean action (0) is off by 1: mismatch 0.5 > 0.2
    for t in range(100, 120):
        add(t)
    # at t = 119 (120 adds): drop the oldest 10 of 100, capacity 100 -> 90
    assert buf.last_mismatch == pytest.approx(0.5) and buf.shrinks == 1 and buf.capacity == 90
    assert buf.full and buf.pos == 0
    assert sorted(buf.rewards[:90, 0].tolist()) == [float(t) for t in range(30, 120)]
    for t in range(120, 140):  # next check: 90 -> 81, keep the newest 81
        add(t)
    assert buf.capacity == 81 and buf.shrinks == 2
    assert sorted(buf.rewards[:81, 0].tolist()) == [float(t) for t in range(59, 140)]
    for t in range(140, 160):  # never below min_size=80
        add(t)
    assert buf.capacity == 80
    policy["action"] = 0.5  # mean actions stored since t=100 were 1 -> mismatch 0.125 < 0.2 ... but the
    for t in range(160, 200):  # oldest probe now holds mean action 1: 0.5*0.25 = 0.125, no shrink
        add(t)
    assert buf.capacity == 80 and buf.last_mismatch == pytest.approx(0.125)
    # state survives pickling (as save_replay_buffer does)
    again = pickle.loads(pickle.dumps(buf))
    assert again.capacity == 80 and again.shrinks == buf.shrinks and again._policy_fn is None
    np.testing.assert_array_equal(again.mean_actions[:80], buf.mean_actions[:80])
    assert again.sample(16).observations.shape == (16, 2)


def test_dynamic_buffer_with_stock_sac(tmp_path):
    from stable_baselines3.common.logger import configure

    from sparse_rl.agents.replay import DynamicReplayBuffer

    model = SAC(
        SparseSACPolicy,
        "Pendulum-v1",
        policy_kwargs=dict(net_arch=[32, 32]),
        learning_starts=50,
        batch_size=32,
        replay_buffer_class=DynamicReplayBuffer,
        seed=0,
        replay_buffer_kwargs=dict(check_interval=100, probe_size=64, mismatch_threshold=0.0, min_size=150),
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(300, log_interval=1)
    buf = model.replay_buffer
    assert buf.shrinks >= 1 and buf.capacity < 1_000_000 and buf.last_mismatch > 0
    # stored mean actions are the deterministic actions of the policy at collection time
    assert np.abs(buf.mean_actions[: buf.pos]).max() <= 1.0
    assert "replay/capacity" in (tmp_path / "progress.csv").read_text().splitlines()[0]
