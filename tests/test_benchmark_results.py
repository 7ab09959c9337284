"""The benchmarks' result keeping: finished runs are stored in the repository and reports merge, not drop."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import KEPT_FILES, Run, keep_results, merge_rows, read_csv, write_csv

from sparse_rl.run_directory import SUMMARY_FILE


def _finish(run_dir: Path, tag: str) -> None:
    run_dir.mkdir(parents=True)
    for name in KEPT_FILES:
        (run_dir / name).write_text(f"{name} of {tag}")
    (run_dir / "model.zip").write_text("large, not kept")


def test_keep_results_stores_finished_runs_and_reads_stored_ones(tmp_path: Path) -> None:
    root, store = tmp_path / "runs", tmp_path / "docs" / "store"
    here = Run("a", 0, root / "Hopper-v5" / "a-s0", [])
    elsewhere = Run("b", 0, root / "Hopper-v5" / "b-s0", [])  # finished on another machine
    unstarted = Run("c", 0, root / "Hopper-v5" / "c-s0", [])
    _finish(here.run_dir, "here")
    _finish(store / "Hopper-v5" / "b-s0", "elsewhere")

    out = keep_results([here, elsewhere, unstarted], root, store)

    kept = store / "Hopper-v5" / "a-s0"
    assert sorted(p.name for p in kept.iterdir()) == sorted(KEPT_FILES)  # no model, no temp files
    assert (kept / SUMMARY_FILE).read_text() == f"{SUMMARY_FILE} of here"
    assert [r.run_dir for r in out] == [here.run_dir, store / "Hopper-v5" / "b-s0", unstarted.run_dir]
    assert not (store / "Hopper-v5" / "c-s0").exists()


def test_csv_round_trip_keeps_per_seed_finals(tmp_path: Path) -> None:
    rows = [
        {
            "method": "dense",
            "seeds": 2,
            "final_return_mean": 1811.5,
            "ci95": 3.25,
            "env": "Hopper-v5",
            "sparsity": 0.9,
            "actor_dormant_final": "",
            "finals": [675.25, 2946.0],
        },
    ]
    path = tmp_path / "results.csv"
    write_csv(rows, path)
    assert read_csv(path) == rows
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]
    assert read_csv(tmp_path / "missing.csv") == []


def test_read_csv_of_a_file_from_before_finals(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_text("method,seeds,final_return_mean\r\nrigl,2,4961.5\r\n")
    assert read_csv(path) == [{"method": "rigl", "seeds": 2, "final_return_mean": 4961.5, "finals": []}]


def test_merge_rows_replaces_same_key_keeps_the_rest_and_appends_new() -> None:
    old = [
        {"method": "dense", "env": "Hopper-v5", "sparsity": 0.9, "v": 1},
        {"method": "rigl-0.9", "env": "Hopper-v5", "sparsity": 0.9, "v": 2},
        {"method": "rigl-0.9", "env": "HalfCheetah-v5", "sparsity": 0.9, "v": 3},
    ]
    new = [
        {"method": "x-0.9", "env": "Hopper-v5", "sparsity": 0.9, "v": 5},
        {"method": "rigl-0.9", "env": "Hopper-v5", "sparsity": "0.9", "v": 4},  # a CSV string is the same key
    ]
    merged = merge_rows(old, new, ("env", "sparsity", "method"))
    assert [r["v"] for r in merged] == [1, 4, 3, 5]


@pytest.mark.parametrize("sparsity", [0.9, 0.95])
def test_merge_rows_tells_sparsities_apart(sparsity: float) -> None:
    old = [{"method": "dense", "sparsity": 0.9, "v": 0}, {"method": "dense", "sparsity": 0.95, "v": 0}]
    merged = merge_rows(old, [{"method": "dense", "sparsity": sparsity, "v": 1}], ("sparsity", "method"))
    assert [r["v"] for r in merged] == [int(s == sparsity) for s in (0.9, 0.95)]
