"""Runs that survive anything: atomic checkpoint sets, SIGKILL at any moment, resume that extends, bad
input refused before anything is written, NaN losses stopped, validated policy files."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import assert_same_evaluations, assert_same_policy

from sparse_rl import evaluate, train
from sparse_rl.callbacks import CheckpointCallback, TrainingDiverged
from sparse_rl.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_dirs,
    from_data,
    latest_checkpoint,
    to_data,
    verify_checkpoint,
)
from sparse_rl.export.runtime import PolicyFileError, SparsePolicy
from sparse_rl.models import load_run_model

TINY = ["--set", "learning_starts=100", "--set", "batch_size=32", "--set", "net_arch=[32, 32]",
        "--set", "update_interval=25", "--no-progress"]


def run_cli(module, argv, capsys):
    code = module.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------ state as data
def test_training_state_round_trips_as_json_and_arrays_without_pickle():
    state = {
        "numpy_rng": np.random.RandomState(3).get_state(),
        "random_rng": random.Random(4).getstate(),
        "torch_rng": torch.get_rng_state().numpy(),
        "env": [{"core": {"np_random": {"bit_generator": "PCG64", "state": {"state": 2**120 + 5, "inc": 7}}},
                 "wrappers": [{"rewards": [np.float32(1.5), 2.0], "needs_reset": False}, {}]}],
        "last_u": None,
    }
    arrays: dict = {}
    data = json.loads(json.dumps(to_data(state, arrays)))  # what is written: JSON ...
    back = from_data(data, arrays)  # ... plus plain numeric arrays
    assert all(a.dtype != object for a in arrays.values())
    assert back["random_rng"] == state["random_rng"]
    np.testing.assert_array_equal(back["numpy_rng"][1], state["numpy_rng"][1])
    assert back["numpy_rng"][2:] == state["numpy_rng"][2:]
    assert back["env"][0]["core"]["np_random"]["state"]["state"] == 2**120 + 5
    reward = back["env"][0]["wrappers"][0]["rewards"][0]
    assert isinstance(reward, np.float32) and reward == np.float32(1.5)
    with pytest.raises(TypeError, match="cannot store a object"):
        to_data({"x": object()}, {})


# ----------------------------------------------------------------------------------- checkpoint sets
def _train(run, capsys, *extra):
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", run, *TINY, "--n-timesteps", "300",
            "--eval-freq", "0", "--set", "checkpoint_freq=100", "--set", "buffer_size=1000", *extra]
    code, out, err = run_cli(train, argv, capsys)
    assert code == 0, err
    return out, err


def test_a_checkpoint_is_one_verified_set_and_only_the_newest_is_kept(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run, capsys, "--save-replay-buffer")
    (steps, path), = checkpoint_dirs(run)
    assert steps == 300 and path.name == "step-000000300"
    checkpoint = verify_checkpoint(path)
    assert checkpoint.has_replay_buffer and {"model.zip", "state.json", "state.npz"} <= set(checkpoint.files)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["timesteps"] == 300 and set(manifest["files"]) == set(checkpoint.files)
    with np.load(path / "state.npz", allow_pickle=False) as f:  # our state needs no pickle
        assert all(f[k].dtype != object for k in f.files)
    # leftovers of an interrupted write are ignored, and removed when a run resumes
    (run / CHECKPOINT_DIR / ".step-000000400.abc.tmp").mkdir()
    assert latest_checkpoint(run).path == path
    latest_checkpoint(run, clean=True)
    assert not list((run / CHECKPOINT_DIR).glob(".*"))
    # damage is detected, named, and refused at resume with one error line
    with open(path / "model.zip", "r+b") as f:
        f.seek(100)
        f.write(b"\0\1\2\3")
    with pytest.raises(CheckpointError, match=r"model.zip does not match its manifest"):
        latest_checkpoint(run)
    code, _, err = run_cli(train, ["--resume", run, "--n-timesteps", "400"], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not match its manifest" in err


def test_resume_extends_a_finished_run_and_refuses_to_shrink_it(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run, capsys, "--save-replay-buffer", "--eval-freq", "150", "--eval-episodes", "1")
    model_bytes = (run / "model.zip").read_bytes()
    # nothing new to do: the summary, exit 0, nothing rewritten
    code, out, err = run_cli(train, ["--resume", run], capsys)
    assert code == 0 and "already finished (300 steps" in out and "return" in out and "curve.png" in out, err
    assert (run / "model.zip").read_bytes() == model_bytes
    code, _, err = run_cli(train, ["--resume", run, "--n-timesteps", "200"], capsys)
    assert code == 2 and "--n-timesteps 200 is below the 300 steps" in err
    code, out, err = run_cli(train, ["--resume", run, "--n-timesteps", "450"], capsys)
    assert code == 0, err
    assert "from " in err and "300 steps; model, state, replay buffer verified" in err
    assert load_run_model(run).num_timesteps == 450
    assert "n_timesteps: 450" in (run / "config.yaml").read_text()
    assert json.loads((run / "summary.json").read_text())["timesteps"] == 450
    rows = [int(r["timesteps"]) for r in csv.DictReader(open(run / "evaluations.csv"))]
    assert rows == [150, 300, 450]
    assert [s for s, _ in checkpoint_dirs(run)] == [450]


def test_resume_flags_that_would_change_the_run_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run, capsys)
    code, _, err = run_cli(train, ["--resume", run, "--seed", "3", "--set", "tau=0.1"], capsys)
    assert code == 2 and "--seed, --set cannot be combined with it" in err


def test_resume_before_the_first_checkpoint_starts_from_step_0(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _train(a, capsys)
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", b, *TINY, "--n-timesteps", "300",
            "--eval-freq", "0", "--set", "checkpoint_freq=100", "--set", "buffer_size=1000"]
    with pytest.raises(KeyboardInterrupt):
        train.train(train.build_parser().parse_args([str(x) for x in argv]), extra_callbacks=[_Interrupt(50)])
    assert (b / "config.yaml").is_file() and latest_checkpoint(b) is None
    code, _, err = run_cli(train, ["--resume", b], capsys)
    assert code == 0 and "no checkpoint yet, starting from step 0" in err
    assert_same_policy(load_run_model(a), load_run_model(b))


class _Interrupt(train.BaseCallback):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def _on_step(self):
        if self.num_timesteps >= self.at:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return True


# ---------------------------------------------------------------------------------------- SIGKILL
KILL_ARGV = ["--algo", "sac", "--env", "Pendulum", "--topology", "rigl", "--n-timesteps", "1400",
             "--set", "checkpoint_freq=100", "--set", "buffer_size=2000", "--set", "backend=sparse",
             "--eval-freq", "250", "--eval-episodes", "1", "--save-replay-buffer", *TINY]
#: where each attempt is killed: at a point inside the code (SPARSE_RL_KILL_AT=point:n), or at a random
#: moment (up to 0.3 s) after the attempt has written one new checkpoint, i.e. while it trains, evaluates
#: or writes its next checkpoint, whatever the speed of the machine
KILLS = [
    ("point", "run:config:1"),  # config written, no checkpoint yet
    ("point", "checkpoint:buffer:2"),  # inside a checkpoint write: state and buffer written, no model
    ("point", "checkpoint:model:1"),  # inside: all files written, no manifest
    ("point", "checkpoint:placed:2"),  # new checkpoint renamed into place, older one not yet removed
    ("point", "checkpoint:begin:3"),
    ("moment", 0),
    ("moment", 1),
    ("moment", 2),
    ("point", "run:final-checkpoint:1"),  # final checkpoint written, model.zip and summary not
]


def _kill_at_a_moment(proc, run, rng):
    start = max((s for s, _ in checkpoint_dirs(run)), default=-1)
    deadline = time.time() + 60
    while max((s for s, _ in checkpoint_dirs(run)), default=-1) <= start:
        assert proc.poll() is None and time.time() < deadline, "the attempt ended before writing a checkpoint"
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.3))
    proc.send_signal(signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    code, _, err = run_cli(train, [*KILL_ARGV, "--run-dir", a], capsys)
    assert code == 0, err
    rng = random.Random(0)
    attempts = []
    for i, (kind, value) in enumerate([*KILLS, ("none", None)]):
        argv = [*KILL_ARGV, "--run-dir", b] if i == 0 else ["--resume", b, "--no-progress"]
        env = {**os.environ, "SPARSE_RL_KILL_AT": value if kind == "point" else ""}
        proc = subprocess.Popen([sys.executable, "-m", "sparse_rl.train", *map(str, argv)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if kind == "moment":
                _kill_at_a_moment(proc, b, rng)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        attempts.append((kind, value, proc.returncode))
        # a resume never fails: each attempt is killed where planned, and the last one finishes
        expected = 0 if kind == "none" else -signal.SIGKILL
        assert proc.returncode == expected, f"{kind} {value}: exit {proc.returncode}\n{err}"
        assert len(checkpoint_dirs(b)) <= 2
    model_a, model_b = load_run_model(a), load_run_model(b)
    assert model_a.num_timesteps == model_b.num_timesteps == 1400
    assert_same_policy(model_a, model_b)
    steps = [int(r["timesteps"]) for r in csv.DictReader(open(b / "evaluations.csv"))]
    assert steps == [250, 500, 750, 1000, 1250, 1400]
    assert_same_evaluations(a, b)  # the evaluation env's episodes resume where they stood too
    assert json.loads((b / "summary.json").read_text())["timesteps"] == 1400


# ------------------------------------------------------------------------------ bad input, no files
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--env", "HalfCheetah", "--env-kwargs", "foo=1"], "--env-kwargs foo=1 not accepted by 'HalfCheetah-v5'"),
        (["--env", "Pendulum", "--env-kwargs", "g=nine"], "g='nine' not accepted by 'Pendulum-v1' (unsupported operand"),
        (["--env", "Pendulum", "--device", "tpu9"], "unknown device 'tpu9'; allowed: cpu, cuda"),
        (["--env", "CartPole-v1"], "'CartPole-v1' has a Discrete(2) action space; SAC needs a continuous (Box)"),
        (["--env", "CarRacing-v3"], "'CarRacing-v3' needs an optional dependency that is not installed"),
        (["--env", "Pendulum", "--set", "dynamic_buffer=True", "--set", "buffer_shrink_fraction=2"],
         "buffer_shrink_fraction must be in (0, 1), got 2"),
        (["--env", "Pendulum", "--set", "n_steps=0"], "n_steps must be an int >= 1, got 0"),
        (["--env", "Pendulum", "--set", "ent_coef='often'"], "ent_coef must be a positive number, 'auto'"),
        (["--env", "Pendulum", "--set", "tau=2"], "tau must be in (0, 1], got 2.0"),
        (["--env", "Pendulum", "--set", "net_arch=[64, 0]"], "net_arch must be a non-empty list of positive widths"),
        (["--env", "Pendulum", "--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
        (["--env", "Pendulum", "--env-kwargs", "g"], "--env-kwargs expects key=value, got 'g'"),
        (["--env", "Pendulum", "--preset", "dense", "--sparsity", "0.9"], "sparsity would be ignored: this config trains"),
    ],
)
def test_bad_input_leaves_nothing_on_disk(argv, needle, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(train, ["--algo", "sac", *argv, "--run-dir", run], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not run.exists()


def test_run_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    code, _, err = run_cli(train, ["--algo", "sac", "--env", "Pendulum", "--run-dir", tmp_path / "f"], capsys)
    assert code == 2 and "is a file" in err
    code, _, err = run_cli(train, ["--resume", tmp_path / "f"], capsys)
    assert code == 2 and "is a file; a run directory" in err


def test_a_nan_loss_stops_training_with_its_step_and_network_and_keeps_the_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", run, *TINY, "--n-timesteps", "600", "--eval-freq", "0",
            "--set", "checkpoint_freq=100", "--set", "learning_rate=1e30"]
    with pytest.raises(TrainingDiverged, match=r"loss \(train/\w+\) is (nan|inf) at step \d+") as info:
        train.main([str(a) for a in argv])  # not turned into an "error:" line: it is not bad input
    message = str(info.value)
    assert "actor" in message or "critic" in message
    assert "step-000000100 (100 steps; model, state verified), is kept" in message
    assert [s for s, _ in checkpoint_dirs(run)] == [100]
    assert not (run / "model.zip").exists()
    model = load_run_model(run)  # the kept checkpoint is the last good state
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


def test_a_failure_during_training_keeps_its_traceback_and_exits_1(tmp_path):
    # a genuine failure (here a ValueError raised by a broken env mid-training) is not bad input
    code = (
        "import gymnasium as gym, sys\n"
        "from gymnasium.envs.classic_control.pendulum import PendulumEnv\n"
        "class Broken(PendulumEnv):\n"
        "    def step(self, u):\n"
        "        self.n = getattr(self, 'n', 0) + 1\n"
        "        if self.n > 150: raise ValueError('sensor fault')\n"
        "        return super().step(u)\n"
        "gym.register('BrokenPendulum-v0', entry_point=Broken, max_episode_steps=200)\n"
        "from sparse_rl import train\n"
        "sys.exit(train.main(sys.argv[1:]))\n"
    )
    argv = ["--algo", "sac", "--env", "BrokenPendulum-v0", "--run-dir", tmp_path / "run", *TINY, "--n-timesteps", "300"]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: sensor fault" in proc.stderr and "error:" not in proc.stderr


# -------------------------------------------------------------------------------------- evaluate zip
def test_evaluate_accepts_a_model_zip(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run, capsys)
    code, out, err = run_cli(evaluate, [run / "model.zip", "--episodes", "1", "--json"], capsys)
    assert code == 0 and json.loads(out)["env"] == "Pendulum-v1", err
    loose = tmp_path / "loose.zip"
    loose.write_bytes((run / "model.zip").read_bytes())
    code, _, err = run_cli(evaluate, [loose], capsys)
    assert code == 2 and "outside a run directory: name its env with --env" in err
    code, out, err = run_cli(evaluate, [loose, "--env", "Pendulum", "--episodes", "1", "--json"], capsys)
    assert code == 0 and json.loads(out)["timesteps"] == 300, err
    code, _, err = run_cli(evaluate, [loose, "--env", "InvertedPendulum", "--episodes", "1"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "was trained on observations Box" in err


# ------------------------------------------------------------------------------------- policy files
@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    from sparse_rl.export.cli import main as export_main

    root = tmp_path_factory.mktemp("policy")
    argv = ["--algo", "sac", "--env", "Pendulum", "--run-dir", root / "run", *TINY, "--n-timesteps", "150",
            "--eval-freq", "0"]
    assert train.main([str(a) for a in argv]) == 0
    assert export_main([str(root / "run"), "--format", "sparse", "--out", str(root / "p.npz")]) == 0
    return root / "p.npz"


def _damage(kind, data):
    data = dict(data)
    if kind == "truncated values":
        data["l1_values"] = data["l1_values"][:-2]
    elif kind == "decreasing row pointers":
        indptr = data["l0_indptr"].copy()
        indptr[1] = indptr[2] + 1
        data["l0_indptr"] = indptr
    elif kind == "column out of range":
        indices = data["l0_indices"].copy()
        indices[0] = 200
        data["l0_indices"] = indices
    elif kind == "float indices":
        data["l2_indices"] = data["l2_indices"].astype(np.float32)
    elif kind == "missing bias":
        del data["l2_bias"]
    elif kind == "nan weight":
        values = data["l1_values"].copy()
        values[0] = np.nan
        data["l1_values"] = values
    return data


@pytest.mark.parametrize("kind, needle", [
    ("truncated values", "layer 1: l1_values has shape"),
    ("decreasing row pointers", "layer 0: l0_indptr must start at 0 and never decrease"),
    ("column out of range", "layer 0: l0_indices holds column 200, beyond its 3 inputs"),
    ("float indices", "layer 2: l2_indices has dtype float32, expected unsigned integer"),
    ("missing bias", "layer 2: member l2_bias is missing"),
    ("nan weight", "layer 1: l1_values holds NaN"),
])
def test_policy_file_damage_is_named_by_layer_and_member(policy_file, kind, needle, tmp_path):
    with np.load(policy_file, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    SparsePolicy.load(policy_file)  # the undamaged file loads
    bad = tmp_path / "bad.npz"
    np.savez(bad, **_damage(kind, data))
    with pytest.raises(PolicyFileError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        SparsePolicy.load(bad)


def test_a_run_being_trained_cannot_be_resumed_twice(tmp_path, capsys):
    from sparse_rl.run_directory import lock_run

    run = tmp_path / "run"
    _train(run, capsys)
    fd = lock_run(run)  # as a training process would hold it
    try:
        code, _, err = run_cli(train, ["--resume", run, "--n-timesteps", "400"], capsys)
        assert code == 2 and "is being trained by another process" in err
    finally:
        os.close(fd)
    assert run_cli(train, ["--resume", run, "--n-timesteps", "400"], capsys)[0] == 0


def _start_and_signal(run, argv, signals, tmp_path, after_eval=False):
    """Start a training, send ``signals`` once it has written a checkpoint (or an evaluation), return (exit, stderr)."""
    # a shell's background jobs ignore SIGINT, and a Python started so never sees Ctrl-C: restore the default
    proc = subprocess.Popen([sys.executable, "-m", "sparse_rl.train", *map(str, argv)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        started = (lambda: (run / "evaluations.csv").is_file()) if after_eval else (lambda: bool(checkpoint_dirs(run)))
        while not started():
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
            time.sleep(0.02)
        for sig in signals:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


CTRL_C_ARGV = ["--algo", "sac", "--env", "Pendulum", *TINY, "--n-timesteps", "100000", "--eval-freq", "0",
               "--set", "checkpoint_freq=100"]


def test_ctrl_c_writes_a_checkpoint_where_it_stops_and_says_how_to_continue(tmp_path):
    run = tmp_path / "run"
    code, err = _start_and_signal(run, [*CTRL_C_ARGV, "--run-dir", run], [signal.SIGINT], tmp_path)
    assert code == 130, err
    stopped = latest_checkpoint(run)
    assert f"stopped by SIGINT at step {stopped.timesteps}, checkpoint written: {stopped.path}" in err
    assert f"continue with: python -m sparse_rl.train --resume {run}" in err
    assert "Traceback" not in err and not (run / "summary.json").exists()


def test_a_second_ctrl_c_stops_at_once_and_the_handlers_are_restored(tmp_path):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    checkpointer = CheckpointCallback(tmp_path, 100, False)
    with pytest.raises(KeyboardInterrupt), train._stop_gracefully(checkpointer):
        os.kill(os.getpid(), signal.SIGINT)  # the first asks for a checkpoint and a stop
        time.sleep(0.05)
        assert checkpointer.stop_asked
        os.kill(os.getpid(), signal.SIGINT)  # the second one does not wait for it
        time.sleep(5)
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.slow
def test_sigterm_stops_at_a_checkpoint_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    """A scheduler's SIGTERM loses no step: the checkpoint is written where training stops."""
    argv = [*KILL_ARGV, "--n-timesteps", "800", "--set", "checkpoint_freq=100000"]  # no periodic checkpoint
    a, b = tmp_path / "a", tmp_path / "b"
    code, _, err = run_cli(train, [*argv, "--run-dir", a], capsys)
    assert code == 0, err
    code, err = _start_and_signal(b, [*argv, "--run-dir", b], [signal.SIGTERM], tmp_path, after_eval=True)
    assert code == 128 + signal.SIGTERM, err
    [(step, _)] = checkpoint_dirs(b)
    assert 250 <= step < 800 and f"stopped by SIGTERM at step {step}" in err
    code, _, err = run_cli(train, ["--resume", b, "--no-progress"], capsys)
    assert code == 0, err
    assert_same_policy(load_run_model(a), load_run_model(b))
    steps = [int(r["timesteps"]) for r in csv.DictReader(open(b / "evaluations.csv"))]
    assert steps == [250, 500, 750, 800]
    assert_same_evaluations(a, b)
