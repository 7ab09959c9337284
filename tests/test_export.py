import itertools
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import DQN, PPO, SAC, TD3
from torch import nn

from sparse_rl import SparseSACPolicy, SparseTD3Policy
from sparse_rl.export import cli, formats
from sparse_rl.export.compile import CPolicy, arm_toolchain, cortex_m4_size
from sparse_rl.export.graph import ExportError, extract_actor
from sparse_rl.export.runtime import SparsePolicy

FLOAT_TOL = 1e-5  # of the action range
# int8 (symmetric, per output row) against float32 torch, as a fraction of the action range: the
# bound documented in docs/embedded.md
INT8_MAX_TOL = 0.05
INT8_MEAN_TOL = 0.01


def trained(algo, policy, env_id, sparsity=0.9, steps=300, net_arch=(64, 64), backend="auto"):
    model = algo(
        policy,
        env_id,
        policy_kwargs=dict(sparsity=sparsity, net_arch=list(net_arch), update_interval=50, backend=backend),
        learning_starts=100,
        batch_size=64,
        seed=0,
    )
    model.learn(steps)
    return model


@pytest.fixture(scope="module", params=["sac", "td3"])
def model(request):
    # one model per storage of the sparse layers: exports read the same dense weights from both
    if request.param == "sac":
        return trained(SAC, SparseSACPolicy, "Pendulum-v1", backend="sparse")
    return trained(TD3, SparseTD3Policy, "Pendulum-v1", backend="dense")


def observations(model, n=1000, seed=0):
    space = model.observation_space
    low = np.maximum(space.low, -5.0)
    high = np.minimum(space.high, 5.0)
    return np.random.default_rng(seed).uniform(low, high, size=(n, space.shape[0])).astype(np.float32)


def torch_actions(model, obs):
    return model.predict(obs, deterministic=True)[0]


def action_range(model):
    return float(np.max(model.action_space.high - model.action_space.low))


def test_graph_matches_torch(model):
    obs = observations(model)
    graph = extract_actor(model)
    assert np.abs(graph.forward(obs) - torch_actions(model, obs)).max() <= FLOAT_TOL * action_range(model)
    assert graph.stats()["density"] < 0.2


def test_numpy_runtime_parity(model, tmp_path):
    path = tmp_path / "p.npz"
    assert cli.main([str(_zip(model, tmp_path)), "--format", "sparse", "--out", str(path)]) == 0
    obs = observations(model)
    err = np.abs(SparsePolicy.load(path).act(obs) - torch_actions(model, obs)).max()
    assert err <= FLOAT_TOL * action_range(model)


def test_onnx_runtime_parity(model, tmp_path):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "p.onnx"
    assert cli.main([str(_zip(model, tmp_path)), "--format", "onnx", "--out", str(path)]) == 0
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    obs = observations(model)
    err = np.abs(sess.run(None, {"obs": obs})[0] - torch_actions(model, obs)).max()
    assert err <= FLOAT_TOL * action_range(model)


@pytest.mark.parametrize("dense", [False, True])
def test_c_float32_parity_and_clean_compile(model, tmp_path, dense):
    graph = extract_actor(model)
    out = tmp_path / "c"
    cli.export(graph, "c", out, prefix="my_ctrl", dense=dense)
    source = (out / "policy.c").read_text()
    assert "malloc" not in source and "#include <math.h>" in source
    assert [line for line in source.splitlines() if line.startswith("#include")] == [
        '#include "policy.h"',
        "#include <math.h>",
    ]
    assert "void my_ctrl_act(const float *obs, float *action);" in (out / "policy.h").read_text()
    c = CPolicy(out, "my_ctrl", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"])
    assert c.warnings == ""
    obs = observations(model)
    assert np.abs(c.act(obs) - torch_actions(model, obs)).max() <= FLOAT_TOL * action_range(model)


def test_int8_parity(model, tmp_path):
    graph = extract_actor(model)
    cli.export(graph, "c", tmp_path / "c8", quantize="int8")
    cli.export(graph, "sparse", tmp_path / "p8.npz", quantize="int8")
    c8 = CPolicy(tmp_path / "c8", "sparse_rl_policy", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"])
    np8 = SparsePolicy.load(tmp_path / "p8.npz")
    obs = observations(model)
    ref = torch_actions(model, obs)
    rng = action_range(model)
    a_c, a_np = c8.act(obs), np8.act(obs)
    assert np.abs(a_c - a_np).max() <= FLOAT_TOL * rng  # same arithmetic in both runtimes
    assert np.abs(a_c - ref).max() <= INT8_MAX_TOL * rng
    assert np.abs(a_c - ref).mean() <= INT8_MEAN_TOL * rng


def test_mixed_keeps_the_input_layer_float32(model, tmp_path):
    """``--quantize mixed``: int8 weights but the input layer's (where large raw observations meet the rounding);
    C and the numpy runtime compute the same, the error stays within int8's bounds, the file says which layer
    holds what, and the C's bytes fall between int8's and float32's."""
    import json

    graph = extract_actor(model)
    cli.export(graph, "c", tmp_path / "cm", quantize="mixed")
    cli.export(graph, "sparse", tmp_path / "pm.npz", quantize="mixed")
    source = (tmp_path / "cm" / "policy.c").read_text()
    assert "static const float l0_val[" in source and "static const signed char l1_val[" in source
    cm = CPolicy(tmp_path / "cm", "sparse_rl_policy", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"])
    obs = observations(model)
    ref, rng = torch_actions(model, obs), action_range(model)
    assert np.abs(cm.act(obs) - SparsePolicy.load(tmp_path / "pm.npz").act(obs)).max() <= FLOAT_TOL * rng
    assert np.abs(cm.act(obs) - ref).max() <= INT8_MAX_TOL * rng and np.abs(cm.act(obs) - ref).mean() <= INT8_MEAN_TOL * rng
    with np.load(tmp_path / "pm.npz") as f:
        meta = json.loads(bytes(f["meta"]).decode())
    assert meta["dtype"] == "mixed" and [layer["dtype"] for layer in meta["layers"]] == ["float32", "int8", "int8"]
    sizes = [cli.c_weight_bytes(graph, q) for q in ("int8", "mixed", "none")]
    assert sizes[0] < sizes[1] < sizes[2]


def test_sparse_file_size_shrinks_with_density(tmp_path):
    sizes = {}
    for sparsity in (0.0, 0.9, 0.98):
        m = SAC(SparseSACPolicy, "HalfCheetah-v5", policy_kwargs=dict(sparsity=sparsity), seed=0)
        graph = extract_actor(m)
        for q in ("none", "int8"):
            data = formats.sparse_file_bytes(graph, q)
            assert len(data) <= 1.2 * formats.sparse_payload_bytes(graph, q) + 4096, (sparsity, q)
            sizes[sparsity, q] = len(data)
    assert sizes[0.98, "none"] < sizes[0.9, "none"] < 0.2 * sizes[0.0, "none"]
    assert sizes[0.9, "int8"] < 0.6 * sizes[0.9, "none"]


def test_numpy_runtime_imports_no_torch(model, tmp_path):
    path = tmp_path / "p.npz"
    cli.export(extract_actor(model), "sparse", path)
    code = (
        "import sys, numpy as np\n"
        "from sparse_rl.export.runtime import SparsePolicy\n"
        f"p = SparsePolicy.load({str(path)!r})\n"
        "a = p.act(np.zeros(3, dtype=np.float32))\n"
        "assert a.shape == (1,), a.shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with np.load(path, allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)
        assert f["l0_indices"].dtype == np.uint8


def test_closed_loop_halfcheetah_c_vs_torch(tmp_path):
    model = trained(SAC, SparseSACPolicy, "HalfCheetah-v5", net_arch=(256, 256))
    graph = extract_actor(model)
    cli.export(graph, "c", tmp_path / "c")
    c = CPolicy(tmp_path / "c", "sparse_rl_policy", graph.obs_dim, graph.act_dim)

    def rollout(act):
        env = gym.make("HalfCheetah-v5")
        obs, _ = env.reset(seed=123)
        actions, ret = [], 0.0
        for _ in range(200):
            a = act(obs.astype(np.float32))
            actions.append(a)
            obs, r, term, trunc, _ = env.step(a)
            ret += r
            assert not (term or trunc)
        return np.array(actions), ret

    a_torch, r_torch = rollout(lambda o: torch_actions(model, o))
    a_c, r_c = rollout(c.act)
    assert np.abs(a_torch - a_c).max() <= 1e-4
    assert abs(r_torch - r_c) <= 0.01 * abs(r_torch)


@pytest.mark.skipif(arm_toolchain() is None, reason="gcc-arm-none-eabi not installed: Cortex-M4 size step skipped")
def test_cortex_m4_build_and_report(model, tmp_path, capsys):
    graph = extract_actor(model)
    cli.export(graph, "c", tmp_path / "c")
    cli.export(graph, "c", tmp_path / "cd", dense=True)
    sparse, dense = cortex_m4_size(tmp_path / "c"), cortex_m4_size(tmp_path / "cd")
    assert sparse["flash"] < 0.2 * dense["flash"]
    assert sparse["ram"] == dense["ram"] > 0  # the static scratch buffers
    assert cli.main([str(_zip(model, tmp_path)), "--report"]) == 0
    out = capsys.readouterr().out
    assert "Cortex-M4F" in out and "sparse .npz int8" in out


def _zip(model, tmp_path):
    path = tmp_path / "model.zip"
    if not path.exists():
        model.save(path)
    return path


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def test_bad_input(tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        ([tmp_path / "missing", "--format", "c", "--out", out], "does not exist"),
        ([tmp_path / "garbage.zip", "--format", "c", "--out", out], "not a readable SB3 model zip"),
        ([tmp_path / "norun", "--format", "c", "--out", out], "has no config.yaml"),
        ([tmp_path / "sde.zip", "--format", "c", "--out", out], "unsupported policy: SAC with gSDE"),
        ([tmp_path / "sde.zip", "--verify-on", "qemu-cortex-m4"], "--verify-on needs a run directory"),
        ([tmp_path / "norun", "--verify-on", "qemu-cortex-m4", "--quantize", "int4"], "--quantize must be one of"),
        ([tmp_path / "norun", "--verify-on", "qemu-cortex-m4", "--steps", "0"], "--steps must be positive"),
    ]
    (tmp_path / "garbage.zip").write_bytes(b"PK\x03\x04 definitely not a zip")
    (tmp_path / "norun").mkdir()
    SAC("MlpPolicy", "Pendulum-v1", use_sde=True).save(tmp_path / "sde.zip")
    for argv, needle in cases:
        code, lines = run_cli(argv, capsys)
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (argv, lines)
    assert not out.exists()


def test_bad_output_and_unsupported_policies(model, tmp_path, capsys):
    zip_path = _zip(model, tmp_path)
    before = set(tmp_path.iterdir())
    code, lines = run_cli([zip_path, "--format", "onnx", "--quantize", "int8", "--out", tmp_path / "x.onnx"], capsys)
    assert code == 2 and "not ONNX" in lines[0]
    code, lines = run_cli([zip_path, "--format", "sparse", "--out", "/proc/nope/p.npz"], capsys)
    assert code == 2 and len(lines) == 1 and "cannot write" in lines[0]
    code, lines = run_cli([zip_path, "--format", "c", "--prefix", "9bad", "--out", tmp_path / "c"], capsys)
    assert code == 2 and "not a C identifier" in lines[0]
    assert set(tmp_path.iterdir()) == before  # nothing partial left behind
    with pytest.raises(ExportError, match="gSDE"):
        extract_actor(SAC("MlpPolicy", "Pendulum-v1", use_sde=True))
    with pytest.raises(ExportError, match="ELU"):
        extract_actor(SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(activation_fn=nn.ELU)))


def test_dense_sb3_model_exports(tmp_path):
    m = TD3("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[32, 32]), seed=0)
    graph = extract_actor(m)
    assert graph.stats()["density"] == 1.0
    cli.export(graph, "sparse", tmp_path / "d.npz")
    obs = observations(m, 100)
    assert np.abs(SparsePolicy.load(tmp_path / "d.npz").act(obs) - torch_actions(m, obs)).max() <= FLOAT_TOL * 4


def test_custom_features_extractor_is_refused():
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class Conv1dFeatures(BaseFeaturesExtractor):
        def __init__(self, observation_space):
            super().__init__(observation_space, features_dim=8)
            self.net = nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Conv1d(1, 8, 3), nn.Flatten())

        def forward(self, obs):
            return self.net(obs)

    model = SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(features_extractor_class=Conv1dFeatures))
    with pytest.raises(ExportError, match="Conv1dFeatures"):
        extract_actor(model)


def test_run_without_model(tmp_path, capsys):
    from sparse_rl.config import config_to_dict, resolve_config
    from sparse_rl.run_directory import write_yaml

    run = tmp_path / "run"
    config = config_to_dict(resolve_config("sac", "Pendulum-v1"))
    write_yaml(run / "config.yaml", {"algo": "sac", "env": "Pendulum-v1", "seed": 0, "label": "x", "config": config})
    code, lines = run_cli([run, "--format", "sparse", "--out", tmp_path / "p.npz"], capsys)
    assert code == 2 and len(lines) == 1 and "has no model yet" in lines[0]
    assert not (tmp_path / "p.npz").exists()


# ------------------------------------------------------------------------------------------------ N:M layout
@pytest.fixture(scope="module", params=[("sac", "2:4"), ("td3", "1:8")])
def nm_model(request):
    algo, structure = request.param
    n, m = (int(x) for x in structure.split(":"))
    kwargs = dict(sparsity=1 - n / m, distribution="uniform", structure=structure, net_arch=[64, 64], update_interval=50,
                  topology="rigl", backend="sparse" if algo == "sac" else "dense")
    cls, policy = (SAC, SparseSACPolicy) if algo == "sac" else (TD3, SparseTD3Policy)
    model = cls(policy, "Pendulum-v1", policy_kwargs=kwargs, learning_starts=100, batch_size=64, seed=0)
    model.learn(300)
    return model, n, m


def test_nm_layout_costs_log2_m_bits_per_nonzero_and_matches_torch(nm_model, tmp_path):
    import json

    from sparse_rl.export.runtime import offset_bits

    model, n, m = nm_model
    graph = extract_actor(model)
    assert all(layer.nm() == (n, m) for layer in graph.layers[1:])  # the 3-input first layer: min(n, 3) per group
    path = tmp_path / "nm.npz"
    cli.export(graph, "sparse", path)
    with np.load(path) as f:
        meta = json.loads(bytes(f["meta"]).decode())
        for i, entry in enumerate(meta["layers"]):
            assert entry["layout"] == "nm" and entry["m"] == m
            slots = f[f"l{i}_values"].size
            assert f[f"l{i}_offsets"].nbytes == -(-slots * offset_bits(m) // 8) + 1  # log2(M) bits per slot
            assert f"l{i}_indices" not in f.files
    obs = observations(model)
    rng = action_range(model)
    assert np.abs(SparsePolicy.load(path).act(obs) - torch_actions(model, obs)).max() <= FLOAT_TOL * rng
    out = tmp_path / "c"
    cli.export(graph, "c", out)
    assert "N:M layout" in (out / "policy.c").read_text()
    c = CPolicy(out, "sparse_rl_policy", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"])
    assert c.warnings == ""
    assert np.abs(c.act(obs) - torch_actions(model, obs)).max() <= FLOAT_TOL * rng
    cli.export(graph, "c", tmp_path / "c8", quantize="int8")
    cli.export(graph, "sparse", tmp_path / "p8.npz", quantize="int8")
    c8 = CPolicy(tmp_path / "c8", "sparse_rl_policy", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"])
    a_c, a_np, ref = c8.act(obs), SparsePolicy.load(tmp_path / "p8.npz").act(obs), torch_actions(model, obs)
    assert np.abs(a_c - a_np).max() <= FLOAT_TOL * rng
    assert np.abs(a_c - ref).max() <= INT8_MAX_TOL * rng and np.abs(a_c - ref).mean() <= INT8_MEAN_TOL * rng


def test_a_corrupt_nm_offset_is_named(nm_model, tmp_path):
    from sparse_rl.export.runtime import PolicyFileError

    model, _, _ = nm_model
    path = tmp_path / "nm.npz"
    cli.export(extract_actor(model), "sparse", path)
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    data["l1_offsets"] = data["l1_offsets"][:-2]
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(PolicyFileError, match=r"layer 1: l1_offsets has shape"):
        SparsePolicy.load(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "n, m, loops",
    [(1, 2, "both"), (2, 4, "both"), (1, 8, "both"), (2, 16, "chunk"), (3, 8, "stream"), (5, 16, "stream"), (2, 32, "stream")],
)
def test_nm_c_loops_match_numpy_for_any_n_m(n, m, loops, tmp_path):
    """Hand-built N:M layers (random per-group patterns, some groups short of n) of widths that give both C
    loops: unrolled chunks where every row starts on a chunk boundary, the bit stream elsewhere (rows
    straddling bytes, chunks wider than 32 bits)."""
    from sparse_rl.export.graph import ActorGraph, Layer

    rng = np.random.default_rng(n * 100 + m)
    widths = [9, 8 * m, 3 * m + 1, 8 * m, 3]
    layers = []
    for i, (inp, out) in enumerate(itertools.pairwise(widths)):
        groups = -(-inp // m)
        keep = np.zeros((out, groups * m), dtype=bool)
        for r in range(out):
            for g in range(groups):
                k = rng.integers(0, n + 1)  # 0..n nonzeros in this group
                keep[r, g * m + rng.choice(m, size=k, replace=False)] = True
        keep = keep[:, :inp]
        keep[:, 0] |= ~keep.any(1)
        weight = (rng.normal(size=(out, inp)) * keep).astype(np.float32)
        layers.append(Layer(weight, rng.normal(size=out).astype(np.float32) * 0.1, "identity" if i == 3 else "relu", m))
    graph = ActorGraph(layers, "tanh", -np.ones(3, np.float32), 2 * np.ones(3, np.float32), "sac")
    assert all(layer.nm() is not None for layer in graph.layers)
    cli.export(graph, "c", tmp_path / "c")
    source = (tmp_path / "c" / "policy.c").read_text()
    c = CPolicy(tmp_path / "c", "sparse_rl_policy", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"])
    assert c.warnings == ""
    obs = rng.normal(size=(64, 9)).astype(np.float32)
    assert np.abs(c.act(obs) - graph.forward(obs)).max() <= FLOAT_TOL * 3
    assert ("w = " in source) == (loops in ("chunk", "both")) and ("have" in source) == (loops in ("stream", "both"))


def test_inputs_without_connections_are_dropped_and_every_format_agrees(tmp_path, capsys):
    """An actor whose input layer reads only some features (ANF on noise features) exports a C function that
    takes only those (fewer sensors); the .npz and ONNX take the env's whole observation and pick them."""
    import onnxruntime as ort

    from sparse_rl.envs import make_env

    env = make_env("Pendulum", seed=0, wrappers={"noise_fraction": 0.75})  # 3 real + 9 noise features
    model = SAC(SparseSACPolicy, env, policy_kwargs=dict(topology="set", input_layer_sparsity=0.5, net_arch=[16, 16],
                                                          backend="dense"), learning_starts=50, batch_size=32, seed=0)
    model.learn(100)
    first = model.policy.actor.latent_pi[0]
    mask = first.mask.clone()
    mask[:, [4, 7, 10]] = False  # three noise features left without a connection
    first.set_mask(mask)
    first.apply_mask()
    graph = extract_actor(model)
    assert graph.env_obs_dim == 12 and graph.obs_dim == 9
    assert graph.input_index.tolist() == [i for i in range(12) if i not in (4, 7, 10)]
    obs = observations(model)
    expected = torch_actions(model, obs)
    tol = FLOAT_TOL * action_range(model)
    assert np.abs(graph.forward(obs) - expected).max() <= tol
    path = tmp_path / "p.npz"
    path.write_bytes(formats.sparse_file_bytes(graph))
    policy = SparsePolicy.load(path)
    assert np.abs(policy.act(obs) - expected).max() <= tol  # the whole observation
    assert np.abs(policy.act(obs[:, graph.input_index]) - expected).max() <= tol  # or the features it reads
    onnx_path = tmp_path / "p.onnx"
    onnx_path.write_bytes(formats.onnx_bytes(graph))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"obs": obs})[0] - expected).max() <= tol
    cli.export(graph, "c", tmp_path / "c")
    header = (tmp_path / "c" / "policy.h").read_text()
    assert "#define SPARSE_RL_POLICY_OBS_DIM 9" in header and "#define SPARSE_RL_POLICY_ENV_OBS_DIM 12" in header
    assert "#define SPARSE_RL_POLICY_INPUT_INDEX {0, 1, 2, 3, 5, 6, 8, 9, 11}" in header
    c = CPolicy(tmp_path / "c", "sparse_rl_policy", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"])
    assert np.abs(c.act(obs[:, graph.input_index]) - expected).max() <= tol
    assert any("inputs read: 9 of the env's 12" in line for line in cli.report(graph))


@pytest.mark.parametrize("quantize", ["none", "int8", "mixed"])
def test_the_c_computes_on_an_emulated_cortex_m4_what_torch_computes(model, quantize):
    """The exported C built for a Cortex-M4F (hard float) and run on QEMU's mps2-an386 board, on observations
    of a real trajectory: float32 within 1e-5 of the action range, int8 within the documented bounds."""
    from sparse_rl.export.qemu import missing_tools, record_observations, run_on_qemu

    missing = missing_tools()
    if missing:
        pytest.skip(f"needs Debian's {', '.join(missing)} (.ci/run installs them)")
    graph = extract_actor(model)
    obs = record_observations(model, "Pendulum-v1", 300, seed=5)
    actions = run_on_qemu(graph, obs, quantize)
    diff = np.abs(actions - torch_actions(model, obs)) / action_range(model)
    tol = cli.VERIFY_TOL[quantize]
    assert actions.shape == (300, 1) and diff.max() <= tol["max"] and diff.mean() <= tol["mean"], (diff.max(), diff.mean())
    if quantize == "none":
        assert diff.max() <= FLOAT_TOL


@pytest.mark.skipif(arm_toolchain() is None, reason="gcc-arm-none-eabi not installed: Cortex-M4 budget check skipped")
def test_a_run_is_checked_against_a_chip_budget(model, tmp_path, capsys):
    zipped = _zip(model, tmp_path)
    graph = extract_actor(model)
    cli.export(graph, "c", tmp_path / "c")
    size = cortex_m4_size(tmp_path / "c")
    def budget(*argv):
        code = cli.main([str(zipped), "--target", "cortex-m4", *argv])
        return code, capsys.readouterr().out.splitlines()

    code, lines = budget("--flash", str(size["flash"]), "--ram", "64K")
    assert code == 0 and lines[0].endswith(": fits")
    assert f"flash: {size['flash']} B of {size['flash']} B: fits, 0 B" in lines[1]
    code, lines = budget("--flash", str(size["flash"] - 100))
    assert code == 1 and lines[0].endswith("does not fit") and "MISSES by 100 B" in lines[1]
    assert cli.parse_bytes("12K", "--flash") == 12288 and cli.parse_bytes("1M", "--flash") == 1 << 20
    for argv, needle in (([zipped, "--target", "cortex-m4"], "--target needs a budget"),
                         ([zipped, "--flash", "12K"], "--flash and --ram are budgets of a --target"),
                         ([zipped, "--target", "cortex-m4", "--ram", "0"], "--ram must be positive")):
        code, lines = run_cli(argv, capsys)
        assert code == 2 and len(lines) == 1 and needle in lines[0], lines


@pytest.mark.skipif(arm_toolchain() is None, reason="gcc-arm-none-eabi not installed: the byte model is checked against it")
@pytest.mark.parametrize("quantize", ["none", "int8", "mixed"])
def test_the_byte_model_predicts_the_compiled_size(model, quantize, tmp_path):
    from sparse_rl.export.budget import c_bytes

    graph = extract_actor(model)
    cli.export(graph, "c", tmp_path / "c", quantize=quantize)
    measured = cortex_m4_size(tmp_path / "c")
    modelled = c_bytes([layer.shape for layer in graph.layers], [layer.nnz for layer in graph.layers], graph.act_dim, quantize)
    assert modelled["ram"] == measured["ram"]
    assert abs(modelled["flash"] - measured["flash"]) <= 0.05 * measured["flash"], (modelled, measured)


def test_training_to_a_budget_derives_the_actor_and_checks_its_c(tmp_path, capsys):
    import json

    from sparse_rl import train
    from sparse_rl.export.budget import derive, predicted

    fitted = derive("sac", 3, 1, [64, 64], "erk", flash=6 * 1024, ram=4096)
    assert predicted("sac", 3, 1, [64, 64], fitted.sparsity, "erk", fitted.quantize)["flash"] <= 6 * 1024
    if fitted.sparsity > 0:  # the densest that fits: one step denser misses
        assert predicted("sac", 3, 1, [64, 64], fitted.sparsity - 0.001, "erk", fitted.quantize)["flash"] > 6 * 1024
    def argv(run, *budget):
        return ["--algo", "sac", "--env", "Pendulum", "--run-dir", str(run), "--n-timesteps", "300", "--eval-freq", "0",
                "--set", "learning_starts=100", "--set", "net_arch=[64, 64]", "--no-progress",
                "--set", "deploy_target=cortex-m4", *itertools.chain.from_iterable(("--set", b) for b in budget)]

    run = tmp_path / "mcu"
    assert train.main(argv(run, "deploy_flash=6K", "deploy_ram=4K")) == 0
    out = capsys.readouterr()
    config = yaml_config(run)
    assert config["actor_sparsity"] == fitted.sparsity and config["deploy_quantize"] == fitted.quantize
    deploy = json.loads((run / "summary.json").read_text())["deploy"]
    assert deploy["fits"] and deploy["flash"] <= 6 * 1024 and "deploy (cortex-m4" in out.out
    code = train.main(argv(tmp_path / "tiny", "deploy_flash=1K"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the smallest budget that works is --set deploy_flash=" in err[0]
    assert not (tmp_path / "tiny").exists()
    code = train.main(argv(tmp_path / "both", "deploy_flash=6K", "actor_sparsity=0.9"))
    assert code == 2 and "the deploy budget derives actor_sparsity" in capsys.readouterr().err
    from sparse_rl.run_plan import plan_run

    for quantize in ("int8", "mixed", "none"):  # weights asked for: the budget sizes the actor in them
        plan = plan_run(train.build_parser().parse_args(argv(tmp_path / quantize, "deploy_flash=6K",
                                                             f"deploy_quantize={quantize}")))
        asked = derive("sac", 3, 1, [64, 64], "erk", flash=6 * 1024, ram=None, quantize=quantize)
        assert (plan.config.actor_sparsity, plan.config.deploy_quantize) == (asked.sparsity, quantize)


def yaml_config(run):
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["config"]


@pytest.mark.parametrize("algo", ["ddpg", "tqc", "crossq", "ppo"])
def test_the_sb3_family_exports_with_parity_in_every_format(algo, tmp_path):
    """DDPG, TQC, CrossQ (batch renormalisation folded into the next layer) and PPO (the mean, clipped to the
    bounds): the numpy graph, the sparse file, ONNX and C all act as torch does."""
    import onnxruntime as ort
    from sb3_contrib import TQC, CrossQ
    from stable_baselines3 import DDPG

    from sparse_rl import SparseActorCriticPolicy, SparseCrossQPolicy, SparseTQCPolicy

    cls, policy = {"ddpg": (DDPG, SparseTD3Policy), "tqc": (TQC, SparseTQCPolicy), "crossq": (CrossQ, SparseCrossQPolicy),
                   "ppo": (PPO, SparseActorCriticPolicy)}[algo]
    kwargs = dict(n_steps=128, batch_size=64) if algo == "ppo" else dict(learning_starts=100, batch_size=64)
    model = cls(policy, "Pendulum-v1", seed=0, device="cpu", policy_kwargs=dict(net_arch=[64, 64], update_interval=20),
                **kwargs)
    model.learn(300)
    obs = observations(model)
    expected = torch_actions(model, obs)
    tol = FLOAT_TOL * action_range(model)
    graph = extract_actor(model)
    assert np.abs(graph.forward(obs) - expected).max() <= tol and graph.stats()["density"] < 0.2
    cli.export(graph, "sparse", tmp_path / "p.npz")
    assert np.abs(SparsePolicy.load(tmp_path / "p.npz").act(obs) - expected).max() <= tol
    cli.export(graph, "onnx", tmp_path / "p.onnx")
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"obs": obs})[0] - expected).max() <= tol
    cli.export(graph, "c", tmp_path / "c")
    c = CPolicy(tmp_path / "c", "sparse_rl_policy", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"])
    assert np.abs(c.act(obs) - expected).max() <= tol


def _discrete_model(case):
    """A briefly trained sparse DQN (vector observations, or MinAtar's convolution) or discrete PPO, or an
    untrained sparse DQN ``CnnPolicy`` (NatureCNN on 3x40x44 uint8 images, SB3's /255 folded into the export)."""
    import gymnasium as gym

    from sparse_rl import SparseActorCriticPolicy, SparseCnnDQNPolicy, SparseDQNPolicy
    from sparse_rl.agents.extractors import MinAtarCNN
    from sparse_rl.envs import make_env

    rng = np.random.default_rng(0)
    if case == "nature":
        import torch

        from sparse_rl.sparse.networks import masked_layers

        torch.manual_seed(0)
        space = gym.spaces.Box(0, 255, (3, 40, 44), np.uint8)
        policy = SparseCnnDQNPolicy(space, gym.spaces.Discrete(5), lambda _: 1e-3,
                                    features_extractor_kwargs=dict(features_dim=64))
        # at 90% sparsity SB3's init leaves the three convolutions' output almost constant: He-scaled weights
        # on each mask, so that the Q-values (and their argmax) depend on the image
        with torch.no_grad():
            for layer in masked_layers(policy.q_net):
                fan_in = layer.mask.reshape(layer.mask.shape[0], -1).sum(1).float().mean()
                layer.weight.copy_(torch.randn_like(layer.weight) * (2 / fan_in).sqrt() * layer.mask)
        return policy, rng.integers(0, 256, (200, 3, 40, 44)).astype(np.uint8)
    if case == "minatar":
        env = make_env("MinAtar/Breakout-v1", n_envs=1, seed=0)
        model = DQN(SparseCnnDQNPolicy, env, seed=2, learning_starts=100, buffer_size=500, device="cpu",
                    policy_kwargs=dict(features_extractor_class=MinAtarCNN, net_arch=[64], backend="sparse"))
        model.learn(200)
        return model.policy, rng.uniform(size=(200, 10, 10, 4)) > 0.7
    algo = DQN if case == "dqn" else PPO
    kwargs = dict(learning_starts=100) if case == "dqn" else dict(n_steps=128, batch_size=64)
    model = algo(SparseDQNPolicy if case == "dqn" else SparseActorCriticPolicy, "CartPole-v1", seed=3, device="cpu",
                 policy_kwargs=dict(net_arch=[64, 64], backend="sparse"), **kwargs)
    model.learn(300)
    return model.policy, rng.uniform(-10, 10, (500, 4)).astype(np.float32)


def _torch_scores(policy, obs):
    import torch

    with torch.no_grad():
        x = policy.obs_to_tensor(obs)[0]
        if hasattr(policy, "q_net"):
            return policy.q_net(x).numpy()
        return policy.get_distribution(x).distribution.logits.numpy()


@pytest.mark.parametrize("case", ["dqn", "ppo", "minatar", "nature"])
def test_discrete_policies_export_their_argmax_in_every_format(case, tmp_path):
    """DQN's argmax of Q and discrete PPO's most likely action, with vector observations and with MinAtar's and
    SB3's NatureCNN convolutions (kept sparse, taps stored as input offsets): the graph computes torch's
    scores, and the sparse file, ONNX and C (float32) pick torch's action; int8 C picks it on at least 95%."""
    import onnxruntime as ort

    policy, obs = _discrete_model(case)
    expected = policy.predict(obs, deterministic=True)[0]
    flat = obs.reshape(len(obs), -1).astype(np.float32)
    graph = extract_actor(policy)
    assert graph.discrete and graph.act_dim == policy.action_space.n and graph.stats()["density"] < 0.2
    assert len(set(expected.tolist())) > 1  # the scores are not flat: the argmax is a real check
    scores = _torch_scores(policy, obs)  # torch's Categorical normalises logits: compare differences to the first
    mine = graph.scores(flat)
    assert np.abs((mine - mine[:, :1]) - (scores - scores[:, :1])).max() <= 1e-5 * max(1.0, np.abs(scores).max())
    assert np.array_equal(graph.forward(flat), expected)
    cli.export(graph, "sparse", tmp_path / "p.npz")
    assert np.array_equal(SparsePolicy.load(tmp_path / "p.npz").act(flat), expected)
    cli.export(graph, "onnx", tmp_path / "p.onnx")
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {"obs": flat})[0], expected)
    for quantize in ("none", "int8"):
        cli.export(graph, "c", tmp_path / quantize, quantize=quantize)
        assert "int sparse_rl_policy_act(const float *obs);" in (tmp_path / quantize / "policy.h").read_text()
        c = CPolicy(tmp_path / quantize, "sparse_rl_policy", graph.obs_dim, graph.act_dim, extra_flags=["-Werror"],
                    discrete=True)
        differ = np.mean(c.act(flat) != expected)
        assert differ <= cli.VERIFY_DISCRETE_TOL[quantize], (quantize, differ)
    assert any("argmax of" in line for line in cli.report(graph)) if case == "dqn" else True


def test_unsupported_discrete_and_observation_spaces_are_refused_with_a_reason():
    import gymnasium as gym
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    from sparse_rl import SparseActorCriticPolicy

    multi = SparseActorCriticPolicy(gym.spaces.Box(-1, 1, (4,)), gym.spaces.MultiDiscrete([2, 3]), lambda _: 1e-3)
    with pytest.raises(ExportError, match="only Box .continuous. and Discrete action spaces"):
        extract_actor(multi)
    with pytest.raises(ExportError, match="only Box observations and dicts of vectors"):  # one-hot inputs
        extract_actor(SparseActorCriticPolicy(gym.spaces.Discrete(5), gym.spaces.Discrete(2), lambda _: 1e-3))
    # a dict of vectors exports, its parts concatenated in key order
    spaces = gym.spaces.Dict({"b": gym.spaces.Box(-1, 1, (3,)), "a": gym.spaces.Box(-1, 1, (2,))})
    policy = MultiInputActorCriticPolicy(spaces, gym.spaces.Discrete(3), lambda _: 1e-3)
    graph = extract_actor(policy)
    obs = {k: np.random.default_rng(0).normal(size=(100, *s.shape)).astype(np.float32) * 50 for k, s in spaces.items()}
    assert graph.obs_keys == [("a", 2), ("b", 3)]
    assert np.array_equal(graph.forward(obs), policy.predict(obs, deterministic=True)[0])
