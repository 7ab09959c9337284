"""Compare two runs of one config: their evaluation rows, column by column, and their final policies, weight by weight.

    python benchmarks/compare_runs.py OLD_RUN NEW_RUN

Made for a trial trained twice, e.g. once interrupted and resumed, once straight through: the policies must be
equal to the last bit (training resumes exactly), and so must every evaluation row (the wall clock aside) up to
the step the interrupted one resumed from, which the script reads from its ``resuming ... from`` log line when
``--log`` names the log. Prints one line per evaluation and one for the weights; exit 0 when the weights are
equal and every row before the resume step is, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import torch

from sparse_rl.models import load_run_model

IGNORED = ("wall_clock_s",)


def _rows(run: Path) -> dict[int, dict[str, str]]:
    with open(run / "evaluations.csv", newline="") as f:
        return {int(r["timesteps"]): r for r in csv.DictReader(f)}


def resumed_at(log: Path) -> int | None:
    """The step of the first checkpoint a training log says it resumed from, if any."""
    found = re.findall(r"resuming \S+ from \S+ \((\d+) steps", log.read_text(errors="replace"))
    return min(int(s) for s in found) if found else None


def same_weights(a: Path, b: Path) -> tuple[bool, int]:
    """Whether the policies saved in runs ``a`` and ``b`` hold the same tensors; and how many tensors."""
    sd_a, sd_b = load_run_model(a).policy.state_dict(), load_run_model(b).policy.state_dict()
    if sd_a.keys() != sd_b.keys():
        return False, len(sd_a)
    return all(x.dtype == sd_b[k].dtype and torch.equal(x, sd_b[k]) for k, x in sd_a.items()), len(sd_a)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path, help="a run directory (evaluations.csv, model.zip)")
    p.add_argument("new", type=Path, help="another run of the same config")
    p.add_argument("--log", type=Path, default=None, help="OLD's training log, for the step it resumed from")
    args = p.parse_args()
    for run in (args.old, args.new):
        missing = [name for name in ("evaluations.csv", "model.zip") if not (run / name).is_file()]
        if missing:
            print(f"error: {run} holds no {' or '.join(missing)} (a finished run directory is needed)", file=sys.stderr)
            return 2
    if args.log is not None and not args.log.is_file():
        print(f"error: --log {args.log} is not a file (the old run's training log is needed)", file=sys.stderr)
        return 2
    resume = resumed_at(args.log) if args.log is not None else None
    old, new = _rows(args.old), _rows(args.new)
    bad_before = 0
    for step in sorted(old.keys() | new.keys()):
        x, y = old.get(step), new.get(step)
        cols = [k for k in (x or y or {}) if k not in IGNORED]
        differ = [k for k in cols if x is None or y is None or x.get(k) != y.get(k)]
        before = resume is None or step <= resume
        bad_before += bool(differ) and before
        where = "" if resume is None else (" (before the resume)" if before else " (after the resume)")
        shown = f"return {x['return_mean'] if x else '-'} / {y['return_mean'] if y else '-'}"
        print(f"  {step:>7} steps{where}: "
              f"{'equal in all ' + str(len(cols)) + ' columns' if not differ else 'differ in ' + ', '.join(differ[:3])}"
              f" ({shown})")
    equal, count = same_weights(args.old, args.new)
    print(f"final policy: {'equal' if equal else 'DIFFERENT'} in all {count} tensors"
          + ("" if resume is None else f"; resumed at {resume} steps"))
    return 0 if equal and not bad_before else 1


if __name__ == "__main__":
    sys.exit(main())
