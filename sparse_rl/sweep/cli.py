"""``python -m sparse_rl.sweep SPEC --out DIR``: the command line (see :mod:`sparse_rl.sweep`)."""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

import sparse_rl.sweep as package
from sparse_rl.run_directory import SUMMARY_FILE, atomic_write
from sparse_rl.sweep.execution import check_address, run_grid
from sparse_rl.sweep.plan import check_trials, grid_trials, prepare_out, train_argv
from sparse_rl.sweep.search import _search_base, run_search
from sparse_rl.sweep.spec import EXIT_BAD_INPUT, LOG_DIR, SPEC_FILE, SweepError, load_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.sweep", description=(package.__doc__ or "").splitlines()[0])
    p.add_argument("spec", type=Path, help="sweep spec (YAML)")
    p.add_argument("--out", type=Path, required=True, help="directory of the sweep's run directories")
    p.add_argument("--address", default=None, help="Ray cluster HOST:PORT (default: $RAY_ADDRESS, else this machine)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: the cluster's CPUs)")
    p.add_argument("--resume", action="store_true", help="continue a stopped sweep: finished trials kept")
    p.add_argument("--only", metavar="GLOB", nargs="+",
                   help="run the trials whose ENV/NAME matches one of the globs, e.g. '*/dense-*' '*/rigl-s0'")
    p.add_argument("--dry-run", action="store_true", help="list the trials and their train commands, run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if args.max_concurrent is not None and args.max_concurrent <= 0:
            raise SweepError(f"--max-concurrent must be positive, got {args.max_concurrent}")
        spec = load_spec(args.spec)
        trials = grid_trials(spec) if spec.search is None else []
        if args.only is not None:
            if spec.search is not None:
                raise SweepError("--only selects trials of a grid; this spec is a search")
            names = [f"{t.env}/{t.name}" for t in trials]
            for glob in args.only:
                if not fnmatch.filter(names, glob):
                    more = ", ..." if len(names) > 6 else ""
                    raise SweepError(f"--only {glob!r} matches no trial (trials: {', '.join(names[:6])}{more})")
            trials = [t for t, name in zip(trials, names) if any(fnmatch.fnmatch(name, g) for g in args.only)]
        if spec.search is None:
            check_trials(spec, trials, out, args.resume)
        else:
            check_trials(spec, [_search_base(spec)], out / ".probe", False)
        if args.dry_run:
            for t in trials:
                print(f"{t.env}/{t.name}: python -m sparse_rl.train {shlex.join(train_argv(spec, t, t.run_dir(out)))}")
            return 0
        write_spec = prepare_out(spec, out, args.resume)
        if address:
            check_address(address)
        try:
            from ray import tune  # noqa: F401
        except ImportError:
            raise SweepError('sweeps need Ray: pip install -e ".[sweep]"') from None
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out.mkdir(parents=True, exist_ok=True)
    if write_spec:  # a new sweep, or a grid grown on --resume
        atomic_write(out / SPEC_FILE, lambda f: f.write(yaml.safe_dump(spec.raw, sort_keys=False).encode()))
    start = time.time()
    try:
        if spec.search is None:
            finished_before = sum((t.run_dir(out) / SUMMARY_FILE).is_file() for t in trials)
            rows = run_grid(spec, out, trials, args.max_concurrent, address)
            failed = [r for r in rows if r["error"]]
            done = sum((t.run_dir(out) / SUMMARY_FILE).is_file() for t in trials)
            resume = f"python -m sparse_rl.sweep {args.spec} --out {args.out} --resume"
            if done < len(trials) and not failed:  # Tune takes Ctrl-C itself: it stops the trials and returns
                print(f"\ninterrupted after {(time.time() - start) / 60:.1f} min: {done}/{len(trials)} trials done; "
                      f"continue with: {resume}", file=sys.stderr)
                return 130
            print(f"sweep finished in {(time.time() - start) / 60:.1f} min: {done}/{len(trials)} trials done "
                  f"({finished_before} were already), {len(failed)} failed; report: python -m sparse_rl.report {out}")
            for r in failed:
                print(f"  failed: {r['env']}/{r['name']}: {r['error'].strip().splitlines()[-1]}")
            if failed:
                print(f"  their logs: {out / LOG_DIR}; after a fix, rerun them with: {resume}")
            return 1 if failed else 0
        run_search(spec, out, args.max_concurrent, address, args.resume)
        return 0
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m sparse_rl.sweep {args.spec} --out {args.out} --resume",
              file=sys.stderr)
        return 130
    finally:
        try:
            import ray

            ray.shutdown()
        except Exception:  # pragma: no cover - shutting down what may not have started
            pass

