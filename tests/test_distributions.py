import math

import pytest
import torch

from sparse_rl.sparse import MaskedLinear, layer_nonzeros, random_mask, sparsify

SHAPES = [(256, 17), (256, 256), (6, 256)]  # (out, in): an actor for HalfCheetah


def test_er_hand_computed():
    # raw scores (in+out)/(in*out): 273/4352, 512/65536, 262/1536; total 71424, budget round(7142.4) = 7142.
    # eps = 7142/1047 = 6.82 makes the last layer's density 1.16 > 1, so it becomes dense (1536 weights);
    # the remaining 5606 are shared 273:512 -> 1949.61 and 3656.39, largest remainder gives 1950, 3656.
    assert layer_nonzeros(SHAPES, 0.1, "er") == [1950, 3656, 1536]


def test_erk_equals_er_for_linear_layers_and_differs_for_kernels():
    assert layer_nonzeros(SHAPES, 0.1, "erk") == layer_nonzeros(SHAPES, 0.1, "er")
    conv = [(32, 16, 3, 3), (64, 32, 3, 3)]
    # ERK raw: (32+16+3+3)/4608 and (64+32+3+3)/18432; ER ignores the kernel dims.
    erk = layer_nonzeros(conv, 0.2, "erk")
    total = 4608 + 18432
    budget = round(0.2 * total)
    eps = budget / (54 + 102)
    assert erk == [round(eps * 54), budget - round(eps * 54)]


def test_uniform_equal_density_and_exact_total():
    counts = layer_nonzeros(SHAPES, 0.2, "uniform")
    sizes = [math.prod(s) for s in SHAPES]
    assert sum(counts) == round(0.2 * sum(sizes))
    for c, n in zip(counts, sizes):
        assert abs(c / n - 0.2) < 1e-3


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
@pytest.mark.parametrize("density", [0.02, 0.05, 0.1, 0.3, 0.77, 1.0])
def test_global_density_exact(distribution, density):
    counts = layer_nonzeros(SHAPES, density, distribution)
    assert sum(counts) == round(density * sum(math.prod(s) for s in SHAPES))
    assert all(0 <= c <= math.prod(s) for c, s in zip(counts, SHAPES))


def test_dense_layers_count_towards_budget():
    counts = layer_nonzeros(SHAPES, 0.2, "erk", dense_layers=[True, False, False])
    assert counts[0] == 256 * 17
    assert sum(counts) == round(0.2 * 71424)


def test_dense_layers_over_budget_is_an_error():
    with pytest.raises(ValueError, match="kept dense"):
        layer_nonzeros(SHAPES, 0.05, "erk", dense_layers=[True, False, True])


def test_bad_distribution_and_density():
    with pytest.raises(ValueError, match=r"'erx'.*er, erk, uniform"):
        layer_nonzeros(SHAPES, 0.1, "erx")
    with pytest.raises(ValueError, match="1.5"):
        layer_nonzeros(SHAPES, 1.5, "er")
    with pytest.raises(ValueError, match="0"):
        layer_nonzeros(SHAPES, 0.0, "er")


def test_random_mask_exact_count_and_seeded():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m1, m2 = random_mask((40, 30), 123, g1), random_mask((40, 30), 123, g2)
    assert m1.dtype == torch.bool and int(m1.sum()) == 123
    assert torch.equal(m1, m2)


def test_sparsify_zeroes_absent_weights_and_sparse_init_rescales():
    torch.manual_seed(0)
    layers = [MaskedLinear(50, 40), MaskedLinear(40, 30)]
    dense_w = [l.weight.detach().clone() for l in layers]
    counts = sparsify(layers, 0.25, "erk", torch.Generator().manual_seed(0), sparse_init=True)
    for layer, n, w0 in zip(layers, counts, dense_w):
        assert layer.nnz == n
        assert torch.all(layer.weight[~layer.mask] == 0)
        fan_in = layer.mask.sum(1, keepdim=True).clamp(min=1)
        expected = (w0 * layer.mask) * torch.sqrt(layer.in_features / fan_in)
        torch.testing.assert_close(layer.weight.detach(), expected)
        assert torch.equal(layer.explored, layer.mask)
    assert "mask" in dict(layers[0].named_buffers())
