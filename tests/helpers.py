"""Helpers shared by the tests (pytest puts this folder on the import path)."""

import torch


def same_state(a, b) -> bool:
    """Exact equality of nested state (dicts, lists, tuples, tensors, numbers)."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_policy(a, b) -> None:
    """The policies of SB3 models ``a`` and ``b`` hold exactly the same state: weights, masks, and the
    controllers' and methods' state."""
    sd_a, sd_b = a.policy.state_dict(), b.policy.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for key, value in sd_a.items():
        assert same_state(value, sd_b[key]), key
    controllers = getattr(a.policy, "topology_controllers", dict)()
    for name, ctrl in controllers.items():  # the training state rides with the optimizer, not the state_dict
        assert same_state(ctrl.training_state(), b.policy.topology_controllers()[name].training_state()), name


def small_net():
    """A 8-32-32-2 ReLU network of masked layers, the same weights every call (seed 0)."""
    from torch import nn

    from sparse_rl.sparse import MaskedLinear

    torch.manual_seed(0)
    return nn.Sequential(MaskedLinear(8, 32), nn.ReLU(), MaskedLinear(32, 32), nn.ReLU(), MaskedLinear(32, 2))


def train_step(net, opt, gen) -> None:
    """One regression step of ``net`` on a random batch drawn from ``gen``."""
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen)
    opt.zero_grad()
    ((net(x) - y) ** 2).mean().backward()
    opt.step()


def assert_same_evaluations(a, b) -> None:
    """Run directories ``a`` and ``b`` hold the same evaluation rows, every column to the last digit (the wall
    clock aside): a resumed run evaluates as an uninterrupted one does."""
    import csv

    rows_a, rows_b = (list(csv.DictReader(open(run / "evaluations.csv"))) for run in (a, b))
    assert [r["timesteps"] for r in rows_a] == [r["timesteps"] for r in rows_b]
    for x, y in zip(rows_a, rows_b):
        x.pop("wall_clock_s"), y.pop("wall_clock_s")
        assert x == y, x["timesteps"]
