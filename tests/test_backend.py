"""The sparse compute backend: parity with masked dense layers, topology changes on sparse storage,
checkpoints across backends, the ``auto`` choice, and SAC/TD3 training that tracks the dense backend."""

import copy
import json

import gymnasium as gym
import pytest
import torch
from stable_baselines3 import SAC, TD3
from torch import nn

from sparse_rl import SparseSACPolicy, SparseTD3Policy, sparsity_report
from sparse_rl.sparse import (
    CSRStructure,
    MaskedLinear,
    SparseLinear,
    dense_gradient_view,
    kernels,
    masked_layers,
    random_mask,
    sparsify,
    use_sparse_storage,
    use_sparse_storage_for,
)
from sparse_rl.sparse import backend as backend_mod
from sparse_rl.topology import TopologyConfig, TopologyController


def masked(out_f, in_f, density, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layer = MaskedLinear(in_f, out_f).to(dtype)
    nnz = max(1, round(density * out_f * in_f))
    layer.set_mask(random_mask(layer.weight.shape, nnz, torch.Generator().manual_seed(seed)))
    return layer


@pytest.mark.parametrize("shape", [(7, 5), (64, 32), (256, 256), (3, 300), (300, 3)])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.02])
def test_sparse_layer_matches_masked_dense_layer(shape, density, device):
    dense = masked(*shape, density).to(device)
    sparse = SparseLinear.from_masked(dense)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(33, shape[1], generator=gen).to(device)
    grad_out = torch.randn(33, shape[0], generator=gen).to(device)
    xd, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yd, ys = dense(xd), sparse(xs)
    yd.backward(grad_out)
    ys.backward(grad_out)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ys, yd, **tol)
    torch.testing.assert_close(xs.grad, xd.grad, **tol)
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad[dense.mask], **tol)
    torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, **tol)
    assert sparse.values.numel() == dense.nnz  # the trained parameter holds the nonzeros only
    # the dense gradient (for growth) only when asked for, and then equal to autograd's dense one
    assert sparse.dense_grad() is None
    sparse.capture_dense_grad = True
    sparse.zero_grad(set_to_none=True)
    sparse(x).backward(grad_out)
    torch.testing.assert_close(sparse.dense_grad(), dense.weight.grad, **tol)
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad[dense.mask], **tol)


def test_sparse_layer_any_leading_dims_and_layouts():
    dense = masked(16, 12, 0.3)
    sparse = SparseLinear.from_masked(dense)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(sparse(x), dense(x))
    torch.testing.assert_close(sparse(x[0, 0]), dense(x[0, 0]))
    xt = torch.randn(12, 9).t()  # a transposed view, the layout sparse layers hand on
    torch.testing.assert_close(sparse(xt), dense(xt))
    assert torch.equal(sparse.weight, dense.weight.detach())


def test_csr_structure_transpose_and_order():
    mask = torch.rand(9, 13, generator=torch.Generator().manual_seed(0)) < 0.3
    values = torch.randn(int(mask.sum()))
    s = CSRStructure.from_mask(mask)
    dense = torch.zeros(9, 13)
    dense[mask] = values
    assert torch.equal(s.dense(values), dense)
    assert torch.equal(s.matrix(values).to_dense(), dense)
    assert torch.equal(s.transposed(values).to_dense(), dense.t())
    with pytest.raises(ValueError, match="2-D boolean mask"):
        CSRStructure.from_mask(mask.float())


def test_structure_is_built_once_per_topology_change(monkeypatch):
    layer = SparseLinear.from_masked(masked(32, 16, 0.2))
    calls = []
    original = CSRStructure.from_mask.__func__
    monkeypatch.setattr(CSRStructure, "from_mask", classmethod(lambda cls, m: calls.append(1) or original(cls, m)))
    layer._structure = None
    x = torch.randn(8, 16)
    opt = torch.optim.Adam(layer.parameters())
    for _ in range(20):  # training steps: values change in place, the structure does not
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
    assert len(calls) == 1
    layer.change_mask(random_mask(layer.mask.shape, layer.nnz, torch.Generator().manual_seed(3)))
    layer(x)
    assert len(calls) == 2


def test_change_mask_keeps_kept_and_zeroes_changed_values_and_slots():
    dense = masked(6, 5, 0.5, dtype=torch.float64)
    sparse = SparseLinear.from_masked(copy.deepcopy(dense))  # from_masked shares the bias Parameter
    opt_d = torch.optim.Adam(dense.parameters(), lr=0.1)
    opt_s = torch.optim.Adam([sparse.values, sparse.bias], lr=0.1)
    x = torch.randn(4, 5, dtype=torch.float64)
    for layer, opt in ((dense, opt_d), (sparse, opt_s)):
        layer(x).pow(2).sum().backward()
        if layer is dense:
            dense.weight.grad.mul_(dense.mask)
        opt.step()
    gen = torch.Generator().manual_seed(5)
    new_mask = random_mask(dense.mask.shape, dense.nnz + 3, gen)  # the count may change (pruning/growth)
    changed = dense.mask ^ new_mask
    changed[0, 0] = True  # also a kept position restarting (as rewiring does)
    dense.change_mask(new_mask, changed, opt_d)
    sparse.change_mask(new_mask, changed, opt_s)
    assert torch.equal(sparse.mask, new_mask) and sparse.values.numel() == int(new_mask.sum())
    torch.testing.assert_close(sparse.weight, dense.weight.detach())
    for key in ("exp_avg", "exp_avg_sq"):
        slot = sparse.structure().dense(opt_s.state[sparse.values][key])
        torch.testing.assert_close(slot, opt_d.state[dense.weight][key])
        assert torch.all(slot[changed] == 0)
    assert torch.equal(sparse.explored, dense.explored)
    opt_s.step()  # the optimizer keeps working on the re-laid-out parameter


def test_state_dicts_are_the_same_for_both_storages():
    dense = masked(10, 8, 0.25)
    sparse = SparseLinear.from_masked(dense)
    sd_d, sd_s = dense.state_dict(), sparse.state_dict()
    assert list(sd_d) == list(sd_s) == ["weight", "bias", "mask", "explored"]
    for key in sd_d:
        assert torch.equal(sd_d[key], sd_s[key]), key
    other_sparse = SparseLinear.from_masked(masked(10, 8, 0.6, seed=9))
    other_sparse.load_state_dict(sd_d)  # a different nonzero count is re-sized on load
    assert torch.equal(other_sparse.weight, dense.weight.detach()) and other_sparse.nnz == dense.nnz
    other_dense = masked(10, 8, 0.6, seed=9)
    other_dense.load_state_dict(sd_s)
    assert torch.equal(other_dense.weight, dense.weight.detach())
    with pytest.raises(RuntimeError, match="size mismatch"):
        SparseLinear.from_masked(masked(11, 8, 0.2)).load_state_dict(sd_d)


def _net(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(MaskedLinear(8, 32), nn.ReLU(), MaskedLinear(32, 32), nn.ReLU(), MaskedLinear(32, 2)).to(dtype)
    sparsify(masked_layers(net), 0.2, "erk", torch.Generator().manual_seed(seed))
    return net


@pytest.mark.parametrize(
    "config",
    [
        dict(topology="rigl"),
        dict(topology="set"),
        dict(topology="rigl", topology_kwargs=dict(grow_signal="accumulate", grow_batches=3)),
        dict(topology="rigl", topology_kwargs=dict(grow_signal="momentum")),
        dict(topology="set", topology_kwargs=dict(rewire_dormant=True)),
    ],
    ids=["rigl", "set", "rigl-accumulate", "rigl-momentum", "set-rewire"],
)
def test_controller_on_sparse_storage_tracks_dense_storage(config):
    """The same controller, seed and data on both storages: identical topologies, matching weights,
    targets and optimizer state (float64, so no near-tie can flip a decision)."""
    runs = {}
    for storage in ("dense", "sparse"):
        net, target = _net(), _net(seed=1)
        target.load_state_dict(net.state_dict())
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        layers = masked_layers(net)
        if storage == "sparse":
            layers = use_sparse_storage_for(net, layers, [True] * 3, [(target, masked_layers(target))], opt)
            assert all(isinstance(l, SparseLinear) for l in masked_layers(net) + masked_layers(target))
        cfg = TopologyConfig(update_interval=5, drop_fraction=0.3, drop_schedule="constant", end_fraction=1.0, **config)
        ctrl = TopologyController(layers, cfg, seed=0, targets=[masked_layers(target)], progress_fn=lambda: 0.0)
        ctrl.attach(opt)
        if config.get("topology_kwargs", {}).get("rewire_dormant"):
            dormant = torch.zeros(32, dtype=torch.bool)
            dormant[[3, 7]] = True
            ctrl.dormant_fn = lambda d=dormant: {1: (d, [2])}
        gen = torch.Generator().manual_seed(0)
        for _ in range(60):
            x = torch.randn(64, 8, generator=gen, dtype=torch.float64)
            y = torch.randn(64, 2, generator=gen, dtype=torch.float64)
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
            with torch.no_grad():  # a Polyak update, as SB3 does on the parameters in order
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.mul_(0.9).add_(p, alpha=0.1)
        runs[storage] = (net, target, opt, ctrl)
    (net_d, tgt_d, opt_d, ctrl_d), (net_s, tgt_s, opt_s, ctrl_s) = runs["dense"], runs["sparse"]
    assert ctrl_d.n_updates == ctrl_s.n_updates == 12
    for a, b in zip(masked_layers(net_d) + masked_layers(tgt_d), masked_layers(net_s) + masked_layers(tgt_s)):
        assert torch.equal(a.mask, b.mask)
        torch.testing.assert_close(b.weight, a.weight.detach(), rtol=1e-9, atol=1e-12)
        assert torch.all(b.weight[~b.mask] == 0)
    sd_d, sd_s = opt_d.state_dict(), opt_s.state_dict()  # sparse slots come back in the dense layout
    for i, state in sd_d["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(sd_s["state"][i][key], value, rtol=1e-9, atol=1e-12)
    opt_s.load_state_dict(sd_d)  # and a dense-layout state loads into sparse storage
    assert opt_s.state[masked_layers(net_s)[1].values]["exp_avg"].numel() == masked_layers(net_s)[1].nnz


def _train(algo, backend, steps=300, device="cpu", **kwargs):
    model = _model(algo, backend, device, **kwargs)
    model.learn(steps)
    return model


def _model(algo, backend, device="cpu", **kwargs):
    cls, policy = (SAC, SparseSACPolicy) if algo == "sac" else (TD3, SparseTD3Policy)
    torch.manual_seed(0)
    return cls(
        policy,
        "Pendulum-v1",
        policy_kwargs=dict(sparsity=0.9, backend=backend, net_arch=[64, 64], update_interval=40, **kwargs),
        learning_starts=100,
        batch_size=64,
        seed=0,
        verbose=0,
        device=device,
    )


@pytest.mark.parametrize("backend", ["sparse", "auto"])
@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_training_with_sparse_backend_tracks_dense_backend(algo, backend, device, monkeypatch):
    if backend == "auto":  # mixed storage: CSR for the sparse 64x64 layers, dense kernels for the denser rest
        if device.type != "cpu":
            pytest.skip("auto keeps dense kernels off the CPU")
        monkeypatch.setattr(backend_mod, "break_even_density", lambda out_f, in_f, batch=256: 0.3)
    dense, sparse = _train(algo, "dense", device=device), _train(algo, backend, device=device)
    kinds = {type(m).__name__ for m in sparse.policy.modules()}
    assert "SparseLinear" in kinds
    on_dense_kernels = [m for m in masked_layers(sparse.policy) if m.storage == "dense" and m.density < 1]
    assert bool(on_dense_kernels) == (backend == "auto")
    assert sparsity_report(sparse)["critic"]["topology_updates"] == sparsity_report(dense)["critic"]["topology_updates"] > 0
    sd_d, sd_s = dense.policy.state_dict(), sparse.policy.state_dict()
    assert list(sd_d) == list(sd_s)
    for key, value in sd_d.items():
        if key.endswith("mask"):
            assert torch.equal(value, sd_s[key]), key
        elif torch.is_tensor(value) and value.is_floating_point():
            torch.testing.assert_close(sd_s[key], value, rtol=0, atol=1e-3, msg=key)
    # optimizer state and target Polyak updates follow the nonzeros
    layer = next(m for m in sparse.policy.critic.modules() if isinstance(m, SparseLinear))
    assert sparse.critic.optimizer.state[layer.values]["exp_avg"].numel() == layer.nnz
    target_layers = [m for m in sparse.policy.critic_target.modules() if isinstance(m, SparseLinear)]
    assert target_layers and all(t.values.numel() == t.nnz for t in target_layers)


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_sparse_backend_save_load_and_cross_backend_load(algo, tmp_path, device):
    model = _train(algo, "sparse", steps=200, device=device)
    model.save(tmp_path / "m.zip")
    cls = SAC if algo == "sac" else TD3
    env = gym.make("Pendulum-v1")
    loaded = cls.load(tmp_path / "m.zip", env=env, device=device)
    for key, value in model.policy.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, loaded.policy.state_dict()[key]), key
    opt_a, opt_b = model.critic.optimizer.state_dict(), loaded.critic.optimizer.state_dict()
    for i, state in opt_a["state"].items():
        for key, value in state.items():
            # .cpu(): SB3 loads every tensor onto the model's device, Adam's step counter too (CPU when trained)
            assert torch.equal(value.cpu(), opt_b["state"][i][key].cpu())
    loaded.learn(50, reset_num_timesteps=False)  # keeps training
    # the same file under the other backend: the state dicts are backend-independent
    kwargs = {**model.policy_kwargs, "backend": "dense"}
    as_dense = cls.load(tmp_path / "m.zip", env=env, device=device, custom_objects={"policy_kwargs": kwargs})
    assert not any(isinstance(m, SparseLinear) for m in as_dense.policy.modules())
    obs = torch.as_tensor(env.reset(seed=0)[0], device=device).unsqueeze(0)
    with torch.no_grad():
        a, b = (m.policy._predict(obs, deterministic=True) for m in (as_dense, model))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    as_dense.learn(50, reset_num_timesteps=False)


def test_backend_kwarg_is_validated():
    with pytest.raises(ValueError, match=r"backend must be one of 'auto', 'sparse', 'dense', got 'cuda'"):
        SAC(SparseSACPolicy, "Pendulum-v1", policy_kwargs=dict(backend="cuda"))


def test_use_sparse_storage_rules(monkeypatch):
    monkeypatch.setattr(backend_mod, "break_even_density", lambda out_f, in_f, batch=256: 0.1)
    cpu = torch.device("cpu")
    assert not use_sparse_storage("dense", 256, 256, 10, cpu)
    assert use_sparse_storage("sparse", 256, 256, 60000, cpu)
    assert not use_sparse_storage("sparse", 4, 4, 16, cpu)  # a fully dense layer has nothing to skip
    assert use_sparse_storage("auto", 100, 100, 1000, cpu)  # density 0.1: at the break-even
    assert not use_sparse_storage("auto", 100, 100, 1001, cpu)
    assert not use_sparse_storage("auto", 100, 100, 10, torch.device("meta"))  # auto measures on the CPU only


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_auto_backend_keeps_csr_kernels_on_the_cpu_only(algo, device, monkeypatch):
    """SB3 builds a policy on the CPU, then moves it to the algorithm's device: auto chooses for that one."""
    monkeypatch.setattr(backend_mod, "break_even_density", lambda out_f, in_f, batch=256: 1.0)  # CSR wins on CPU
    model = _model(algo, "auto", device)
    kinds = {type(m).__name__ for m in model.policy.modules()}
    assert ("SparseLinear" in kinds) == (device.type == "cpu")
    assert all(p.device.type == device.type for p in model.policy.parameters())
    model.learn(200)
    assert sparsity_report(model)["critic"]["topology_updates"] > 0


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_switching_to_dense_storage_before_training_trains_exactly_like_the_dense_backend(algo, monkeypatch):
    monkeypatch.setattr(backend_mod, "break_even_density", lambda out_f, in_f, batch=256: 1.0)
    switched = _model(algo, "auto")
    keys = list(switched.policy.state_dict())
    before = {k: v.clone() for k, v in switched.policy.state_dict().items() if torch.is_tensor(v)}
    assert any(isinstance(m, SparseLinear) for m in switched.policy.modules())
    switched.policy._fit_storage(torch.device("cuda"))  # what .to("cuda") does, the tensors left where they are
    assert not any(isinstance(m, SparseLinear) for m in switched.policy.modules())
    after = switched.policy.state_dict()
    assert list(after) == keys and all(torch.equal(after[k], v) for k, v in before.items())
    for name, controller in switched.policy.topology_controllers().items():
        network = getattr(switched.policy, name)
        assert [id(l) for l in controller.layers] == [id(l) for l in masked_layers(network)]
        trained = {id(p) for group in network.optimizer.param_groups for p in group["params"]}
        assert all(id(l.weight) in trained for l in controller.layers)
    switched.learn(300)
    dense = _train(algo, "dense")
    assert sparsity_report(switched)["critic"]["topology_updates"] == sparsity_report(dense)["critic"]["topology_updates"] > 0
    for key, value in dense.policy.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(switched.policy.state_dict()[key], value), key


def test_break_even_is_measured_once_cached_and_leaves_rng_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE_RL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(backend_mod, "_memory", {})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    value = backend_mod.break_even_density(24, 20)
    assert torch.equal(torch.rand(3), expected)  # measuring did not move the global RNG
    assert 0.0 <= value <= max(backend_mod.CALIBRATION_DENSITIES)
    cache = json.loads((tmp_path / "break_even.json").read_text())
    assert list(cache.values()) == [value] and "24x20" in next(iter(cache))
    monkeypatch.setattr(backend_mod, "_memory", {})
    monkeypatch.setattr(backend_mod, "measure_break_even", lambda *a, **k: pytest.fail("measured again"))
    assert backend_mod.break_even_density(24, 20) == value  # from the file
    (tmp_path / "break_even.json").write_text("not json")
    monkeypatch.setattr(backend_mod, "_memory", {})
    monkeypatch.setattr(backend_mod, "measure_break_even", lambda *a, **k: 0.25)
    assert backend_mod.break_even_density(24, 20) == 0.25  # a corrupt cache is measured anew and rewritten
    assert json.loads((tmp_path / "break_even.json").read_text())


def test_no_dense_weight_gradient_on_ordinary_steps(monkeypatch):
    """RigL needs the dense gradient on update steps only: the dense product gᵀx runs exactly then."""
    calls = []
    original = kernels.SparseLinearFunction.backward

    def spy(ctx, grad_out):
        calls.append(bool(ctx.owner.capture_dense_grad))
        return original(ctx, grad_out)

    monkeypatch.setattr(kernels.SparseLinearFunction, "backward", staticmethod(spy))
    net = _net(dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    layers = use_sparse_storage_for(net, masked_layers(net), [True] * 3, (), opt)
    cfg = TopologyConfig(topology="rigl", update_interval=10, end_fraction=1.0)
    TopologyController(layers, cfg, seed=0, progress_fn=lambda: 0.0).attach(opt)
    x = torch.randn(16, 8)
    for _ in range(30):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    per_step = [any(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert [i + 1 for i, c in enumerate(per_step) if c] == [10, 20, 30]


def test_dense_gradient_view_gives_the_dense_storage_gradients():
    dense_net = _net(dtype=torch.float32)
    sparse_net = copy.deepcopy(dense_net)
    use_sparse_storage_for(sparse_net, masked_layers(sparse_net), [True] * 3)
    x = torch.randn(16, 8)
    expected = torch.autograd.grad(dense_net(x).pow(2).sum(), list(dense_net.parameters()))
    with dense_gradient_view(sparse_net) as params:
        assert [tuple(p.shape) for p in params] == [tuple(p.shape) for p in dense_net.parameters()]
        got = torch.autograd.grad(sparse_net(x).pow(2).sum(), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert all(m._dense_leaf is None for m in masked_layers(sparse_net))  # back to sparse compute


def test_break_even_needs_sparse_to_win_by_the_margin(monkeypatch):
    # the timings stand in for a machine where sparse costs 5x the density of dense's time
    densities = iter(sorted(backend_mod.CALIBRATION_DENSITIES))  # the order the calibration tries them
    seen = []

    def ratio(dense, sparse, reps):
        seen.append(next(densities))
        return 5 * seen[-1]

    monkeypatch.setattr(backend_mod, "paired_ratio", ratio)
    # 5 * 0.15 = 0.75 and 5 * 0.2 = 1.0: the margin (0.9) stops at 0.2 where 0.15 passes
    assert backend_mod.measure_break_even(24, 20, reps=3) == 0.15
    assert seen[-1] == 0.2  # stopped at the first loss
    monkeypatch.setattr(backend_mod, "paired_ratio", lambda dense, sparse, reps: 0.95)  # faster, not by the margin
    assert backend_mod.measure_break_even(24, 20, reps=3) == 0.0


def test_paired_ratio_alternates_the_order_and_takes_the_median_ratio():
    calls = []
    assert 0 < backend_mod.paired_ratio(lambda: calls.append("d"), lambda: calls.append("s"), reps=4)
    assert calls[6:] == ["d", "s", "s", "d", "d", "s", "s", "d"]  # after 3 warm-up pairs


def test_break_even_entries_of_an_earlier_calibration_are_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSE_RL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(backend_mod, "_memory", {})
    old_key = backend_mod._key(24, 20, 256).rsplit("|calibration", 1)[0]  # the key before versions
    (tmp_path / "break_even.json").write_text(json.dumps({old_key: 0.6}))
    monkeypatch.setattr(backend_mod, "measure_break_even", lambda *a, **k: 0.04)
    assert backend_mod.break_even_density(24, 20) == 0.04
    assert json.loads((tmp_path / "break_even.json").read_text())[backend_mod._key(24, 20, 256)] == 0.04
