import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_same_policy
from stable_baselines3.common.callbacks import BaseCallback

import sparse_rl
from sparse_rl import evaluate, plot, train
from sparse_rl.config import CONFIG_CLASSES, available_presets, resolve_config
from sparse_rl.envs import SHORT_NAMES, resolve_env_id
from sparse_rl.models import load_run_model
from sparse_rl.run_directory import RunError, rewind_evaluations

TINY = [
    "--n-timesteps",
    "400",
    "--set",
    "learning_starts=100",
    "--set",
    "batch_size=32",
    "--set",
    "net_arch=[32, 32]",
    "--set",
    "update_interval=25",
    "--eval-freq",
    "200",
    "--eval-episodes",
    "2",
    "--no-progress",
]


def run_cli(module, argv, capsys):
    code = module.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_train_writes_a_complete_run_and_evaluate_plot_read_it(algo, tmp_path, capsys):
    run = tmp_path / algo
    code, out, err = run_cli(
        train, ["--algo", algo, "--env", "Pendulum", "--run-dir", run, "--sparsity", "0.8", *TINY], capsys
    )
    assert code == 0, err
    assert str(run) in out and "density 0.2" in out
    for name in ("config.yaml", "model.zip", "evaluations.csv", "summary.json", "curve.png",
                 "checkpoints/step-000000400/model.zip"):
        assert (run / name).is_file(), name
    assert list((run / "tb").rglob("events.out.tfevents*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["env"] == "Pendulum-v1" and config["config"]["sparsity"] == 0.8 and config["label"] == f"{algo}-rigl-0.8"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timesteps"] == 400 and summary["sparsity"]["actor"]["density"] == pytest.approx(0.2, abs=1e-3)
    assert {"return_mean", "return_ci95_low", "actor_itop_rate", "critic_flops"} <= set(summary["final_eval"])
    # the kernels decide the floating-point sums, so a run records the machine and each layer's storage
    assert summary["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and summary["machine"]["cpu"]
    assert summary["machine"]["threads"] == 1
    # and the code that trained it: the checkout's commit, at the start (config.yaml) and at the end
    assert summary["code"]["version"] == config["code"]["version"] == sparse_rl.__version__
    if (Path(sparse_rl.__file__).resolve().parents[1] / ".git").exists():
        assert len(config["code"]["commit"]) == 40 and summary["code"]["commit"] == config["code"]["commit"]
    for net in ("actor", "critic"):
        layers = summary["sparsity"][net]["layers"]
        assert layers and {layer["storage"] for layer in layers} <= {"dense", "sparse"}
        assert sum(layer["nonzeros"] for layer in layers) == summary["sparsity"][net]["nonzeros"]
    rows = (run / "evaluations.csv").read_text().splitlines()
    assert rows[0].startswith("timesteps,") and len(rows) == 3  # header + evaluations at 200 and 400

    code, out, err = run_cli(evaluate, [run, "--episodes", "2", "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["episodes"] == 2 and row["actor_density"] == pytest.approx(0.2, abs=1e-3)

    code, out, err = run_cli(plot, [run, "--out", tmp_path / "c.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dense_preset_trains_sb3_mlp_policy(tmp_path, capsys):
    i = TINY.index("update_interval=25")  # a sparse setting: the dense preset refuses it
    dense_tiny = TINY[: i - 1] + TINY[i + 1 :]
    code, _, err = run_cli(
        train, ["--algo", "sac", "--env", "Pendulum-v1", "--preset", "dense", "--run-dir", tmp_path, *dense_tiny], capsys
    )
    assert code == 0, err
    model = load_run_model(tmp_path)
    assert type(model.policy).__name__ == "SACPolicy"


class Crash(BaseCallback):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def _on_step(self):
        if self.num_timesteps > self.at:
            raise KeyboardInterrupt("simulated crash")
        return True


@pytest.mark.parametrize("algo, topology, backend", [("sac", "set", "auto"), ("td3", "set", "auto"),
                                                     ("sac", "rigl", "sparse"), ("td3", "rigl", "sparse"),
                                                     ("sac", "gmp", "auto"), ("td3", "gmp", "sparse"),
                                                     ("sac", "granet", "sparse"), ("td3", "granet", "auto"),
                                                     ("sac", "snip", "auto"), ("td3", "snip", "sparse"),
                                                     ("sac", "grasp", "auto"), ("td3", "grasp", "sparse"),
                                                     ("sac", "snfs", "sparse"), ("td3", "snfs", "auto"),
                                                     ("sac", "dsr", "auto"), ("td3", "dsr", "sparse"),
                                                     ("sac", "rigl:2:4", "sparse"), ("td3", "set:1:8", "auto"),
                                                     ("sac", "deepr", "sparse"), ("td3", "deepr", "auto"),
                                                     ("sac", "topkast", "auto"), ("td3", "topkast", "sparse")])
def test_resume_equals_uninterrupted(algo, topology, backend, tmp_path, capsys):
    # TINY, with later flags overriding it: a checkpoint before the crash, no evaluations.
    topology, _, structure = topology.partition(":")
    extra = ["--set", f"structure={structure}", "--set", "distribution=uniform", "--sparsity", "0.5"] if structure else []
    # a replay buffer of 1000 slots holds all 300 steps, as 1M would, and its checkpoints are 1000x smaller
    argv = ["--algo", algo, "--env", "Pendulum", "--topology", topology, *extra, "--set", "checkpoint_freq=100",
            "--save-replay-buffer", "--set", "buffer_size=1000", *TINY, "--n-timesteps", "300", "--set", "update_interval=20",
            "--eval-freq", "0", "--set", f"backend={backend}"]
    parser = train.build_parser()
    code, _, err = run_cli(train, [*argv, "--run-dir", tmp_path / "a"], capsys)
    assert code == 0, err
    with pytest.raises(KeyboardInterrupt):
        train.train(parser.parse_args([str(a) for a in [*argv, "--run-dir", tmp_path / "b"]]), extra_callbacks=[Crash(230)])
    assert not (tmp_path / "b" / "model.zip").exists()
    code, _, err = run_cli(train, ["--resume", tmp_path / "b", "--no-progress"], capsys)
    assert code == 0, err
    assert "warning" not in err
    a, b = load_run_model(tmp_path / "a"), load_run_model(tmp_path / "b")
    assert a.num_timesteps == b.num_timesteps == 300
    assert_same_policy(a, b)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--algo", "trpo", "--env", "Pendulum"], "unknown algo 'trpo'"),
        (["--algo", "sac", "--env", "HalfCheeta"], "did you mean 'HalfCheetah'"),
        (["--algo", "sac", "--env", "Pendulum", "--preset", "rigll"], "unknown preset 'rigll'"),
        (["--algo", "sac", "--env", "Pendulum", "--set", "learning_rat=1e-3"], "did you mean 'learning_rate'"),
        (["--algo", "sac", "--env", "Pendulum", "--set", "batch_size=1.5"], "batch_size=1.5"),
        (["--algo", "sac", "--env", "Pendulum", "--set", "net_arch=64"], "net_arch=64"),
        (["--algo", "td3", "--env", "Pendulum", "--set", "ent_coef=0.1"], "unknown config key 'ent_coef'"),
        (["--algo", "sac", "--env", "Pendulum", "--sparsity", "1.0"], "sparsity must be in [0, 1), got 1.0"),
        (["--algo", "sac", "--env", "Pendulum", "--topology", "foo"], "unknown topology 'foo'"),
        (["--algo", "sac", "--env", "Pendulum", "--set", "backend=gpu"], "backend must be one of 'auto', 'sparse', 'dense'"),
        (["--algo", "sac", "--env", "Pendulum", "--set", "update_interval=0"], "update_interval must be a positive int"),
        (["--algo", "sac", "--env", "Pendulum", "--set", "oops"], "key=value"),
        (["--algo", "sac", "--env", "Pendulum", "--run-dir", "/proc/forbidden/run"], "not writable"),
        (["--resume", "/nonexistent/run"], "does not exist"),
        (["--algo", "sac"], "--env is required"),
        (["--algo", "sac", "--env", "HalfCheetah", "--env-kwargs", "xml_file=/nonexistent.xml"],
         "xml_file='/nonexistent.xml': 'HalfCheetah-v5' cannot read what they name"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(argv, needle, capsys):
    code, _, err = run_cli(train, argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_resume_lists_each_evaluation_once(tmp_path, capsys):
    # checkpoint at 200 steps, evaluations every 100, crash after 330: the evaluation at 300 is made
    # before the crash and again after resuming from the 200-step checkpoint; it must be listed once
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", tmp_path, *TINY, "--n-timesteps", "500"]
    argv += ["--eval-freq", "100", "--eval-episodes", "1", "--set", "checkpoint_freq=200"]
    with pytest.raises(KeyboardInterrupt):
        train.train(train.build_parser().parse_args([str(a) for a in argv]), extra_callbacks=[Crash(330)])
    before = list(csv.DictReader(open(tmp_path / "evaluations.csv")))
    assert [int(r["timesteps"]) for r in before] == [100, 200, 300]
    code, _, err = run_cli(train, ["--resume", tmp_path, "--no-progress"], capsys)
    assert code == 0, err
    assert "warning:" in err and "no replay buffer" in err  # not started with --save-replay-buffer
    after = list(csv.DictReader(open(tmp_path / "evaluations.csv")))
    assert [int(r["timesteps"]) for r in after] == [100, 200, 300, 400, 500]
    assert after[:2] == before[:2]
    clocks = [float(r["wall_clock_s"]) for r in after]
    assert clocks == sorted(clocks)  # the resumed run's clock continues from the last kept row


def test_rewind_evaluations_rejects_a_foreign_file(tmp_path):
    path = tmp_path / "evaluations.csv"
    path.write_text("step,reward\n1,2\n")
    with pytest.raises(RunError, match="lacks timesteps"):
        rewind_evaluations(path, 100)
    assert path.read_text() == "step,reward\n1,2\n"


def test_resume_of_corrupt_run(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("algo: sac\nconfig: [1, 2\n")
    code, _, err = run_cli(train, ["--resume", tmp_path], capsys)
    assert code == 2 and "corrupt run config" in err
    good = tmp_path / "good"
    assert run_cli(train, ["--algo", "sac", "--env", "Pendulum", "--run-dir", good, *TINY], capsys)[0] == 0
    (good / "checkpoints" / "step-000000400" / "model.zip").write_bytes(b"not a zip")
    code, _, err = run_cli(train, ["--resume", good, "--n-timesteps", "500"], capsys)
    assert code == 2 and "model.zip does not match its manifest" in err
    code, _, err = run_cli(evaluate, [tmp_path / "missing"], capsys)
    assert code == 2 and "does not exist" in err


def test_existing_run_dir_is_protected(tmp_path, capsys):
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", tmp_path, *TINY, "--n-timesteps", "150"]
    assert run_cli(train, argv, capsys)[0] == 0
    code, _, err = run_cli(train, argv, capsys)
    assert code == 2 and "already holds a run" in err
    assert run_cli(train, [*argv, "--overwrite"], capsys)[0] == 0


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_directory_that_is_not_a_run_is_never_trained_into_nor_replaced(overwrite, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", tmp_path, *TINY, *overwrite]
    code, _, err = run_cli(train, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "is not empty and holds no run (notes.txt)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_plot_finds_the_runs_under_a_directory_and_refuses_one_without(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code, _, err = run_cli(plot, [tmp_path / "empty", "--out", tmp_path / "c.png"], capsys)
    assert code == 2 and "holds no run" in err and not (tmp_path / "c.png").exists()
    code, _, err = run_cli(plot, [tmp_path / "missing", "--out", tmp_path / "c.png"], capsys)
    assert code == 2 and "does not exist" in err and not (tmp_path / "c.png").exists()
    run = tmp_path / "sweep" / "Pendulum-v1" / "rigl-s0"
    assert run_cli(train, ["--algo", "sac", "--env", "Pendulum", "--run-dir", run, *TINY], capsys)[0] == 0
    code, _, err = run_cli(plot, [tmp_path / "sweep", "--out", tmp_path / "c.png"], capsys)
    assert code == 0, err
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parsed_presets_are_cached_but_each_caller_gets_its_own_copy(tmp_path, monkeypatch):
    from sparse_rl import config

    first = config.load_presets("sac")
    first["presets"].clear()  # a caller changing what it got changes nothing for the next one
    assert config.load_presets("sac")["presets"] and resolve_config("sac", "Pendulum-v1", "rigl").topology == "rigl"
    edited = tmp_path / "sac.yml"  # a preset file changed on disk is read again
    edited.write_text(yaml.safe_dump({"presets": {"only": {}}}))
    monkeypatch.setattr(config, "preset_path", lambda algo: edited)
    assert available_presets("sac") == ["only"]
    edited.write_text(yaml.safe_dump({"presets": {"only": {}, "other": {}}}))
    assert available_presets("sac") == ["only", "other"]


@pytest.mark.parametrize("algo", list(CONFIG_CLASSES))
def test_every_preset_loads_and_validates_for_every_env(algo):
    presets = available_presets(algo)
    assert {"dense", "sparse_rl", "static", "set", "rigl"} <= set(presets)
    assert {"sac": "graesser2022", "td3": "ds_td3"}.get(algo, "gmp") in presets
    for preset in presets:
        for env_id in set(SHORT_NAMES.values()):
            resolve_config(algo, env_id, preset)


def test_published_presets_hold_their_settings():
    g = resolve_config("sac", "HalfCheetah-v5", "graesser2022")
    assert (g.sparsity, g.distribution, g.topology, g.update_interval, g.drop_fraction, g.end_fraction, g.weight_decay) == (
        0.9,
        "erk",
        "rigl",
        1000,
        0.5,
        0.8,
        1e-6,
    )
    d = resolve_config("td3", "Hopper-v5", "ds_td3")
    assert (d.topology, d.distribution, d.drop_fraction, d.drop_schedule, d.dense_last_layer) == (
        "set",
        "er",
        0.05,
        "constant",
        True,
    )


def test_checking_a_run_directory_leaves_a_parent_that_another_run_filled_meanwhile(tmp_path, monkeypatch):
    from pathlib import Path

    from sparse_rl import run_plan

    run_dir, other = tmp_path / "out" / "Pendulum-v1" / "a", tmp_path / "out" / "Pendulum-v1" / "b"
    write_text = Path.write_text

    def racing(self, *args, **kwargs):  # a sweep's second trial makes its directory during the check
        if self.name == ".write-test":
            other.mkdir()
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", racing)
    run_plan._check_run_dir(run_dir, overwrite=False)
    assert not run_dir.exists() and other.is_dir()  # ours removed, the shared parent kept, no error


def test_set_takes_python_literals_yaml_words_and_bare_words():
    from sparse_rl.config import parse_set

    assert parse_set("dense_first_layer=true") == ("dense_first_layer", True)  # as the YAML files spell it
    assert parse_set("dense_first_layer=False") == ("dense_first_layer", False)
    assert parse_set("init_from=null") == ("init_from", None)
    assert parse_set("net_arch=[64, 64]") == ("net_arch", [64, 64])
    assert parse_set("learning_rate=1e-3") == ("learning_rate", 1e-3)
    assert parse_set("topology=rigl") == ("topology", "rigl")
    assert parse_set("topology='True'") == ("topology", "True")  # quoted: a string


def test_env_names():
    assert resolve_env_id("HalfCheetah") == "HalfCheetah-v5"
    assert resolve_env_id("Pendulum") == "Pendulum-v1"
    assert resolve_env_id("Hopper-v4") == "Hopper-v4"
    with pytest.raises(ValueError, match="Walker2d"):
        resolve_env_id("Walker")


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_nstep_and_dynamic_buffer_from_the_cli(algo, tmp_path, capsys):
    sets = [
        "n_steps=3",
        "n_step_delay=150",
        "dynamic_buffer=True",
        "buffer_check_interval=100",
        "buffer_probe_size=64",
        "buffer_mismatch_threshold=0.0",
        "buffer_min_size=200",
        "topology_kwargs.grow_signal=accumulate",
        "topology_kwargs.grow_batches=5",
    ]
    argv = ["--algo", algo, "--env", "Pendulum", "--run-dir", tmp_path, *TINY]
    for item in sets:
        argv += ["--set", item]
    code, _, err = run_cli(train, argv, capsys)
    assert code == 0, err
    model = load_run_model(tmp_path)
    assert type(model.replay_buffer).__name__ == "DynamicReplayBuffer"
    assert model.replay_buffer_kwargs["n_steps"] == 3 and model.policy.actor_topology.method.grow_signal == "accumulate"


def test_rlx2_presets_hold_the_published_settings():
    for algo, buffer, floor in (("sac", 3_000_000, 200_000), ("td3", 1_000_000, 100_000)):
        c = resolve_config(algo, "HalfCheetah-v5", "rlx2")
        assert (c.distribution, c.topology, c.update_interval, c.drop_fraction, c.drop_schedule) == (
            "er",
            "rigl",
            10_000,
            0.5,
            "cosine",
        )
        assert (c.n_steps, c.dynamic_buffer, c.buffer_size, c.buffer_min_size) == (3, True, buffer, floor)
        assert (c.buffer_check_interval, c.buffer_probe_size, c.buffer_mismatch_threshold) == (10_000, 2048, 0.2)
        assert (c.actor_sparsity, c.critic_sparsity) == (0.9, 0.85)
        hopper = resolve_config(algo, "Hopper-v5", "rlx2")
        assert (hopper.actor_sparsity, hopper.critic_sparsity) == (0.98, 0.95)


def test_plot_runs_groups_by_explicit_labels_and_checks_their_count(tmp_path):
    from sparse_rl.plot import plot_runs

    header = "timesteps,return_mean,actor_density,actor_itop_rate\n"
    dirs = []
    for i in range(3):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "evaluations.csv").write_text(header + f"100,{i},0.1,0.1\n200,{2 * i},0.1,0.2\n")
        dirs.append(d)  # no config.yaml: with explicit labels the config is not needed
    out = plot_runs(dirs, tmp_path / "p.png", labels=["a", "a", "b"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="got 2 labels for 3 runs"):
        plot_runs(dirs, tmp_path / "q.png", labels=["a", "b"])
    assert not (tmp_path / "q.png").exists()


def test_cpu_kernels_avx2_pins_mkl_in_the_training_process(tmp_path):
    """MKL reads its code path once, as torch loads: the CLI starts itself again with MKL_CBWR=AVX2 in its
    environment, and the run records it, so a config repeats on any AVX2 machine."""
    import os
    import subprocess
    import sys

    from sparse_rl.numerics import check_cpu_kernels

    try:
        check_cpu_kernels("avx2")
    except ValueError as err:
        pytest.skip(f"this machine cannot pin MKL: {err}")
    run = tmp_path / "pinned"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", run, "--set", "cpu_kernels=avx2", *TINY]
    result = subprocess.run([sys.executable, "-m", "sparse_rl.train", *map(str, argv)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "summary.json").read_text())["machine"]["mkl_cbwr"] == "AVX2"
    assert yaml.safe_load((run / "config.yaml").read_text())["config"]["cpu_kernels"] == "avx2"


def test_cpu_kernels_is_checked_and_refused_in_process_without_the_pin(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(train, ["--algo", "sac", "--env", "Pendulum", "--run-dir", tmp_path / "r",
                                   "--set", "cpu_kernels=avx512", *TINY], capsys)
    assert code == 2 and err.count("\n") == 1 and "cpu_kernels must be one of native, avx2, got 'avx512'" in err
    monkeypatch.delenv("MKL_CBWR", raising=False)
    code, _, err = run_cli(train, ["--algo", "sac", "--env", "Pendulum", "--run-dir", tmp_path / "r",
                                   "--set", "cpu_kernels=avx2", *TINY], capsys)
    # in-process, MKL is loaded already: the message says how to pin it (unless this machine cannot at all)
    assert code == 2 and err.count("\n") == 1 and ("MKL_CBWR=AVX2" in err or "cpu_kernels=native" in err)
    assert not (tmp_path / "r").exists()
