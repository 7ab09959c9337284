"""Each method's own rule, on hand-worked cases, plus the invariants the shared machinery keeps for it.

Dynamic sparse training beyond RigL/SET (SNFS, DSR, DeepR, Top-KAST), N:M structure and the NNSTD distance;
pruning methods are in test_methods_pruning.py."""

import itertools
import math

import pytest
import torch
from helpers import small_net as _net
from helpers import train_step as _step
from stable_baselines3 import SAC, TD3

from sparse_rl import SparseSACPolicy, SparseTD3Policy
from sparse_rl.sparse import masked_layers
from sparse_rl.topology import TopologyConfig, TopologyController


# ------------------------------------------------------------------------------------------------- NNSTD
def _three_layer_masks(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(32, 64, generator=g) < 0.3, torch.rand(16, 32, generator=g) < 0.3, torch.rand(2, 16, generator=g) < 0.5]


def test_linear_assignment_matches_brute_force():
    import numpy as np

    from sparse_rl.topology.nnstd import linear_assignment

    rng = np.random.default_rng(0)
    for n in range(1, 7):
        for trial in range(30):
            cost = rng.integers(0, 3, (n, n)).astype(float) if trial % 2 else rng.random((n, n))
            best = min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
            assignment = linear_assignment(cost)
            assert sorted(assignment) == list(range(n))
            assert cost[np.arange(n), assignment].sum() == pytest.approx(best)


def test_nnstd_is_zero_for_identical_and_permuted_and_one_for_disjoint_topologies():
    from sparse_rl.topology.nnstd import nnstd

    inputs = [None, 0, 1]
    a = _three_layer_masks(0)
    assert nnstd(a, a, inputs) == {"layers": [0.0, 0.0, 0.0], "total": 0.0}
    g = torch.Generator().manual_seed(1)
    p0, p1 = torch.randperm(32, generator=g), torch.randperm(16, generator=g)
    permuted = [a[0][p0], a[1][p1][:, p0], a[2][:, p1]]  # hidden neurons reordered, same topology
    assert nnstd(a, permuted, inputs)["total"] == 0.0
    # disjoint: the first layer reads even vs odd inputs (inputs are not permuted), the output layer
    # reads every hidden neuron vs none: every neuron pair shares no connection
    even, odd = torch.zeros(32, 64, dtype=torch.bool), torch.zeros(32, 64, dtype=torch.bool)
    even[:, ::2], odd[:, 1::2] = True, True
    full, empty = torch.ones(2, 32, dtype=torch.bool), torch.zeros(2, 32, dtype=torch.bool)
    assert nnstd([even, full], [odd, empty], [None, 0]) == {"layers": [1.0, 1.0], "total": 1.0}
    # a changed topology lies in between, layer by layer
    b = _three_layer_masks(2)
    d = nnstd(a, b, inputs)
    assert all(0 < x < 1 for x in d["layers"]) and d["total"] == pytest.approx(sum(d["layers"]) / 3)


def test_distance_from_initial_is_logged_and_compare_cli(tmp_path, capsys):
    import csv
    import json

    from sparse_rl import compare, train

    argv = ["--algo", "sac", "--env", "Pendulum", "--n-timesteps", "300", "--set", "learning_starts=100",
            "--set", "batch_size=32", "--set", "net_arch=[32, 32]", "--set", "update_interval=10",
            "--eval-freq", "150", "--eval-episodes", "1", "--no-progress"]
    for name, seed in (("a", 0), ("b", 1)):
        assert train.main([*argv, "--seed", str(seed), "--run-dir", str(tmp_path / name)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "a" / "evaluations.csv")))
    distances = [float(r["critic_nnstd_init"]) for r in rows]
    assert distances[0] > 0 and all(0 <= x <= 1 for x in distances)  # RigL has moved away from its start
    capsys.readouterr()
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "a" / "model.zip"), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["actor"]["total"] == 0.0 and same["critic"]["total"] == 0.0
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "actor  total 0." in out and "per layer" in out
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2


# ------------------------------------------------------------------------------------------------- SNFS
def test_snfs_redistributes_regrowth_by_mean_momentum_and_keeps_the_total():
    from sparse_rl.topology.methods import SNFS

    method = SNFS()
    gen = torch.Generator().manual_seed(0)
    masks = [torch.zeros(4, 10, dtype=torch.bool), torch.zeros(4, 10, dtype=torch.bool)]
    masks[0][:2] = True  # 20 active each
    masks[1][2:] = True
    weights = [torch.randn(4, 10, generator=gen) * m for m in masks]
    momentum = [torch.full((4, 10), 3.0), torch.full((4, 10), 1.0)]  # layer 0's mean |momentum| is 3x layer 1's
    momentum[0][3, 7] = 50.0  # the free position layer 0 grows first
    method._pending = momentum
    assert method.shares(masks, momentum) == [3.0, 1.0]
    a, b = method.update(weights, masks, 0.2, gen)
    # each layer drops 20% of its 20 by magnitude: 8 in all, regrown 6 : 2 (shares 3 : 1)
    assert int(a.dropped.sum()) == int(b.dropped.sum()) == 4
    assert int(a.grown.sum()) == 6 and int(b.grown.sum()) == 2
    assert int(a.mask.sum()) + int(b.mask.sum()) == 40  # the network's nonzeros are exact
    assert bool(a.grown[3, 7]) and not bool((a.grown & masks[0] & ~a.dropped).any())
    for w, m, r in zip(weights, masks, (a, b)):
        smallest = w.abs()[m].sort().values[:4]
        assert torch.equal(w.abs()[r.dropped].sort().values, smallest)


def test_snfs_and_dsr_option_errors():
    from sparse_rl.topology import make_method

    with pytest.raises(ValueError, match="grow_signal must be 'momentum'"):
        make_method("snfs", grow_signal="batch")
    with pytest.raises(ValueError, match="threshold must be a number > 0"):
        make_method("dsr", threshold=0)
    with pytest.raises(ValueError, match=r"tolerance must be in \[0, 1\)"):
        make_method("dsr", tolerance=1.5)


# -------------------------------------------------------------------------------------------------- DSR
def test_dsr_threshold_adapts_to_the_pruned_count_and_regrowth_follows_survivors():
    from sparse_rl.topology.methods import DSR

    gen = torch.Generator().manual_seed(0)
    masks = [torch.ones(5, 10, dtype=torch.bool), torch.ones(5, 10, dtype=torch.bool)]
    masks[0][0, 0] = False  # not fully dense: both layers evolve
    masks[1][0, :5] = False
    w0 = torch.full((5, 10), 1.0)
    w0[0, 1:] = 0.01  # 9 tiny weights in layer 0, none in layer 1
    weights = [w0 * masks[0], torch.full((5, 10), 1.0) * masks[1]]
    method = DSR(threshold=1e-3, tolerance=0.1)
    # H = 1e-3 prunes nothing (K = 0 < 0.9 * N_p): H doubles, nothing changes
    results = method.update(weights, masks, 0.1, gen)
    assert method.current_threshold == pytest.approx(2e-3)
    assert all(int(r.dropped.sum()) == 0 and int(r.grown.sum()) == 0 for r in results)
    # H = 0.5 prunes the 9 tiny weights: N_p = 0.1 * 94 = 9.4, K = 9 is within 10% of it: H stays
    method._h = 0.5
    a, b = method.update(weights, masks, 0.1, gen)
    assert method.current_threshold == 0.5 and int(a.dropped.sum()) == 9 and int(b.dropped.sum()) == 0
    # 9 regrown in proportion to the survivors (40 : 45, so 4.24 : 4.76), at free positions
    assert (int(a.grown.sum()), int(b.grown.sum())) == (4, 5)
    assert int(a.mask.sum()) + int(b.mask.sum()) == 94
    assert not bool((a.grown & masks[0] & ~a.dropped).any())
    # H = 2 prunes everything: far above N_p, H halves
    method._h = 2.0
    method.update(weights, masks, 0.1, gen)
    assert method.current_threshold == 1.0
    assert method.state_dict() == {"threshold": 1.0}
    fresh = DSR()
    fresh.load_state_dict(method.state_dict())
    assert fresh.current_threshold == 1.0


@pytest.mark.parametrize("topology", ["snfs", "dsr", "deepr", "topkast"])
def test_new_methods_keep_the_shared_invariants_over_many_updates(topology):
    net = _net()
    config = TopologyConfig(topology=topology, update_interval=3, end_fraction=0.9, drop_fraction=0.3)
    method = config.make_method()
    layers = masked_layers(net)
    targets = [26, 102, 6]
    from sparse_rl.sparse import sparsify

    sparsify(layers, 0.1, "uniform", torch.Generator().manual_seed(0))
    total = sum(l.nnz for l in layers)
    ctrl = TopologyController(layers, config, seed=0, progress_fn=lambda: 0.5, method=method)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    ctrl.attach(opt)
    gen = torch.Generator().manual_seed(0)
    moved = 0
    for _ in range(60):
        before = [l.mask.clone() for l in layers]
        _step(net, opt, gen)
        moved += sum(int((b != l.mask).sum()) for b, l in zip(before, layers))
        assert sum(l.nnz for l in layers) == total
        for layer in layers:
            assert torch.all(layer.weight[~layer.mask] == 0)
            assert torch.all(opt.state[layer.weight]["exp_avg"][~layer.mask] == 0)
    assert ctrl.n_updates == 20 and moved > 0 and targets


# -------------------------------------------------------------------------------------------- N:M structure
def test_nm_masks_and_rounding_of_the_distribution():
    from sparse_rl.sparse import sparsify
    from sparse_rl.sparse.structure import group_nonzeros, layer_n, nm_mask, parse_structure

    assert parse_structure("2:4") == (2, 4) and parse_structure("unstructured") is None
    for bad in ("4:4", "0:4", "2:1", "2-4", "two:four"):
        with pytest.raises(ValueError, match="structure"):
            parse_structure(bad)
    gen = torch.Generator().manual_seed(0)
    mask = nm_mask((5, 10), 2, 4, gen)  # groups of 4, 4, and a last one of 2
    assert group_nonzeros(mask, 4).tolist() == [[2, 2, 2]] * 5
    assert layer_n(0.5, 2, 4) == 2 and layer_n(0.1, 2, 4) == 1 and layer_n(0.9, 2, 4) == 2 and layer_n(0.3, 3, 8) == 2
    net = _net()
    layers = masked_layers(net)
    counts = sparsify(layers, 0.25, "erk", gen, structure=(1, 4))
    for layer, nnz in zip(layers, counts):
        assert layer.nnz == nnz and int(group_nonzeros(layer.mask, 4).max()) <= 1  # ERK's denser layers capped at 1:4


@pytest.mark.parametrize("topology", ["set", "rigl"])
def test_nm_structure_survives_many_updates_with_each_group_keeping_its_count(topology):
    from sparse_rl.sparse import sparsify
    from sparse_rl.sparse.structure import group_nonzeros

    net = _net()
    layers = masked_layers(net)
    sparsify(layers, 0.25, "uniform", torch.Generator().manual_seed(0), structure=(1, 4))
    config = TopologyConfig(topology=topology, update_interval=2, end_fraction=0.9, drop_fraction=0.5)
    method = config.make_method()
    method.group_size = 4
    ctrl = TopologyController(layers, config, seed=0, progress_fn=lambda: 0.5, method=method)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    ctrl.attach(opt)
    groups = [group_nonzeros(l.mask, 4) for l in layers]
    gen = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(40):
        before = [l.mask.clone() for l in layers]
        _step(net, opt, gen)
        changed += sum(int((b != l.mask).sum()) for b, l in zip(before, layers))
        for layer, g in zip(layers, groups):
            assert torch.equal(group_nonzeros(layer.mask, 4), g)  # every group of 4 keeps its one nonzero
            assert torch.all(layer.weight[~layer.mask] == 0)
            assert torch.all(opt.state[layer.weight]["exp_avg"][~layer.mask] == 0)
    assert ctrl.n_updates == 20 and changed > 0


@pytest.mark.parametrize("algo, policy", [(SAC, SparseSACPolicy), (TD3, SparseTD3Policy)])
def test_nm_structure_in_sb3_and_its_errors(algo, policy):
    from sparse_rl.sparse.structure import group_nonzeros

    kwargs = dict(net_arch=[32, 32], topology="rigl", update_interval=10, sparsity=0.75, distribution="uniform",
                  structure="1:4", backend="sparse")
    model = algo(policy, "Pendulum-v1", learning_starts=50, batch_size=32, seed=0, policy_kwargs=kwargs)
    model.learn(200)
    for ctrl in model.policy.topology_controllers().values():
        assert ctrl.n_updates > 0
        for layer in ctrl.layers:
            assert int(group_nonzeros(layer.mask, 4).max()) <= 1
    with pytest.raises(ValueError, match="structure '2:4' works with topology static, set, rigl, not 'gmp'"):
        algo(policy, "Pendulum-v1", policy_kwargs=dict(structure="2:4", topology="gmp"))
    with pytest.raises(ValueError, match="structure must be 'unstructured' or 'N:M'"):
        algo(policy, "Pendulum-v1", policy_kwargs=dict(structure="2/4"))


# ------------------------------------------------------------------------------------------------ DeepR
def test_deepr_prior_and_noise_step_and_rewiring_on_sign_flips():
    from sparse_rl.topology.methods import DeepR

    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, :2] = mask[1, 1] = True
    weight = torch.zeros(3, 4)
    weight[0, 0], weight[0, 1], weight[1, 1] = 0.5, -0.2, 0.3
    method = DeepR(temperature=0.0, l1=2.0, step_size=0.1)
    (stepped,) = method.after_step([weight], [mask], gen)
    signs = method.signs([weight], [mask], gen)[0]
    assert signs[0, 0] == 1 and signs[0, 1] == -1 and signs[1, 1] == 1  # active weights keep their sign
    expected = weight.clone()
    expected[0, 0], expected[0, 1], expected[1, 1] = 0.5 - 0.2, -0.2 + 0.2, 0.3 - 0.2  # w - eta * alpha * s
    torch.testing.assert_close(stepped, expected)
    noisy = DeepR(temperature=1.0, l1=0.0, step_size=0.5)
    (out,) = noisy.after_step([weight], [mask], torch.Generator().manual_seed(1))
    assert torch.equal(out[~mask], weight[~mask]) and not torch.equal(out[mask], weight[mask])  # noise: active only
    flipped = weight.clone()
    flipped[0, 0] = -0.01  # crossed zero against its + sign
    (result,) = method.update([flipped], [mask], 0.3, gen)
    assert result.dropped.nonzero().tolist() == [[0, 0]] and int(result.grown.sum()) == 1
    assert not bool((result.grown & mask).any()) and int(result.mask.sum()) == 3
    restored = DeepR()
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.signs([weight], [mask], gen)[0], signs)


# ---------------------------------------------------------------------------------------------- Top-KAST
def test_topkast_forward_set_is_the_top_k_of_forward_and_backward_sets():
    from sparse_rl.topology.methods import TopKAST

    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :2] = mask[1, :2] = True  # A: 4 of 16
    weight = torch.zeros(2, 8)
    weight[0, 0], weight[0, 1], weight[1, 0], weight[1, 1] = 0.9, 0.1, -0.8, 0.05
    method = TopKAST(backward_ratio=2.0, penalty=0.0, reserve_lr=1.0)
    method.after_step([weight], [mask], gen)  # makes the reserve: 4 more positions
    (reserve_mask,) = method._reserve_mask
    assert int(reserve_mask.sum()) == 4 and not bool((reserve_mask & mask).any())
    assert method.extra_stats([mask]) == {"backward_density": 0.5}
    # a dense gradient of -1 everywhere: the first normalised step is reserve_lr * sign (bias-corrected
    # mean square = g²), to 1.0; A is not touched
    method.observe(1, 10, [torch.full((2, 8), -1.0)], False)
    assert method.after_step([weight], [mask], gen) is None
    assert torch.equal(method._reserve[0], reserve_mask.float())
    (result,) = method.update([weight], [mask], 0.0, gen)
    # top-4 magnitudes of A ∪ R: the four reserve weights (1.0) beat 0.9, 0.8, 0.1, 0.05
    assert torch.equal(result.grown, reserve_mask) and torch.equal(result.dropped, mask)
    assert torch.equal(result.values[reserve_mask], torch.ones(4))  # entering weights keep their reserve values
    assert torch.equal(method._reserve_mask[0], mask)  # what left A is the reserve now, with its weights
    assert method._reserve[0][0, 0] == 0.9 and method._reserve[0][1, 0] == -0.8


def test_topkast_reserve_steps_are_normalised_by_their_running_mean_square_and_stay_bounded():
    """A reserve weight is outside the forward pass: its gradient never shrinks as it grows. Plain SGD summed
    SAC critic gradients into 1e4-sized reserve weights that then entered the forward set (divergence on
    HalfCheetah); normalised steps move it at most about reserve_lr per step, whatever the gradient's scale."""
    from sparse_rl.topology.methods import TopKAST

    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :2] = True
    weight = torch.where(mask, 1.0, 0.0)
    method = TopKAST(backward_ratio=2.0, penalty=0.0, reserve_lr=0.01)
    method.after_step([weight], [mask], gen)
    (chosen,) = method._reserve_mask
    g1, g2 = -1e6, -3e6  # two steps, hand-worked with Adam's bias-corrected second moment
    for g in (g1, g2):
        method.observe(1, 10, [torch.full((2, 8), g)], False)
        method.after_step([weight], [mask], gen)
    b = TopKAST.beta
    v1 = (1 - b) * g1 * g1
    v2 = b * v1 + (1 - b) * g2 * g2
    expected = -0.01 * (g1 / (math.sqrt(v1 / (1 - b)) + 1e-8) + g2 / (math.sqrt(v2 / (1 - b**2)) + 1e-8))
    assert torch.allclose(method._reserve[0][chosen], torch.full((4,), expected))  # 0.0100 + 0.0134
    assert not bool(method._reserve[0][~chosen].any())
    for _ in range(200):  # gradients growing 1e6-fold do not make the steps grow
        method.observe(1, 10, [torch.full((2, 8), -1e12)], False)
        method.after_step([weight], [mask], gen)
    # above reserve_lr only while the mean square catches up after the jump (Adam's steps do the same)
    assert float(method._reserve[0].abs().max()) <= 0.01 * 202 * 1.1
    restored = TopKAST(backward_ratio=2.0, penalty=0.0, reserve_lr=0.01)
    restored.load_state_dict(method.state_dict())
    assert restored._steps == 202 and torch.equal(restored._square[0], method._square[0])
