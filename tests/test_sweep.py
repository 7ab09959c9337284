"""Sweeps on a real Ray (embedded, and a two-node cluster on 127.0.0.1) and their rliable report."""

import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from sparse_rl import report, sweep
from sparse_rl.checkpoint import checkpoint_dirs

pytest.importorskip("ray", reason='sweeps need the [sweep] extra: pip install -e ".[sweep]"')

#: a sweep saves the replay buffer with each checkpoint: 2000 slots hold every step of these trials and keep the
#: checkpoints small (SB3's default of 1M slots is written whole, used or not)
TINY = {"learning_starts": 100, "batch_size": 32, "net_arch": [32, 32], "eval_freq": 200, "eval_episodes": 1,
        "checkpoint_freq": 200, "buffer_size": 2000}


def _spec(tmp_path: Path, name: str = "spec.yml", **changes) -> Path:
    spec = {"algo": "sac", "envs": ["Pendulum"], "seeds": [0, 1], "n_timesteps": 400, "set": dict(TINY),
            "grid": {"preset": ["dense", "rigl"]}, **changes}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(argv, capsys):
    code = sweep.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"grid": {"presett": ["rigl"]}}, "unknown grid key 'presett'; did you mean 'preset'"),
        ({"grid": {"preset": ["rigll"]}}, "unknown grid preset 'rigll'; did you mean 'rigl'"),
        ({"grid": {"topology": ["rigel"]}}, "unknown grid topology 'rigel'; did you mean 'rigl'"),
        ({"grid": {"sparsity": [0.9, 1.5]}}, "sparsity"),
        ({"grid": {"drop_fraction": "0.3"}}, "grid drop_fraction must be a non-empty list"),
        ({"envs": ["HalfCheeta"]}, "HalfCheetah"),
        ({"seeds": [0, 0]}, "seeds must not repeat"),
        ({"gird": {}}, "unknown spec key 'gird'; did you mean 'grid'"),
        ({"search": {"space": {"learning_rate": {"loguniform": [0, 1e-3]}}}}, "low > 0"),
    ],
)
def test_bad_specs_are_refused_before_anything_runs(tmp_path, capsys, changes, needle):
    out = tmp_path / "out"
    code, _, err = _run([_spec(tmp_path, **changes), "--out", out], capsys)
    assert code == 2
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_spec_that_is_not_a_mapping_and_an_unreachable_cluster(tmp_path, capsys):
    path = tmp_path / "list.yml"
    path.write_text("- algo: sac\n")
    code, _, err = _run([path, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "must be a mapping" in err
    code, _, err = _run([_spec(tmp_path), "--out", tmp_path / "out", "--address", "127.0.0.1:1"], capsys)
    assert code == 2 and "no Ray cluster answers at '127.0.0.1:1'" in err
    assert not (tmp_path / "out").exists()


def test_dense_trials_ignore_sparse_grid_keys_and_are_not_repeated(tmp_path):
    spec = sweep.load_spec(_spec(tmp_path, grid={"preset": ["dense", "rigl"], "sparsity": [0.9, 0.95]}))
    names = [t.name for t in sweep.grid_trials(spec)]
    assert names == ["dense-s0", "dense-s1", "rigl-0.9-s0", "rigl-0.9-s1", "rigl-0.95-s0", "rigl-0.95-s1"]
    dense = sweep.grid_trials(spec)[0]
    assert "sparsity" not in dense.overrides and dense.preset == "dense"



def test_only_runs_the_trials_matching_any_glob_and_names_a_glob_matching_none(tmp_path, capsys):
    spec, out = _spec(tmp_path), tmp_path / "out"
    code, stdout, _ = _run([spec, "--out", out, "--dry-run", "--only", "*/dense-s1", "Pendulum-v1/rigl-*"], capsys)
    assert code == 0
    assert [line.split(":")[0] for line in stdout.splitlines()] == ["Pendulum-v1/dense-s1", "Pendulum-v1/rigl-s0",
                                                                  "Pendulum-v1/rigl-s1"]
    code, _, err = _run([spec, "--out", out, "--only", "*/dense-*", "*/rigel-*"], capsys)
    assert code == 2 and err.startswith("error: --only '*/rigel-*' matches no trial (trials: Pendulum-v1/dense-s0")
    assert err.count("\n") == 1 and not out.exists()

def test_a_grid_grows_on_resume_but_a_started_trial_keeps_its_command(tmp_path, capsys):
    out = tmp_path / "out"
    spec = sweep.load_spec(_spec(tmp_path))
    assert sweep.prepare_out(spec, out, resume=False)  # a new sweep writes its spec
    out.mkdir()
    (out / sweep.SPEC_FILE).write_text(yaml.safe_dump(spec.raw))
    (out / "Pendulum-v1" / "rigl-s0").mkdir(parents=True)
    (out / "Pendulum-v1" / "rigl-s0" / "config.yaml").write_text("seed: 0\n")  # a started trial
    assert not sweep.prepare_out(spec, out, resume=True)  # the same spec: nothing to rewrite
    grown = sweep.load_spec(_spec(tmp_path, "grown.yml", seeds=[0, 1, 2], grid={"preset": ["dense", "rigl", "set"]}))
    assert sweep.prepare_out(grown, out, resume=True)  # more seeds and presets: kept trials unchanged
    before = _digest(out / sweep.SPEC_FILE)
    changed = _spec(tmp_path, "changed.yml", n_timesteps=800)  # would change the started trial's command
    code, _, err = _run([changed, "--out", out, "--resume"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: the spec differs") and "command of started trials (Pendulum-v1/rigl-s0)" in err
    assert _digest(out / sweep.SPEC_FILE) == before
    with pytest.raises(sweep.SweepError, match="already holds a sweep"):
        sweep.prepare_out(grown, out, resume=False)


def test_the_core_package_does_not_import_ray_or_rliable():
    code = "import sys, sparse_rl, sparse_rl.train, sparse_rl.sweep, sparse_rl.report; " \
           "print(sorted(m for m in ('ray', 'rliable', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # what a trial's Ray worker imports to run it: its training process imports torch, the worker need not
    code = "import sys, sparse_rl.sweep.execution; " \
           "print(sorted(m for m in ('torch', 'stable_baselines3', 'gymnasium') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------ local Ray
@pytest.mark.slow
def test_local_sweep_runs_every_trial_as_a_run_directory_and_reports(tmp_path, capsys):
    """DQN on ``MinAtar/Breakout-v1``: a namespaced env id keeps its folder in the run directories, while Tune's
    trials, the logs and the report's files get a flat name (the SAC trials of the other tests are not namespaced)."""
    out = tmp_path / "out"
    spec = _spec(tmp_path, algo="dqn", envs=["MinAtar/Breakout-v1"], set={k: v for k, v in TINY.items() if k != "net_arch"})
    code, stdout, err = _run([spec, "--out", out, "--max-concurrent", "2"], capsys)
    assert code == 0, stdout + err
    assert "4/4 trials done" in stdout and "done 4/4" in stdout
    runs = out / "MinAtar" / "Breakout-v1"
    dirs = sorted(p.name for p in runs.iterdir())
    assert dirs == ["dense-s0", "dense-s1", "rigl-s0", "rigl-s1"]
    assert sorted(p.name for p in (out / "logs").iterdir()) == [f"MinAtar-Breakout-v1-{d}.log" for d in dirs]
    for name in dirs:
        assert json.loads((runs / name / "summary.json").read_text())["timesteps"] == 400
        assert (runs / name / "model.zip").is_file()
    assert yaml.safe_load((runs / "rigl-s1" / "config.yaml").read_text())["seed"] == 1
    # the same spec again without --resume is refused; with it, nothing is retrained
    code, _, err = _run([spec, "--out", out], capsys)
    assert code == 2 and "--resume" in err
    before = _digest(runs / "rigl-s0" / "summary.json")
    code, stdout, _ = _run([spec, "--out", out, "--resume"], capsys)
    assert code == 0 and "(4 were already)" in stdout and "4 finished before (kept), none to run" in stdout
    assert "at a time on" not in stdout  # nothing left to run: no Ray started for it
    assert _digest(runs / "rigl-s0" / "summary.json") == before
    text = report.report(out, out / "report", reps=1000)
    assert "| rigl | 0, 1 |" in text and "`curves-MinAtar-Breakout-v1.png`" in text
    assert (out / "report" / "curves-MinAtar-Breakout-v1.png").is_file() and not (out / "report" / "curves-MinAtar").exists()


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_keeps_finished_trials_and_continues_started_ones(tmp_path):
    # checkpoints every 200 steps: the second trial is killed after its first one, with 400 steps still to go
    spec = _spec(tmp_path, n_timesteps=600, grid={"preset": ["rigl"]})
    out = tmp_path / "out"
    runs = out / "Pendulum-v1"
    cmd = [sys.executable, "-m", "sparse_rl.sweep", str(spec), "--out", str(out), "--max-concurrent", "1"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # one trial finished, the other one checkpointed and still running
        first, second = sorted(runs.glob("*-s*")) if runs.is_dir() and len(list(runs.glob("*-s*"))) == 2 else (None, None)
        done = [d for d in (first, second) if d is not None and (d / "summary.json").is_file()]
        started = [d for d in (first, second) if d is not None and list(d.glob("checkpoints/step-*"))
                   and not (d / "summary.json").is_file()]
        if len(done) == 1 and started:
            break
        time.sleep(0.1)
    else:
        driver.kill()
        pytest.fail("the sweep never reached one finished and one started trial")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished, interrupted = done[0], started[0]
    kept = _digest(finished / "summary.json")
    deadline = time.time() + 30  # the trial's training process stops with its Ray worker, after a checkpoint
    while subprocess.run(["pgrep", "-f", f"sparse_rl.train .*{interrupted}"], capture_output=True).stdout.strip():
        assert time.time() < deadline, "a training process outlived the killed sweep"
        time.sleep(0.2)
    result = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2/2 trials done (1 were already)" in result.stdout
    # the finished trial is kept out of Tune; the progress counts it as done from the start
    assert "2 trials, 1 finished before (kept), 1 to run" in result.stdout and "done 1/2, running 1" in result.stdout
    assert _digest(finished / "summary.json") == kept
    log = (out / "logs" / f"Pendulum-v1-{interrupted.name}.log").read_text()
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", log)  # its worker died: SIGTERM, not SIGKILL
    assert stopped, "the training did not write a checkpoint where it stopped\n" + log
    assert f"resuming {interrupted} from {interrupted}/checkpoints/step-{int(stopped[1]):09d}" in log
    assert json.loads((interrupted / "summary.json").read_text())["timesteps"] == 600


@pytest.mark.slow
def test_a_resumed_trial_reports_only_its_own_progress(tmp_path, monkeypatch):
    """Not the evaluations a killed run left behind, and steps/s from the checkpoint it resumes, not from 0."""
    out = tmp_path / "out"
    run_dir = out / "Pendulum-v1" / "rigl-s0"
    out.mkdir()
    (out / sweep.SPEC_FILE).write_text("{}\n")
    sets = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "checkpoint_freq": 400}.items()]
    argv = ["--algo", "sac", "--env", "Pendulum", "--seed", "0", "--no-progress", "--run-dir", str(run_dir),
            "--preset", "rigl", "--n-timesteps", "1200", *itertools.chain.from_iterable(("--set", s) for s in sets)]
    killed = subprocess.Popen([sys.executable, "-m", "sparse_rl.train", *argv], stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(report.read_evaluations(run_dir)) < 3 or not list(run_dir.glob("checkpoints/step-*")):
        assert time.time() < deadline and killed.poll() is None, "the run never passed its first checkpoint"
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    resumed_from = checkpoint_dirs(run_dir)[-1][0]
    stale = [int(float(r["timesteps"])) for r in report.read_evaluations(run_dir)]
    assert stale[-1] > resumed_from  # evaluations past the checkpoint, which the resumed run redoes
    reports: list[tuple[float, dict]] = []
    monkeypatch.setattr(sweep.execution, "_tune_report", lambda metrics: reports.append((time.time(), metrics)))
    start = time.time()
    sweep.run_trial({"out": str(out), "env": "Pendulum-v1", "name": "rigl-s0", "argv": argv}, poll_s=0.05)
    *progress, (_, final) = reports
    assert final["timesteps"] == 1200 and progress
    for at, metrics in progress:
        assert metrics["timesteps"] > resumed_from
        expected = (metrics["timesteps"] - resumed_from) / (at - start)
        assert metrics["steps_per_s"] == pytest.approx(expected, rel=0.05)


@pytest.mark.slow
def test_a_search_samples_the_ranges_stops_laggards_and_writes_the_best_preset(tmp_path, capsys):
    space = {"drop_fraction": {"uniform": [0.1, 0.7]}, "update_interval": {"choice": [50, 100]},
             "learning_rate": {"loguniform": [1.0e-4, 1.0e-3]}}
    spec = _spec(tmp_path, seeds=[0], n_timesteps=600, grid=None, set={**TINY, "preset": "rigl"},
                 search={"num_samples": 3, "grace_period": 200, "space": space})
    out = tmp_path / "out"
    code, stdout, err = _run([spec, "--out", out], capsys)
    assert code == 0, stdout + err
    assert len(list((out / "Pendulum-v1").glob("trial-*-s0"))) == 3
    text = (out / "best.yml").read_text()
    best = yaml.safe_load(text)["best"]["default"]
    assert 0.1 <= best["drop_fraction"] <= 0.7 and best["update_interval"] in (50, 100)
    assert 1e-4 <= best["learning_rate"] <= 1e-3 and "preset" not in best and "on preset rigl" in text


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_with_the_resume_command(tmp_path):
    spec = _spec(tmp_path, seeds=[0], n_timesteps=3000, grid={"preset": ["rigl"]})
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-m", "sparse_rl.sweep", str(spec), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("Pendulum-v1/rigl-s0/checkpoints/step-*")):
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err
    assert f"continue with: python -m sparse_rl.sweep {spec} --out {out} --resume" in err
    deadline = time.time() + 30  # the training stops with its worker, after writing a checkpoint where it stopped
    while subprocess.run(["pgrep", "-f", f"sparse_rl.train .*{out}"], capture_output=True).stdout.strip():
        assert time.time() < deadline, "a training process outlived the stopped sweep"
        time.sleep(0.2)
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", (out / "logs" / "Pendulum-v1-rigl-s0.log").read_text())
    assert stopped and [s for s, _ in checkpoint_dirs(out / "Pendulum-v1" / "rigl-s0")] == [int(stopped[1])]


# ------------------------------------------------------------------------------- a two-node cluster
def _processes_of(marker: str) -> list[int]:
    """PIDs whose command line holds ``marker``, with all their descendants."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            found.add(proc.pid)
            found.update(_descendants(proc.pid))
    return sorted(found)


def _stop(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)


def _listening(pids: list[int]) -> list[str]:
    """The local addresses on which ``pids`` listen for TCP connections."""
    wanted = set(pids)
    return [c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.pid in wanted]


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")


def test_the_embedded_ray_of_a_local_sweep_listens_on_loopback_only():
    """Every server of the local Ray (GCS, raylet, workers, agents) binds 127.0.0.1, none the machine's interfaces."""
    import ray

    from sparse_rl.sweep import execution

    try:
        assert execution._init_ray(None)[0] == 1
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker, listening too
        addresses = _listening(_descendants(os.getpid()))  # the GCS, raylet and workers it started
    finally:
        ray.shutdown()
    assert len(addresses) >= 3 and all(_loopback(a) for a in addresses), addresses


def _descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


#: ``ray start`` with Ray's translation of a loopback node address into the machine's external one switched
#: off (as the embedded Ray of a local sweep has it), so that the test cluster listens on 127.0.0.1 only
RAY_START_ON_LOOPBACK = [
    sys.executable, "-c",
    "import sys; from ray._private import services; services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())",
]


@pytest.fixture
def two_node_cluster():
    """Two Ray nodes on 127.0.0.1 with a temp dir of their own. Teardown stops exactly their processes:
    ``ray stop`` would stop every Ray on the machine, a user's running sweep included."""
    port = 6390 + os.getpid() % 500
    temp = Path(f"/tmp/sprl-ray-{os.getpid()}")  # short: Ray's socket paths must stay under ~107 characters
    env = {**os.environ, "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "token"}
    common = ["--num-cpus", "1", "--disable-usage-stats", "--temp-dir", str(temp)]
    try:
        subprocess.run([*RAY_START_ON_LOOPBACK, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                        "--include-dashboard", "false", *common], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([*RAY_START_ON_LOOPBACK, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                        *common], env=env, check=True, capture_output=True, timeout=120)
        addresses = _listening(_processes_of(str(temp)))
        assert len(addresses) >= 4 and all(_loopback(a) for a in addresses), addresses
        yield f"127.0.0.1:{port}", env
    finally:
        _stop(_processes_of(str(temp)))
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_two_node_cluster_runs_the_same_sweep_through_address(tmp_path, two_node_cluster):
    address, env = two_node_cluster
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "sparse_rl.sweep", str(_spec(tmp_path, seeds=[0])), "--out", str(out),
                             "--address", address], capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on 2 node(s) with 2 CPUs" in result.stdout and "2/2 trials done" in result.stdout
    assert all((out / "Pendulum-v1" / n / "summary.json").is_file() for n in ("dense-s0", "rigl-s0"))


# ------------------------------------------------------------------------------------------ the report
def _fake_run(root: Path, env: str, name: str, final: float, curve=(100.0, 200.0), real=None,
              nets=("actor", "critic"), density=0.1) -> None:
    """A finished run directory with just what the report reads (its files as train writes them); ``real``:
    the actor's and critic's real-input fractions at each evaluation, as a run on a noisy env records them."""
    run = root / env / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"algo": "sac", "env": env, "seed": int(name.rsplit("-s", 1)[1])}))
    sparsity = {net: {"density": density, "itop_rate": 0.5, "flops": 100 * density, "dense_flops": 100} for net in nets}
    (run / "summary.json").write_text(json.dumps({"final_eval": {"return_mean": final}, "sparsity": sparsity}))
    extra = ",actor_real_input_fraction,critic_real_input_fraction" if real else ""
    rows = "".join(f"{1000 * (i + 1)},0,{v}" + (f",{real[i][0]},{real[i][1]}" if real else "") + "\n"
                   for i, v in enumerate([*curve, final]))
    (run / "evaluations.csv").write_text(f"timesteps,wall_clock_s,return_mean{extra}\n" + rows)


def test_the_report_statistics_equal_rliables_to_the_last_bit():
    """``report``'s IQM, probability of improvement and score distributions stand in for rliable's (which run
    scipy's slow argument handling once per resample): the same numbers, bit for bit, ties and NaN included."""
    from rliable import library, metrics

    rng = np.random.default_rng(0)
    for runs, tasks in [(1, 1), (2, 1), (4, 3), (5, 3), (10, 2), (7, 5), (50, 3)]:
        for ties in (False, True):
            x, y = rng.normal(size=(runs, tasks)) * 100, rng.normal(size=(runs + 1, tasks)) * 100
            if ties:  # whole numbers from a small range: many ties, within and across methods
                x, y = np.round(x / 50), np.round(y / 50)
            taus = np.linspace(x.min() - 1, x.max() + 1, 17)
            assert report.iqm(x).tobytes() == metrics.aggregate_iqm(x).tobytes()
            assert report.iqm(x[:, :1]).tobytes() == metrics.aggregate_iqm(x[:, :1]).tobytes()
            assert report.probability_of_improvement(x, y) == metrics.probability_of_improvement(x, y)
            assert report.probability_of_improvement(x, x) == metrics.probability_of_improvement(x, x) == 0.5
            assert np.array_equal(report.score_distributions(x, taus), library.score_distributions(x, taus))
    x[0, 0] = np.nan
    assert np.isnan(report.iqm(x)) and np.isnan(metrics.aggregate_iqm(x))
    assert np.isnan(report.probability_of_improvement(x, y)) and np.isnan(metrics.probability_of_improvement(x, y))


def test_report_numbers_against_hand_computed_iqm_and_bootstrap_intervals(tmp_path):
    scores = [0.0, 1.0, 2.0, 10.0]
    for seed, v in enumerate(scores):
        _fake_run(tmp_path, "Env-v0", f"m-s{seed}", v)
    for seed, v in enumerate([100.0, 200.0]):
        _fake_run(tmp_path, "Env-v1", f"dense-s{seed}", v)
    for seed, v in enumerate([150.0, 300.0]):
        _fake_run(tmp_path, "Env-v1", f"m-s{seed}", v)
    (tmp_path / ".tune" / "x").mkdir(parents=True)  # a sweep's Tune directory is not a run
    runs = report.find_runs(tmp_path)
    assert sorted((r.env, r.method, r.seed) for r in runs)[:2] == [("Env-v0", "m", 0), ("Env-v0", "m", 1)]

    matrix = {"m": np.array(scores)[:, None]}
    est = report.aggregate_metrics(matrix, reps=20_000, seed=0)["m"]
    assert est["iqm"][0] == pytest.approx(1.5)  # 25% trimmed from each end of 4 runs: mean(1, 2)
    # rliable's median is the median over tasks of each task's mean over runs: one task here
    assert est["mean"][0] == pytest.approx(3.25) and est["median"][0] == pytest.approx(3.25)
    assert est["optimality_gap"][0] == pytest.approx((1.0 + 0.0) / 4)  # only the 0 falls short of 1, by 1
    # the percentile interval of the mean, from all 4^4 equally likely resamples
    means = sorted(sum(c) / 4 for c in itertools.product(scores, repeat=4))
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert abs(est["mean"][1] - lo) <= 0.25 + 1e-9 and abs(est["mean"][2] - hi) <= 0.25 + 1e-9  # atoms are 0.25 apart

    text = report.report(tmp_path, tmp_path / "report", reps=2000)
    # Env-v1: m / dense mean (150) = [1, 2]; P(m > dense) = 3/4 (150 > 100, 150 < 200, 300 > both)
    assert "| m | 0, 1 | 225 ± 147 |" in text
    assert "| m | 2 × 1 | 1.50 [1.00, 2.00] |" in text
    assert text.split("| m | 2 × 1 |")[1].splitlines()[0].split("|")[-2].strip().startswith("0.75 [")
    assert "No `dense` runs here" in text  # Env-v0
    # sample efficiency over envs: m's evaluations (100, 200, final) / dense's mean final (150), IQM of 2 runs = mean
    assert "| method | 1k | 2k | 3k |" in text and "| m | 0.67 | 1.33 | 1.50 |" in text
    assert (tmp_path / "report" / "curves-over-envs.png").is_file()
    assert report.main([str(tmp_path / "nothing")]) == 2


def test_the_report_measures_the_networks_each_algorithm_has(tmp_path):
    """DQN's summaries measure ``q_net``, not an actor and a critic: its density, ITOP and FLOPs are reported."""
    for seed in (0, 1):
        _fake_run(tmp_path, "MinAtar/Breakout-v1", f"dense-s{seed}", 10.0 + seed, nets=("q_net",), density=1.0)
        _fake_run(tmp_path, "MinAtar/Breakout-v1", f"rigl-s{seed}", 8.0 + seed, nets=("q_net",), density=0.1)
        _fake_run(tmp_path, "Pendulum-v1", f"rigl-s{seed}", -200.0 + seed)
    text = report.report(tmp_path, tmp_path / "report", reps=200)
    dqn, sac = text.split("## Pendulum-v1")
    assert "| q_net density | ITOP |" in dqn and "| 1.000 | 0.50 | 1.000 |" in dqn and "| 0.100 | 0.50 | 0.100 |" in dqn
    assert "| actor / critic density | ITOP |" in sac and "| 0.100 / 0.100 | 0.50 | 0.100 |" in sac
    assert "one forward pass through actor, critic, q_net (the ones a run has)" in text


def test_a_report_of_more_methods_than_colors_draws_each_method_its_own_way(tmp_path, monkeypatch):
    # matplotlib's and rliable's palettes repeat after 10 colors: a 12-method report drew pairs alike
    import matplotlib.pyplot as plt

    methods = ["dense", *(f"m{i:02d}" for i in range(11))]
    for i, method in enumerate(methods):
        for seed in (0, 1):
            _fake_run(tmp_path, "Env-v1", f"{method}-s{seed}", 100.0 + 10 * i + seed)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    report.report(tmp_path, tmp_path / "report", reps=200)
    assert len(figures) == 3  # one env's curves, then the profiles and the curves over envs
    drawn = []
    for fig in figures:
        legend = fig.axes[0].get_legend()
        styles = {t.get_text(): (h.get_color(), h.get_linestyle()) for t, h in zip(legend.get_texts(), legend.legend_handles)}
        assert sorted(styles) == sorted(methods)
        assert len(set(styles.values())) == len(methods)
        drawn.append(styles)
    assert drawn[0] == drawn[1] == drawn[2]  # a method looks alike in every plot


def test_a_report_re_made_from_the_same_runs_is_the_same_files(tmp_path):
    # rliable's stratified bootstrap draws from numpy's global generator whatever random_state it is given: the
    # CIs moved with any draw made before the report, and by whole atoms (0.95 against 0.96 on the campaign)
    for env, offset in (("Env-v1", 0.0), ("Env-v2", 50.0)):
        for seed, (d, m) in enumerate([(100.0, 150.0), (200.0, 300.0), (140.0, 90.0), (180.0, 260.0), (120.0, 210.0)]):
            _fake_run(tmp_path / "runs", env, f"dense-s{seed}", d + offset, curve=(10.0 * seed, d / 2))
            _fake_run(tmp_path / "runs", env, f"m-s{seed}", m + offset, curve=(5.0 * seed, m / 3))
    made = []
    for i in range(2):
        np.random.seed(i)  # whatever drew from the global generator before
        np.random.random(7 * i + 1)
        out = tmp_path / f"report-{i}"
        report.report(tmp_path / "runs", out, reps=300)
        made.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert sorted(made[0]) == ["curves-Env-v1.png", "curves-Env-v2.png", "curves-over-envs.png", "profiles.png", "report.md"]
    first = made[0].pop("report.md").decode().replace("report-0", "report-1")  # its re-make command names --out
    assert first == made[1].pop("report.md").decode()
    assert made[0] == made[1]


def test_runs_with_noise_features_get_the_real_input_fraction_over_training(tmp_path):
    for seed in range(3):
        _fake_run(tmp_path, "Env-v1", f"dense-s{seed}", 100.0, real=[(0.1, 0.1)] * 3)
        _fake_run(tmp_path, "Env-v1", f"anf-s{seed}", 150.0, real=[(0.1, 0.1), (0.3 + seed / 10, 0.2), (0.9, 0.5)])
        _fake_run(tmp_path, "Env-v2", f"dense-s{seed}", 100.0)  # no noise features: no such section
    text = report.report(tmp_path, tmp_path / "report", reps=300)
    env1, env2 = text.split("## Env-v2")[0], text.split("## Env-v2")[1]
    actor, critic = env1.split("share of the actor's")[1], env1.split("share of the critic's")[1]
    # IQM of 3 runs (a third trimmed at each end, fractionally): 0.3, 0.4, 0.5 -> 0.4
    assert "| anf | 0.10 | 0.40 | 0.90 |" in actor.split("share of the critic's")[0]
    assert "| dense | 0.10 | 0.10 | 0.10 |" in actor and "| anf | 0.10 | 0.20 | 0.50 |" in critic
    assert (tmp_path / "report" / "real-inputs-Env-v1.png").is_file()
    assert "real features" not in env2 and not (tmp_path / "report" / "real-inputs-Env-v2.png").exists()


def test_curves_over_envs_join_the_steps_every_task_evaluated_and_its_fewest_runs():
    a = np.arange(3 * 3, dtype=float).reshape(3, 1, 3)  # 3 runs at steps 1, 2, 3
    b = 100 + np.arange(2 * 3, dtype=float).reshape(2, 1, 3)  # 2 runs at steps 2, 3, 4
    joined = report.aggregate_curves({"m": [(np.array([1, 2, 3]), a), (np.array([2, 3, 4]), b)],
                                      "x": [(np.array([1]), a[:, :, :1]), (np.array([2]), b[:, :, :1])]})
    assert list(joined) == ["m"]  # x has no step both tasks evaluated
    steps, values = joined["m"]
    assert steps.tolist() == [2, 3] and values.shape == (2, 2, 2)
    assert values[:, 0].tolist() == [[1, 2], [4, 5]] and values[:, 1].tolist() == [[100, 101], [103, 104]]


def test_keep_copies_only_the_small_files_of_finished_runs_and_reports_on_the_store(tmp_path, capsys):
    runs, store = tmp_path / "runs", tmp_path / "store"
    _fake_run(runs, "Env-v1", "dense-s0", 100.0)
    _fake_run(runs, "Env-v1", "m-s0", 150.0)
    (runs / "Env-v1" / "m-s0" / "model.zip").write_text("large, not kept")
    (runs / "Env-v1" / "m-s1").mkdir()  # started, not finished
    (runs / "Env-v1" / "m-s1" / "config.yaml").write_text("env: Env-v1\n")
    _fake_run(store, "Env-v1", "dense-s1", 200.0)  # finished on another machine, stored before
    assert report.main([str(runs), "--keep", str(store), "--out", str(tmp_path / "rep"), "--reps", "500"]) == 0
    kept = [name for name in report.KEPT_FILES if (runs / "Env-v1" / "m-s0" / name).is_file()]
    assert len(kept) == 3 and sorted(p.name for p in (store / "Env-v1" / "m-s0").iterdir()) == sorted(kept)
    assert not (store / "Env-v1" / "m-s1").exists()
    assert "| dense | 0, 1 |" in capsys.readouterr().out  # the stored seed 1 and the kept seed 0


def test_compare_adds_runs_kept_elsewhere_read_only_and_refuses_a_run_twice(tmp_path, capsys):
    runs, store, dense = tmp_path / "runs", tmp_path / "store", tmp_path / "learning"
    _fake_run(runs, "Env-v1", "new-s0", 150.0)
    _fake_run(dense, "Env-v1", "dense-s0", 100.0)
    _fake_run(dense, "Env-v1", "other-s0", 50.0)
    argv = [str(runs), "--keep", str(store), "--reps", "500", "--out", str(tmp_path / "rep"),
            "--compare", str(dense / "Env-v1" / "dense-s0")]  # one run directory, not its siblings
    assert report.main(argv) == 0
    out = capsys.readouterr().out
    assert "| dense | 0 | 100 ± – |" in out and "| other |" not in out  # one run: no t-interval
    assert "| new | 0 | 150 ± – | 150 [150, 150] | 1.50 |" in out  # the ratio to the compared dense
    assert sorted(p.name for p in (store / "Env-v1").iterdir()) == ["new-s0"]  # the compared run is not copied
    assert f"--compare {dense / 'Env-v1' / 'dense-s0'}`" in (tmp_path / "rep" / "report.md").read_text()

    _fake_run(tmp_path / "again", "Env-v1", "new-s0", 160.0)  # the same env, method and seed elsewhere
    before = sorted(tmp_path.rglob("*"))
    assert report.main([str(runs), "--compare", str(tmp_path / "again"), "--out", str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: two runs of Env-v1 new seed 0")
    assert sorted(tmp_path.rglob("*")) == before
    assert report.main([str(runs), "--compare", str(tmp_path / "missing")]) == 2
    assert "'" + str(tmp_path / "missing") + "' is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("spec", sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps").glob("*.yml")),
                         ids=lambda p: p.name)
def test_every_benchmark_spec_plans_its_trials(spec, tmp_path, capsys):
    """The specs the docs quote parse, and every trial's train command is valid (a dry run writes nothing)."""
    code, out, err = _run([spec, "--out", tmp_path / "out", "--dry-run"], capsys)
    assert code == 0, err
    assert out.count("python -m sparse_rl.train") == len(sweep.grid_trials(sweep.load_spec(spec))) > 0
    assert not (tmp_path / "out").exists()


def _campaign_table():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "campaign_table.py"
    spec = importlib.util.spec_from_file_location("campaign_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_preset_rule_prefers_a_cheaper_method_only_within_the_best_ones_interval():
    decide = _campaign_table().decide
    seeds = {"A-v5": 5, "B-v5": 5}

    def info(**methods):
        return {"dense": {"iqm": (1.0, 0.9, 1.1), "cost": 1.0, "seeds": seeds},
                **{m: {"iqm": iqm, "cost": cost, "seeds": seeds} for m, (iqm, cost) in methods.items()}}

    # the best one costs the least already; a method within its CI but dearer does not take it
    text = decide(info(set=((1.07, 1.01, 1.11), 0.10), gmp=((1.02, 0.94, 1.10), 0.38)), "dense", 5, 0.05)
    assert text.endswith("Default: set (no method within its CI costs less).")
    # a cheaper method whose CI reaches the best one's lower end is preferred; one outside it is not
    text = decide(info(gmp=((1.10, 1.00, 1.20), 0.38), set=((1.02, 0.90, 1.00), 0.10),
                       static=((0.80, 0.70, 0.99), 0.10)), "dense", 5, 0.05)
    assert text.endswith("Default: set, the cheapest of those within the best one's CI.")
    # a cost difference below the threshold is no difference
    text = decide(info(rigl=((1.10, 1.00, 1.20), 0.12), set=((1.05, 0.95, 1.15), 0.10)), "dense", 5, 0.05)
    assert text.endswith("Default: rigl (no method within its CI costs less).")
    # an incomplete grid decides nothing and names what is missing
    partial = info(set=((1.07, 1.01, 1.11), 0.10))
    partial["set"]["seeds"] = {"A-v5": 5, "B-v5": 2}
    assert decide(partial, "dense", 5, 0.05) == ("No decision: the grid is not complete; missing seeds: "
                                                 "set on B-v5 (2 of 5).")


def test_the_campaign_table_normalises_each_task_by_dense_and_counts_a_dense_phase_as_cost(tmp_path, capsys):
    module = _campaign_table()
    for seed in range(3):
        for env, scale in (("A-v5", 100.0), ("B-v5", 1000.0)):
            _fake_run(tmp_path, env, f"dense-s{seed}", scale * (1 + seed / 10))
            _fake_run(tmp_path, env, f"m-s{seed}", 2 * scale * (1 + seed / 10))
    run = tmp_path / "A-v5" / "m-s0"  # starts dense, then 10%: (1 + 0.1 + 0.1) / 3 of dense's multiply-adds
    run.joinpath("evaluations.csv").write_text(
        "timesteps,wall_clock_s,return_mean,actor_flops,critic_flops,actor_dense_flops,critic_dense_flops\n"
        "1000,0,1,100,200,100,200\n2000,0,1,10,20,100,200\n3000,0,2,10,20,100,200\n")
    assert module.main([str(tmp_path), "--seeds", "3", "--reps", "200"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| m |"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    # twice dense on each task, whatever its scale: an IQM of 2.00 of dense's mean on both, and always above it
    assert [c.split(" [")[0] for c in cells[:3]] == ["2.00", "2.00", "2.00"] and cells[0].endswith("P 1.00")
    assert cells[3] == "1.00 [1.00, 1.00]"
    # m's cost: the mean over its 6 runs, the 5 without FLOP columns counting as dense
    assert row.endswith(f"| {(5 + 1.2 / 3) / 6:.2f} |")
    assert "Default: m" in out
    assert module.main([str(tmp_path / "none")]) == 2
