"""Pruning methods, each by its own rule on hand-worked cases: gradual (GMP, GraNet), at initialisation (SNIP,
GraSP), and lottery tickets."""

import itertools

import pytest
import torch
from helpers import small_net as _net
from helpers import train_step as _step
from stable_baselines3 import SAC, TD3

from sparse_rl import SparseSACPolicy, SparseTD3Policy
from sparse_rl.sparse import MaskedLinear, masked_layers
from sparse_rl.topology import TopologyConfig, TopologyController


def _gmp_controller(net, scope="layer", targets=(26, 102, 6)):
    config = TopologyConfig(topology="gmp", update_interval=5, end_fraction=0.8, topology_kwargs=dict(scope=scope))
    method = config.make_method()
    layers = masked_layers(net)
    assert method.start_nonzeros(list(targets), [l.weight.numel() for l in layers]) == [256, 1024, 64]  # dense
    progress = {"value": 0.0}
    ctrl = TopologyController(layers, config, seed=0, progress_fn=lambda: progress["value"], method=method)
    return ctrl, progress


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gmp_follows_the_cubic_schedule_and_reaches_the_target_exactly(scope):
    net = _net()
    targets = [26, 102, 6]  # 10% of each layer
    ctrl, progress = _gmp_controller(net, scope, targets)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ctrl.attach(opt)
    gen = torch.Generator().manual_seed(0)
    sizes = [256, 1024, 64]
    history = []
    for step in range(1, 101):
        progress["value"] = step / 100  # 100 steps of training, an update every 5
        _step(net, opt, gen)
        nnz = [l.nnz for l in ctrl.layers]
        history.append(sum(nnz))
        p = step / 100
        if step % 5 == 0 and p <= 0.8:
            # s_t = s_f (1 - (1 - (t - t0) / (t1 - t0))^3), with t0 = 0.2, t1 = 0.8, from dense
            remaining = (1 - min(max((p - 0.2) / 0.6, 0.0), 1.0)) ** 3
            if scope == "layer":
                assert nnz == [t + round((n - t) * remaining) for t, n in zip(targets, sizes)], step
            else:
                assert sum(nnz) == sum(targets) + round((sum(sizes) - sum(targets)) * remaining), step
    assert history[18] == sum(sizes)  # nothing pruned before 20% of training
    assert all(a >= b for a, b in itertools.pairwise(history))  # never regrows
    assert history[79] == sum(targets)  # at 80%: exactly the target ...
    assert history[-1] == sum(targets)  # ... and frozen afterwards
    if scope == "layer":
        assert [l.nnz for l in ctrl.layers] == targets
    for layer in ctrl.layers:  # absent weights and Adam's moments exactly zero
        absent = ~layer.mask
        assert torch.all(layer.weight[absent] == 0)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(opt.state[layer.weight][key][absent] == 0)


def test_gmp_keeps_the_largest_magnitudes():
    net = _net()
    ctrl, progress = _gmp_controller(net)
    layer = ctrl.layers[2]
    with torch.no_grad():
        layer.weight.copy_(torch.arange(64, dtype=torch.float32).view(2, 32) - 31.5)  # |w| largest at the ends
    progress["value"] = 0.9  # past the end: straight to the target
    ctrl.update_topology()
    kept = layer.weight[layer.mask].abs()
    assert layer.nnz == 6 and torch.all(kept >= 29.5)


@pytest.mark.parametrize(
    "options, needle",
    [
        (dict(start_fraction=0.9), r"start_fraction \(0.9\) must be below end_fraction \(0.8\)"),
        (dict(start_fraction=-0.1), "start_fraction must be in"),
        (dict(scope="net"), "scope must be 'layer' or 'global', got 'net'"),
        (dict(grow_signal="batch"), "unknown option 'grow_signal' of topology 'gmp'"),
    ],
)
def test_gmp_option_errors(options, needle):
    with pytest.raises(ValueError, match=needle):
        TopologyConfig(topology="gmp", end_fraction=0.8, topology_kwargs=options)


@pytest.mark.parametrize("algo, policy", [(SAC, SparseSACPolicy), (TD3, SparseTD3Policy)])
@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_gmp_in_sb3_prunes_to_the_target_with_targets_following(algo, policy, backend):
    model = algo(policy, "Pendulum-v1", learning_starts=50, batch_size=32, seed=0,
                 policy_kwargs=dict(net_arch=[32, 32], sparsity=0.9, topology="gmp", update_interval=10,
                                    end_fraction=0.8, backend=backend))
    assert all(l.nnz == l.weight.numel() for l in model.policy.actor_topology.layers)  # starts dense
    model.learn(500)
    for name in ("actor", "critic"):
        ctrl = model.policy.topology_controllers()[name]
        assert [l.nnz for l in ctrl.layers] == ctrl.method._targets
        assert abs(ctrl.stats()["density"] - 0.1) < 0.01
        for layer in ctrl.layers:
            assert torch.all(layer.weight[~layer.mask] == 0)
    pairs = [(model.policy.critic, model.policy.critic_target)]
    if algo is TD3:
        pairs.append((model.policy.actor, model.policy.actor_target))
    for online, target in pairs:  # a target is never denser than its online network
        for a, b in zip(masked_layers(online), masked_layers(target)):
            assert torch.equal(a.mask, b.mask) and torch.all(b.weight[~b.mask] == 0)


@pytest.mark.parametrize("initial_sparsity", [0.0, 0.5])
def test_granet_prunes_on_the_gmp_schedule_and_regrows_by_gradient(initial_sparsity):
    from sparse_rl.sparse import sparsify

    net = _net()
    config = TopologyConfig(topology="granet", update_interval=5, end_fraction=0.8, drop_fraction=0.3,
                            drop_schedule="constant", topology_kwargs=dict(initial_sparsity=initial_sparsity))
    method = config.make_method()
    layers = masked_layers(net)
    sizes = [256, 1024, 64]
    counts = sparsify(layers, 0.1, "erk", torch.Generator().manual_seed(0),
                      start_counts=lambda t: method.start_nonzeros(t, sizes))
    targets = method._gmp._targets
    # starting counts: between the target and dense, by initial_sparsity / final sparsity per layer (a layer
    # whose target is denser than initial_sparsity starts at its target)
    expected = [t + round((n - t) * (1 - min(initial_sparsity / (1 - t / n), 1.0))) for t, n in zip(targets, sizes)]
    assert counts == expected
    progress = {"value": 0.0}
    ctrl = TopologyController(layers, config, seed=0, progress_fn=lambda: progress["value"], method=method)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ctrl.attach(opt)
    gen = torch.Generator().manual_seed(0)
    grown = []
    for step in range(1, 101):
        progress["value"] = step / 100
        _step(net, opt, gen)
        p = step / 100
        if step % 5 == 0 and p <= 0.8:
            grown.append(ctrl.last_grown)
            if p >= 0.2:
                remaining = (1 - min((p - 0.2) / 0.6, 1.0)) ** 3
                assert [l.nnz for l in layers] == [t + round((c - t) * remaining) for t, c in zip(targets, counts)], step
        for layer in layers:  # absent weights and Adam's moments exactly zero after every step
            assert torch.all(layer.weight[~layer.mask] == 0)
            assert torch.all(opt.state[layer.weight]["exp_avg"][~layer.mask] == 0)
    assert [l.nnz for l in layers] == targets
    assert sum(g > 0 for g in grown) >= 10  # neuroregeneration at the updates (drop fraction 0.3, constant)
    assert ctrl.last_grown == 0  # the final update: the drop schedule is 0 at end_fraction


def test_granet_and_gmp_resume_from_their_state():
    net = _net()
    ctrl, _ = _gmp_controller(net)
    ctrl.method._done = True
    state = ctrl.training_state()
    other, _ = _gmp_controller(_net())
    other.load_training_state(state)
    assert other.method._done and not other.method.active(0.5, 0.8)


# -------------------------------------------------------------------------------------------------- SNIP
def _snip_setup(score_batches=2, then="static", scope="layer"):
    net = _net()
    config = TopologyConfig(topology="snip", update_interval=5, end_fraction=0.8, drop_schedule="constant",
                            topology_kwargs=dict(score_batches=score_batches, then=then, scope=scope))
    method = config.make_method()
    layers = masked_layers(net)
    method.start_nonzeros([26, 102, 6], [256, 1024, 64])
    ctrl = TopologyController(layers, config, seed=0, progress_fn=lambda: 0.1, method=method)
    return net, layers, ctrl


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_snip_keeps_the_most_sensitive_connections_after_its_score_batches(scope):
    net, layers, ctrl = _snip_setup(score_batches=2, scope=scope)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # weights fixed: the score is |(g1 + g2) * w|
    ctrl.attach(opt)
    gen = torch.Generator().manual_seed(0)
    grads = []
    for step in (1, 2):
        x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen)
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        grads.append([l.weight.grad.clone() for l in layers])
        if step == 1:
            opt.step()
            assert all(l.nnz == l.weight.numel() for l in layers)  # still dense after the first batch
    weights = [l.weight.detach().clone() for l in layers]
    opt.step()  # step 2: the sensitivities are complete, prune
    scores = [((g1 + g2) * w).abs() for g1, g2, w in zip(*grads, weights)]
    if scope == "layer":
        for layer, score, k in zip(layers, scores, [26, 102, 6]):
            assert layer.nnz == k
            assert score[layer.mask].min() >= score[~layer.mask].max()
    else:
        assert sum(l.nnz for l in layers) == 134
        flat = torch.cat([s.flatten() for s in scores])
        kept = torch.cat([l.mask.flatten() for l in layers])
        assert flat[kept].min() >= flat[~kept].max()
    masks = [l.mask.clone() for l in layers]
    for _ in range(20):  # static afterwards
        x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen)
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    assert all(torch.equal(m, l.mask) for m, l in zip(masks, layers))


def test_snip_then_rigl_keeps_evolving_at_constant_counts():
    net, layers, ctrl = _snip_setup(score_batches=1, then="rigl")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ctrl.attach(opt)
    gen = torch.Generator().manual_seed(0)
    _step(net, opt, gen)
    counts = [l.nnz for l in layers]
    assert counts == [26, 102, 6]
    for _ in range(30):
        _step(net, opt, gen)
        assert [l.nnz for l in layers] == counts
        for layer in layers:
            assert torch.all(opt.state[layer.weight]["exp_avg"][~layer.mask] == 0)
    assert ctrl.n_updates == 1 + 6 and ctrl.last_grown > 0  # the pruning, then RigL at steps 5, 10, ..., 30


# -------------------------------------------------------------------------------------------------- GraSP
def test_grasp_scores_are_minus_w_times_hessian_gradient_on_a_hand_worked_layer():
    from sparse_rl.topology.methods import GraSP

    torch.manual_seed(0)
    layer = MaskedLinear(3, 2)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    method = GraSP(score_batches=1)
    method.loss_fn = lambda n: [0.5 * ((layer(x) - y) ** 2).sum() for _ in range(n)]
    (score,) = method.scores([layer.weight])
    with torch.no_grad():  # L = ½‖Wx + b − y‖²: g = r xᵀ summed over the batch, H acts as v ↦ v XᵀX
        g = (layer(x) - y).t() @ x
        expected = -layer.weight * (g @ (x.t() @ x))
    torch.testing.assert_close(score, expected)


def test_grasp_hessian_gradient_matches_finite_differences_through_a_deep_net():
    from sparse_rl.topology.methods import GraSP

    net = _net().double()
    layers = masked_layers(net)
    weights = [l.weight for l in layers]
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 8, generator=gen, dtype=torch.float64), torch.randn(16, 2, generator=gen, dtype=torch.float64))
               for _ in range(2)]
    method = GraSP(score_batches=2)
    method.loss_fn = lambda n: [((net(x) - y) ** 2).mean() for x, y in batches[:n]]
    scores = method.scores(weights)

    def grads():
        total = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            for t, g in zip(total, torch.autograd.grad(((net(x) - y) ** 2).mean(), weights)):
                t += g
        return total

    g = grads()  # the method differentiates gᵀ·stop_grad(g), whose gradient is Hg
    eps = 1e-5
    with torch.no_grad():
        for w, d in zip(weights, g):
            w += eps * d
    plus = grads()
    with torch.no_grad():
        for w, d in zip(weights, g):
            w -= 2 * eps * d
    minus = grads()
    with torch.no_grad():
        for w, d in zip(weights, g):
            w += eps * d
    for s, w, p, m in zip(scores, weights, plus, minus):
        torch.testing.assert_close(s, -w.detach() * (p - m) / (2 * eps), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_grasp_keeps_the_lowest_scores_at_the_first_step_then_stays_static(scope):
    net = _net()
    config = TopologyConfig(topology="grasp", update_interval=5, end_fraction=0.8, drop_schedule="constant",
                            topology_kwargs=dict(scope=scope))
    method = config.make_method()
    layers = masked_layers(net)
    assert method.start_nonzeros([26, 102, 6], [256, 1024, 64]) == [256, 1024, 64]
    ctrl = TopologyController(layers, config, seed=0, progress_fn=lambda: 0.1, method=method)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen)
    method.loss_fn = lambda n: [((net(x) - y) ** 2).mean() for _ in range(n)]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ctrl.attach(opt)
    opt.zero_grad()
    ((net(x) - y) ** 2).mean().backward()
    captured = []
    score = method.scores
    method.scores = lambda weights: captured.append(score(weights)) or captured[-1]
    opt.step()  # the first step: weights updated, then scored and pruned
    (scores,) = captured
    if scope == "layer":
        assert [l.nnz for l in layers] == [26, 102, 6]
        for layer, s in zip(layers, scores):
            assert s[layer.mask].max() <= s[~layer.mask].min()
    else:
        assert sum(l.nnz for l in layers) == 134
        flat = torch.cat([s.flatten() for s in scores])
        kept = torch.cat([l.mask.flatten() for l in layers])
        assert flat[kept].max() <= flat[~kept].min()
    for layer in layers:
        assert torch.all(layer.weight[~layer.mask] == 0)
        assert torch.all(opt.state[layer.weight]["exp_avg"][~layer.mask] == 0)
    masks = [l.mask.clone() for l in layers]
    for _ in range(20):
        _step(net, opt, gen)
    assert all(torch.equal(m, l.mask) for m, l in zip(masks, layers)) and ctrl.n_updates == 1


def test_grasp_without_a_loss_says_how_to_give_one():
    net = _net()
    config = TopologyConfig(topology="grasp", update_interval=5, end_fraction=0.8)
    method = config.make_method()
    layers = masked_layers(net)
    method.start_nonzeros([26, 102, 6], [256, 1024, 64])
    ctrl = TopologyController(layers, config, seed=0, progress_fn=lambda: 0.1, method=method)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    ctrl.attach(opt)
    with pytest.raises(RuntimeError, match="grasp needs the network's loss"):
        _step(net, opt, torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------ lottery tickets
def test_lottery_rounds_prune_rewind_and_start_from_the_ticket(tmp_path, capsys):
    import numpy as np

    from sparse_rl import lottery
    from sparse_rl.agents.tickets import read_ticket
    from sparse_rl.models import load_run_model

    out = tmp_path / "lt"
    argv = ["--algo", "sac", "--env", "Pendulum", "--rounds", "2", "--prune-rate", "0.5", "--rewind-fraction", "0.2",
            "--n-timesteps", "300", "--set", "learning_starts=100", "--set", "batch_size=32",
            "--set", "net_arch=[32, 32]", "--set", "eval_freq=150", "--set", "eval_episodes=1", "--out", str(out),
            "--no-progress", "--threads", "1"]  # as train spells them
    assert lottery.main(argv) == 0
    assert "round 2: actor density 0.25" in capsys.readouterr().out
    rewind, t1, t2 = (read_ticket(out / name) for name in ("rewind.npz", "ticket-1.npz", "ticket-2.npz"))
    for name in ("actor", "critic"):
        for start, a, b in zip(rewind[name], t1[name], t2[name]):
            assert a["mask"].sum() == round(0.5 * a["mask"].size) and b["mask"].sum() == round(0.5 * a["mask"].sum())
            assert not np.any(b["mask"] & ~a["mask"])  # pruning only removes
            np.testing.assert_array_equal(b["weight"], np.where(b["mask"], start["weight"], 0))  # rewound survivors
    # round 2 started from ticket 2: its initial masks are the ticket's, and a run from the ticket starts
    # with the ticket's weights
    model = load_run_model(out / "round-2")
    for initial, layer in zip(model.policy.actor_topology.initial_masks, t2["actor"]):
        assert np.array_equal(initial.numpy(), layer["mask"])
    fresh = SAC(SparseSACPolicy, "Pendulum-v1", seed=5,
                policy_kwargs=dict(net_arch=[32, 32], topology="static", init_from=str(out / "ticket-2.npz")))
    for layer, arrays in zip(fresh.policy.actor_topology.layers, t2["actor"]):
        np.testing.assert_array_equal(layer.weight.detach().numpy(), arrays["weight"])
    assert lottery.main(argv) == 0  # finished rounds are kept, not trained again
    assert load_run_model(out / "round-2").num_timesteps == 300


def test_lottery_erk_pruning_shares_the_network_budget_as_erk_does():
    import numpy as np

    from sparse_rl.lottery import prune_ticket
    from sparse_rl.sparse.distributions import layer_nonzeros

    rng = np.random.default_rng(0)
    shapes = [(64, 5), (64, 64), (2, 64)]
    final = {"actor": [{"mask": np.ones(s, dtype=bool), "weight": rng.normal(size=s), "bias": np.zeros(s[0])}
                       for s in shapes]}
    rewound = {"actor": [{"mask": np.ones(s, dtype=bool), "weight": rng.normal(size=s), "bias": np.ones(s[0])}
                         for s in shapes]}
    one = prune_ticket(final, rewound, 0.9, "erk")["actor"]
    counts = [int(layer["mask"].sum()) for layer in one]
    assert counts == layer_nonzeros(shapes, 0.1, "erk")  # the network keeps 10%, shared as ERK shares it
    assert counts[0] / one[0]["mask"].size > 0.1 > counts[1] / one[1]["mask"].size  # the input layer stays denser
    for layer, fin, start in zip(one, final["actor"], rewound["actor"]):  # the largest final weights survive,
        kept = np.abs(fin["weight"])[layer["mask"]]                       # with their rewound values
        assert kept.min() >= np.abs(fin["weight"])[~layer["mask"]].max()
        np.testing.assert_array_equal(layer["weight"], np.where(layer["mask"], start["weight"], 0.0))
    # a second round prunes only active weights: the ERK counts at 1% of the network, never more than a layer has
    final2 = {"actor": [{**layer, "weight": rng.normal(size=layer["mask"].shape) * layer["mask"]} for layer in one]}
    two = prune_ticket(final2, rewound, 0.9, "erk")["actor"]
    assert sum(int(layer["mask"].sum()) for layer in two) == round(0.1 * sum(counts))
    for a, b in zip(one, two):
        assert not np.any(b["mask"] & ~a["mask"])
    uniform = prune_ticket(final, rewound, 0.9)["actor"]  # the default prunes every layer by the same fraction
    assert [int(layer["mask"].sum()) for layer in uniform] == [round(0.1 * np.prod(s)) for s in shapes]


def test_lottery_rejects_an_unknown_distribution(tmp_path, capsys):
    from sparse_rl import lottery

    out = tmp_path / "lt"
    assert lottery.main(["--algo", "sac", "--env", "Pendulum", "--distribution", "erx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --distribution must be one of") and "'erx'" in err and "erk" in err
    assert not out.exists()


def test_init_from_a_missing_or_mismatched_ticket(tmp_path):
    with pytest.raises(ValueError, match="init_from='nope.npz': no such ticket file"):
        SAC(SparseSACPolicy, "Pendulum-v1", policy_kwargs=dict(init_from="nope.npz"))
