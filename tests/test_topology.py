import copy

import pytest
import torch
from torch import nn

from sparse_rl.sparse import MaskedLinear, masked_layers, sparsify
from sparse_rl.topology import (
    TopologyConfig,
    TopologyController,
    available_methods,
    get_schedule,
    make_method,
)


def make_net(seed=0, density=0.2):
    torch.manual_seed(seed)
    net = nn.Sequential(MaskedLinear(8, 32), nn.ReLU(), MaskedLinear(32, 32), nn.ReLU(), MaskedLinear(32, 2))
    sparsify(masked_layers(net), density, "erk", torch.Generator().manual_seed(seed))
    return net


def train_step(net, opt, gen):
    x = torch.randn(64, 8, generator=gen)
    y = torch.randn(64, 2, generator=gen)
    opt.zero_grad()
    ((net(x) - y) ** 2).mean().backward()
    opt.step()


def test_registries_list_methods():
    assert {"static", "set", "rigl"} <= set(available_methods())
    known = ", ".join(available_methods())  # every registered method, sorted
    with pytest.raises(ValueError, match=rf"'foo'; known: {known}$"):
        make_method("foo")
    with pytest.raises(ValueError, match=r"unknown option 'grow_signl' of topology 'rigl'; did you mean 'grow_signal'"):
        make_method("rigl", grow_signl="batch")
    with pytest.raises(ValueError, match=r"'linear'.*constant, cosine"):
        get_schedule("linear")


def test_schedules():
    cosine, constant = get_schedule("cosine"), get_schedule("constant")
    assert cosine(0.0, 0.5, 0.8) == pytest.approx(0.5)
    assert cosine(0.4, 0.5, 0.8) == pytest.approx(0.25)
    assert cosine(0.8, 0.5, 0.8) == 0.0
    assert constant(0.79, 0.3, 0.8) == 0.3
    assert constant(0.8, 0.3, 0.8) == 0.0


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(update_interval=0), ValueError),
        (dict(update_interval=-5), ValueError),
        (dict(update_interval=2.5), TypeError),
        (dict(drop_fraction=0.0), ValueError),
        (dict(drop_fraction=1.5), ValueError),
        (dict(end_fraction=0.0), ValueError),
        (dict(topology="magic"), ValueError),
        (dict(drop_schedule="linear"), ValueError),
    ],
)
def test_config_rejects_bad_values(kwargs, err):
    value = str(next(iter(kwargs.values())))
    with pytest.raises(err, match=value):
        TopologyConfig(**kwargs)


def test_set_drops_each_sign_separately_and_grows_elsewhere():
    w = torch.tensor([[0.5, -0.1, 0.2, -0.9, 0.0, 0.0], [0.05, -0.4, 0.3, -0.02, 0.0, 0.0]])
    mask = w != 0
    res = make_method("set").update_layer(w, mask, 0.5, None, torch.Generator().manual_seed(0))
    # positives 0.5, 0.2, 0.05, 0.3 -> drop 2 smallest (0.05, 0.2); negatives -0.1,-0.9,-0.4,-0.02 -> drop -0.02, -0.1
    expected_dropped = torch.zeros_like(mask)
    for r, c in [(1, 0), (0, 2), (1, 3), (0, 1)]:
        expected_dropped[r, c] = True
    assert torch.equal(res.dropped, expected_dropped)
    assert int(res.mask.sum()) == int(mask.sum())
    assert not (res.mask & ~res.grown & ~mask).any()


def test_rigl_grows_where_dense_gradient_is_largest():
    w = torch.tensor([[1.0, 0.0, 0.0], [0.1, 2.0, 0.0]])
    mask = w != 0
    grad = torch.tensor([[0.0, 5.0, 0.1], [0.0, 0.0, 3.0]])
    res = make_method("rigl").update_layer(w, mask, 0.34, grad, torch.Generator().manual_seed(0))
    assert res.dropped.nonzero().tolist() == [[1, 0]]  # smallest magnitude
    assert res.grown.nonzero().tolist() == [[0, 1]]  # largest |grad| among non-kept
    assert int(res.mask.sum()) == 3


@pytest.mark.parametrize("topology", ["set", "rigl"])
def test_invariants_over_many_updates(topology):
    net = make_net()
    layers = masked_layers(net)
    target = make_net(seed=1)
    target.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    config = TopologyConfig(
        topology=topology, update_interval=5, drop_fraction=0.3, drop_schedule="constant", end_fraction=1.0
    )
    ctrl = TopologyController(layers, config, seed=0, targets=[masked_layers(target)], progress_fn=lambda: 0.0)
    ctrl.attach(opt)
    nnz = [l.nnz for l in layers]
    gen = torch.Generator().manual_seed(0)
    checked = []

    def check(c):
        for i, layer in enumerate(layers):
            assert layer.nnz == nnz[i]
            grown = layer.mask & ~before[i]
            assert torch.all(layer.weight[grown] == 0)
            state = opt.state[layer.weight]
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.all(state[key][~layer.mask] == 0), key
                assert torch.all(state[key][grown] == 0), key
            t = masked_layers(target)[i]
            assert torch.equal(t.mask, layer.mask)
            assert torch.all(t.weight[~layer.mask] == 0)
        checked.append(c.last_grown)

    ctrl.listeners.append(check)
    for _ in range(300):
        before = [l.mask.clone() for l in layers]
        train_step(net, opt, gen)
    assert ctrl.n_updates == 60 == len(checked)
    assert all(n > 0 for n in checked)
    assert ctrl.stats()["itop_rate"] > ctrl.stats()["density"]


def test_absent_weights_stay_exactly_zero_under_adam():
    net = make_net(density=0.1)
    layers = masked_layers(net)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    ctrl = TopologyController(layers, TopologyConfig(topology="static"), seed=0, progress_fn=lambda: 0.0)
    ctrl.attach(opt)
    masks = [l.mask.clone() for l in layers]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3000):
        train_step(net, opt, gen)
    for layer, mask in zip(layers, masks):
        assert torch.equal(layer.mask, mask)
        assert torch.all(layer.weight[~mask] == 0)
        assert torch.all(opt.state[layer.weight]["exp_avg"][~mask] == 0)
        assert torch.all(opt.state[layer.weight]["exp_avg_sq"][~mask] == 0)
        assert (layer.weight[mask] != 0).float().mean() > 0.99


def test_frozen_after_end_fraction():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    progress = {"p": 0.0}
    config = TopologyConfig(topology="set", update_interval=2, end_fraction=0.5, drop_schedule="constant")
    ctrl = TopologyController(masked_layers(net), config, seed=0, progress_fn=lambda: progress["p"])
    ctrl.attach(opt)
    gen = torch.Generator().manual_seed(0)
    for i in range(20):
        progress["p"] = i / 20
        train_step(net, opt, gen)
    assert ctrl.n_updates == 5  # steps 2, 4, 6, 8, 10 fall before progress 0.5


def test_controller_state_round_trip_gives_identical_updates():
    def run(state=None, steps=40):
        net = make_net()
        opt = torch.optim.Adam(net.parameters())
        config = TopologyConfig(topology="set", update_interval=10, drop_schedule="constant")
        ctrl = TopologyController(masked_layers(net), config, seed=7, progress_fn=lambda: 0.0)
        ctrl.attach(opt)
        if state is not None:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
        gen = torch.Generator().manual_seed(0)
        return net, opt, ctrl, gen

    net, opt, ctrl, gen = run()
    for _ in range(20):
        train_step(net, opt, gen)
    saved = {"net": net.state_dict(), "opt": opt.state_dict()}
    saved = copy.deepcopy(saved)
    assert "network" in saved["opt"]["sparse_rl_topology"]  # training state rides with the optimizer
    assert not ctrl.state_dict()  # ... not with the module: a policy's state_dict holds tensors only
    net2, opt2, ctrl2, _ = run(saved)
    assert ctrl2.step == ctrl.step == 20
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(20):
        train_step(net, opt, gen_a)
        train_step(net2, opt2, gen_b)
    for a, b in zip(masked_layers(net), masked_layers(net2)):
        assert torch.equal(a.mask, b.mask)
        assert torch.equal(a.weight, b.weight)


def _loss(net, x, y):
    return ((net(x) - y) ** 2).mean()


def test_accumulated_grow_signal_equals_concatenated_batches():
    """With the weights held fixed (lr 0), the mean of k batch gradients is the concatenated batch's
    gradient, so accumulating k batches must grow exactly what RigL grows from the concatenated batch."""
    k = 4
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen)) for _ in range(k)]
    config = TopologyConfig(
        topology="rigl",
        update_interval=8,
        drop_fraction=0.3,
        drop_schedule="constant",
        topology_kwargs=dict(grow_signal="accumulate", grow_batches=k),
    )
    net = make_net(seed=5)
    reference = make_net(seed=5)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    ctrl = TopologyController(masked_layers(net), config, seed=0, progress_fn=lambda: 0.0)
    ctrl.attach(opt)
    seen = []
    ctrl.listeners.append(lambda c: seen.append([l.mask.clone() for l in c.layers]))
    noise = (torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen))
    for step in range(8):  # steps 1..4 are outside the window, 5..8 inside, 8 updates
        x, y = batches[step - 4] if step >= 4 else noise
        opt.zero_grad()
        _loss(net, x, y).backward()
        opt.step()
    assert ctrl.n_updates == 1

    ref_layers = masked_layers(reference)
    reference.zero_grad()
    _loss(reference, torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])).backward()
    generator = torch.Generator()
    generator.set_state(TopologyController(ref_layers, config, seed=0).training_state()["rng_state"])
    for layer, mask in zip(ref_layers, seen[0]):
        expected = make_method("rigl").update_layer(layer.weight, layer.mask, 0.3, layer.weight.grad, generator)
        assert torch.equal(expected.mask, mask)


def test_momentum_grow_signal_is_an_exponential_average():
    config = TopologyConfig(
        topology="rigl", update_interval=3, topology_kwargs=dict(grow_signal="momentum", grow_momentum=0.5),
        drop_schedule="constant",
    )
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    ctrl = TopologyController(masked_layers(net), config, seed=0, progress_fn=lambda: 0.0)
    ctrl.attach(opt)
    gen = torch.Generator().manual_seed(0)
    grads = []
    for _ in range(2):
        x, y = torch.randn(8, 8, generator=gen), torch.randn(8, 2, generator=gen)
        opt.zero_grad()
        _loss(net, x, y).backward()
        grads.append(masked_layers(net)[1].weight.grad.clone())
        opt.step()
    # ema_1 = 0.5 * g1 ; ema_2 = 0.5 * ema_1 + 0.5 * g2
    torch.testing.assert_close(ctrl.training_state()["method"]["grow_signal"][1], 0.25 * grads[0] + 0.5 * grads[1])


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(topology_kwargs=dict(grow_signal="ema")), "'ema'.*batch, accumulate, momentum"),
        (dict(topology_kwargs=dict(grow_batches=0)), "grow_batches"),
        (dict(topology_kwargs=dict(grow_batches=5), update_interval=4), "cannot exceed"),
        (dict(topology_kwargs=dict(grow_momentum=1.0)), "grow_momentum"),
        (dict(topology="set", topology_kwargs=dict(grow_signal="momentum")), "do not apply to topology 'set'"),
        (dict(topology="static", topology_kwargs=dict(grow_signal="momentum")), "unknown option 'grow_signal'"),
        (dict(topology_kwargs=dict(dormant_tau=-1)), "dormant_tau must be a number >= 0"),
    ],
)
def test_method_option_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TopologyConfig(**kwargs)


def test_dormant_fraction_on_a_constructed_network():
    from sparse_rl.topology.layer_diagnostics import dormant_neurons

    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.fill_(0.0)
        # layer 1: neurons output 1, 1, 1, 1, 0 (dead), 0.05 (score 0.05 / 0.675 = 0.074 <= 0.1)
        net[0].bias.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, 0.05]))
        # layer 2: inputs are the constant layer-1 outputs; biases make outputs 2, 2, 0, 0.5 (score 0.44)
        net[2].bias.copy_(torch.tensor([2.0, 2.0, -3.0, 0.5]))
    x = torch.randn(32, 4)
    result = dormant_neurons(net, lambda: net(x), tau=0.1)
    assert result["layers"] == [pytest.approx(2 / 6), pytest.approx(1 / 4)]
    assert result["fraction"] == pytest.approx(3 / 10)
    assert result["masks"][0].tolist() == [False, False, False, False, True, True]
    strict = dormant_neurons(net, lambda: net(x), tau=0.0)
    assert strict["fraction"] == pytest.approx(2 / 10)


def test_gradient_snr_agreeing_vs_noisy_batches():
    from sparse_rl.topology.layer_diagnostics import gradient_snr

    w = torch.zeros(3, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 0.5])
    same = [lambda: ((w - target) ** 2).sum() for _ in range(4)]
    assert gradient_snr([w], same) > 1e6  # identical gradients: no noise
    gen = torch.Generator().manual_seed(0)
    noisy_targets = [torch.randn(3, generator=gen) * 10 for _ in range(8)]
    noisy = [lambda t=t: ((w - t) ** 2).sum() for t in noisy_targets]
    assert gradient_snr([w], noisy) < 1.0


def test_rewire_dormant_rows_keeps_counts_and_restarts_outgoing():
    net = make_net(density=0.3)
    layers = masked_layers(net)
    target = make_net(seed=1, density=0.3)
    target.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    # drop fraction ~0: SET itself changes nothing, so per-row counts isolate the rewiring
    config = TopologyConfig(
        topology="set", update_interval=4, drop_fraction=1e-6, drop_schedule="constant",
        topology_kwargs=dict(rewire_dormant=True),
    )
    ctrl = TopologyController(layers, config, seed=0, targets=[masked_layers(target)], progress_fn=lambda: 0.0)
    ctrl.attach(opt)
    dormant = torch.zeros(32, dtype=torch.bool)
    dormant[[3, 7]] = True
    ctrl.dormant_fn = lambda: {1: (dormant, [2])}
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        train_step(net, opt, gen)
    row_counts = layers[1].mask.sum(dim=1).clone()
    nnz = [l.nnz for l in layers]
    train_step(net, opt, gen)  # step 4: SET update, then rewiring
    assert ctrl.last_rewired == 2
    assert [l.nnz for l in layers] == nnz
    assert torch.equal(layers[1].mask.sum(dim=1)[[3, 7]], row_counts[[3, 7]])
    for r in (3, 7):
        active = layers[1].mask[r]
        assert torch.all(layers[1].weight[r][active] != 0) and torch.all(layers[1].weight[r][~active] == 0)
        assert torch.all(opt.state[layers[1].weight]["exp_avg"][r] == 0)
        assert torch.all(layers[2].weight[:, r] == 0)  # outgoing restarts at zero
        assert torch.all(opt.state[layers[2].weight]["exp_avg_sq"][:, r] == 0)
    t = masked_layers(target)
    assert torch.equal(t[1].mask, layers[1].mask)
    torch.testing.assert_close(t[1].weight[[3, 7]], layers[1].weight[[3, 7]])
    assert torch.all(t[2].weight[:, [3, 7]] == 0)
