"""Replay for non-stationary sparse training: delayed multi-step soft TD targets (RLx2).

:class:`NStepSoftReplayBuffer` is a drop-in ``replay_buffer_class`` for stock SB3 SAC and TD3. Its
samples carry n-step returns and ``discounts = gamma ** m`` (the number of steps actually used), which
``SAC.train``/``TD3.train`` use for the bootstrap. A window starts at the sampled transition and stops at
the first termination or time-limit truncation, and never runs past the newest transition:

    R = sum_{k<m} gamma^k r_{t+k}  -  alpha * sum_{0<k<m} gamma^k log pi(a~_k | s_{t+k}),   a~_k ~ pi(.|s_{t+k})

The second sum, the entropy bonus of the intermediate states, is SAC's soft return (RLx2's SAC variant;
SB3's own ``NStepReplayBuffer`` leaves it out); it uses the current actor and entropy coefficient at
sampling time, and is absent for TD3. ``dones`` is 1 only when the window ends in a termination, so a
truncated episode still bootstraps from its real final observation. Before ``n_step_delay`` env steps
(counted by the buffer's own ``add`` calls, so the count survives ``save_replay_buffer``) the buffer
returns ordinary 1-step samples.

Use it with no other change to SB3::

    SAC(SparseSACPolicy, env, replay_buffer_class=NStepSoftReplayBuffer,
        replay_buffer_kwargs=dict(n_steps=3, n_step_delay=100_000, gamma=0.99))

The SAC model whose entropy terms are needed is the one sampling the buffer: it is found on the call
stack of ``sample`` (the ``self`` of ``SAC.train`` whose ``replay_buffer`` is this buffer), as the sparse
policies find their algorithm; :meth:`NStepSoftReplayBuffer.bind` makes the link explicit.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sparse_rl.agents.owner import find_owner


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class NStepSoftReplayBuffer(ReplayBuffer):
    """Replay buffer with delayed n-step (soft, for SAC) returns.

    :param n_steps: horizon n >= 1 of the returns once switched on (default 3).
    :param n_step_delay: env steps before n-step returns are used (1-step until then).
    :param gamma: discount; must equal the algorithm's.
    """

    def __init__(self, *args: Any, n_steps: int = 3, n_step_delay: int = 0, gamma: float = 0.99, **kwargs: Any):
        if kwargs.get("optimize_memory_usage"):
            raise ValueError("NStepSoftReplayBuffer does not support optimize_memory_usage=True")
        self.check_options(n_steps=n_steps, n_step_delay=n_step_delay)
        super().__init__(*args, **kwargs)
        self.n_steps, self.n_step_delay, self.gamma = n_steps, n_step_delay, gamma
        self.num_timesteps = 0
        self._model_ref: weakref.ReferenceType | None = None  # never pickled

    @staticmethod
    def check_options(n_steps: int = 3, n_step_delay: int = 0) -> None:
        """:raises ValueError: naming the first option out of range (the config checks through this too)."""
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
        if isinstance(n_step_delay, bool) or not isinstance(n_step_delay, int) or n_step_delay < 0:
            raise ValueError(f"n_step_delay must be an int >= 0, got {n_step_delay!r}")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model_ref"] = None
        return state

    def add(self, *args: Any, **kwargs: Any) -> None:
        super().add(*args, **kwargs)
        self.num_timesteps += self.n_envs

    def bind(self, model: Any) -> None:
        """Use ``model``'s actor and entropy coefficient for the soft terms (SAC); TD3 needs none."""
        if getattr(model, "replay_buffer", None) is not self:
            raise ValueError("bind() expects the SB3 algorithm whose replay_buffer is this buffer")
        self._model_ref = weakref.ref(model)

    def _model(self) -> Any:
        model, self._model_ref = find_owner(self, "replay_buffer", self._model_ref)
        return model

    @property
    def active_n(self) -> int:
        return self.n_steps if self.num_timesteps >= self.n_step_delay else 1

    def _entropy_coef(self) -> torch.Tensor | None:
        """SAC's current entropy coefficient; ``None`` for TD3 (or with no model sampling)."""
        model = self._model()
        log_coef = getattr(model, "log_ent_coef", None)
        if log_coef is not None:
            return torch.exp(log_coef.detach())
        return getattr(model, "ent_coef_tensor", None)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        n = self.active_n
        env_inds = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        steps = np.arange(n)
        idx = (batch_inds[:, None] + steps[None, :]) % self.buffer_size  # (batch, n)
        # how many transitions from batch_inds onwards are already written (the window cannot pass pos)
        avail = (self.pos - batch_inds) % self.buffer_size
        avail = np.where(avail == 0, self.buffer_size if self.full else 0, avail)
        e = env_inds[:, None]
        ended = np.logical_or(self.dones[idx, e] > 0, self.timeouts[idx, e] > 0)  # episode ends after step k
        # step k is in the window if it is written and no earlier step of the window ended an episode
        ended_before = np.concatenate([np.zeros((len(batch_inds), 1), bool), np.cumsum(ended, axis=1)[:, :-1] > 0], axis=1)
        in_window = (steps[None, :] < avail[:, None]) & ~ended_before
        m = in_window.sum(axis=1)  # >= 1
        last = idx[np.arange(len(batch_inds)), m - 1]
        rewards = self._normalize_reward(self.rewards[idx, e], env)
        discounts_k = self.gamma ** steps.astype(np.float32)
        returns = (rewards * discounts_k * in_window).sum(axis=1, keepdims=True)
        dones = (self.dones[last, env_inds] * (1 - self.timeouts[last, env_inds]))[:, None]
        next_obs = self._normalize_obs(self.next_observations[last, env_inds, :], env)
        samples = ReplayBufferSamples(
            observations=self.to_torch(self._normalize_obs(self.observations[batch_inds, env_inds, :], env)),
            actions=self.to_torch(self.actions[batch_inds, env_inds, :]),
            next_observations=self.to_torch(next_obs),
            dones=self.to_torch(dones.astype(np.float32)),
            rewards=self.to_torch(returns.astype(np.float32)),
            discounts=self.to_torch((self.gamma**m)[:, None].astype(np.float32)),
        )
        alpha = self._entropy_coef()
        if alpha is not None and n > 1:
            obs = self._normalize_obs(self.observations[idx[:, 1:], e, :], env)  # (batch, n-1, obs)
            with torch.no_grad():
                flat = self.to_torch(obs.reshape(-1, obs.shape[-1]))
                _, log_prob = self._model().actor.action_log_prob(flat)
            log_prob = log_prob.reshape(len(batch_inds), n - 1)
            weight = self.to_torch((discounts_k[1:] * in_window[:, 1:]).astype(np.float32))
            bonus = -(alpha * (log_prob * weight).sum(dim=1, keepdim=True))
            samples = samples._replace(rewards=samples.rewards + bonus)
        return samples


class DynamicReplayBuffer(NStepSoftReplayBuffer):
    """:class:`NStepSoftReplayBuffer` whose capacity shrinks when its oldest data is off-policy (RLx2).

    Each transition also stores the behaviour policy's mean action (deterministic action, scaled to
    [-1, 1]). Every ``check_interval`` env steps, the policy mismatch on the ``probe_size`` oldest
    transitions, ``0.5 * mean((pi(s) - a_mean)^2)``, is compared with ``mismatch_threshold``; above it,
    the oldest ``shrink_fraction`` of the stored transitions are dropped and the capacity shrinks by the
    same fraction, never below ``min_size``. Capacity never grows back. ``capacity``, ``last_mismatch``
    and the shrink count are attributes (pickled with the buffer) and go to the model's logger as
    ``replay/size``, ``replay/capacity`` and ``replay/mismatch``.

    The mean actions come from the model that fills the buffer (found on the stack of ``add``, like the
    SAC model of the n-step terms); :meth:`set_policy_fn` supplies any ``obs -> scaled action`` function.
    """

    def __init__(
        self,
        *args: Any,
        check_interval: int = 10_000,
        probe_size: int = 2048,
        mismatch_threshold: float = 0.2,
        shrink_fraction: float = 0.1,
        min_size: int = 100_000,
        **kwargs: Any,
    ):
        self.check_dynamic_options(check_interval, probe_size, mismatch_threshold, shrink_fraction, min_size)
        super().__init__(*args, **kwargs)
        self.check_interval, self.probe_size = check_interval, probe_size
        self.mismatch_threshold, self.shrink_fraction, self.min_size = mismatch_threshold, shrink_fraction, min_size
        self.mean_actions = np.zeros((self.buffer_size, self.n_envs, self.action_dim), dtype=np.float32)
        self.last_mismatch = float("nan")
        self.shrinks = 0
        self._policy_fn: Any = None

    @staticmethod
    def check_dynamic_options(
        check_interval: int = 10_000,
        probe_size: int = 2048,
        mismatch_threshold: float = 0.2,
        shrink_fraction: float = 0.1,
        min_size: int = 100_000,
        prefix: str = "",
    ) -> None:
        """:raises ValueError: naming the first option out of range and its allowed range; ``prefix`` is
        prepended to the names (the config's keys are ``buffer_<name>``)."""
        for name, value, ok, allowed in (
            ("check_interval", check_interval, _is_int(check_interval) and check_interval > 0, "a positive int"),
            ("probe_size", probe_size, _is_int(probe_size) and probe_size > 0, "a positive int"),
            ("mismatch_threshold", mismatch_threshold, mismatch_threshold >= 0, "a number >= 0"),
            ("shrink_fraction", shrink_fraction, 0 < shrink_fraction < 1, "in (0, 1)"),
            ("min_size", min_size, _is_int(min_size) and min_size > 0, "a positive int"),
        ):
            if not ok:
                raise ValueError(f"{prefix}{name} must be {allowed}, got {value!r}")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_policy_fn"] = None
        return state

    @property
    def capacity(self) -> int:
        return self.buffer_size

    def set_policy_fn(self, fn: Any) -> None:
        """``fn(obs: np.ndarray (n, obs_dim)) -> np.ndarray (n, act_dim)``: the mean action in [-1, 1]."""
        self._policy_fn = fn

    def _mean_action(self, obs: np.ndarray) -> np.ndarray:
        if self._policy_fn is not None:
            return np.asarray(self._policy_fn(obs), dtype=np.float32)
        model = self._model()
        if model is None:
            raise RuntimeError("DynamicReplayBuffer needs the model filling it (or set_policy_fn)")
        with torch.no_grad():
            actions = model.policy._predict(model.policy.obs_to_tensor(obs)[0], deterministic=True)
        return actions.cpu().numpy().reshape(len(obs), -1)

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        pos = self.pos
        self.mean_actions[pos] = self._mean_action(np.asarray(obs).reshape(self.n_envs, -1))
        super().add(obs, next_obs, action, reward, done, infos)
        if self.num_timesteps % self.check_interval < self.n_envs:
            self.check_mismatch()

    def _chronological(self) -> np.ndarray:
        """Buffer positions from oldest to newest."""
        if self.full:
            return np.concatenate([np.arange(self.pos, self.buffer_size), np.arange(0, self.pos)])
        return np.arange(0, self.pos)

    def check_mismatch(self) -> float:
        """Measure the mismatch on the oldest transitions and shrink if it is above the threshold."""
        order = self._chronological()
        if len(order) == 0:
            return float("nan")
        oldest = order[: self.probe_size]
        obs = self.observations[oldest].reshape(len(oldest) * self.n_envs, -1)
        stored = self.mean_actions[oldest].reshape(len(oldest) * self.n_envs, -1)
        self.last_mismatch = float(0.5 * np.mean((self._mean_action(obs) - stored) ** 2))
        if self.last_mismatch > self.mismatch_threshold and self.buffer_size > self.min_size:
            self._shrink(order)
        model = self._model()
        if model is not None and getattr(model, "_logger", None) is not None:
            model.logger.record("replay/mismatch", self.last_mismatch)
            model.logger.record("replay/capacity", self.buffer_size)
            model.logger.record("replay/size", len(self._chronological()) * self.n_envs)
        return self.last_mismatch

    def _shrink(self, order: np.ndarray) -> None:
        count = len(order)
        capacity = max(self.min_size, int(self.buffer_size * (1 - self.shrink_fraction)))
        keep = max(min(count, self.min_size), count - int(count * self.shrink_fraction))
        keep = min(keep, capacity)
        newest = order[count - keep :]
        for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts", "mean_actions"):
            array = getattr(self, name)
            array[:keep] = array[newest]
        self.buffer_size = capacity
        self.full = keep == capacity
        self.pos = keep % capacity
        self.shrinks += 1
