"""scripts/evaluate.py: tables, files, method kinds and bad input."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ifes_jax import evaluate, metrics, profiles

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pairs_folder(root, names=("p1", "p2", "p3"), size=(72, 80)):
    rng = np.random.default_rng(0)
    for sub in ("ir", "vis"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(os.path.join(root, "ir", f"{name}.png"))
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(os.path.join(root, "vis", f"{name}.png"))
    return str(root)


def _fused_folder(root, data, fn=lambda ir, vis: (ir + vis) / 2):
    os.makedirs(root, exist_ok=True)
    for name in ("p1", "p2", "p3"):
        pair = evaluate.load_pair(evaluate.pairs_lib.Pair(
            name, os.path.join(data, "ir", f"{name}.png"), os.path.join(data, "vis", f"{name}.png")))
        Image.fromarray(np.rint(fn(pair.ir, pair.vis) * 255).astype(np.uint8)).save(os.path.join(root, f"{name}.png"))
    return str(root)


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_cli_writes_table_csv_json_and_figure(tmp_path):
    data = _pairs_folder(tmp_path / "data")
    fused = _fused_folder(tmp_path / "other", data)
    out = tmp_path / "out"
    result = _run("--data", data, "--methods", f"average,max,laplacian,target,dir:{fused}",
                  "--profile", "default", "--out", str(out), "--pairs", "p1..p2,p3")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    labels = ["average", "max", "laplacian", "target", "other"]
    assert all(label in results for label in labels)
    assert set(results["average"]) == set(profiles.names("default"))
    # the average fused by the other tool, saved in 8 bits, scores like our float average
    assert abs(results["other"]["EN"] - results["average"]["EN"]) < 0.1
    rows = list(csv.DictReader(open(out / "per_pair.csv")))
    assert len(rows) == 3 * len(labels)
    mean_ag = np.mean([float(r["AG"]) for r in rows if r["method"] == "max"])
    np.testing.assert_allclose(results["max"]["AG"], mean_ag, rtol=1e-4)
    table = (out / "table.md").read_text()
    assert table.startswith("| metric | average | max | laplacian | target | other |")
    assert "BT.601 Y" in table and "float fusion" in table
    best_en = max(results[label]["EN"] for label in labels)
    assert f"**{evaluate._fmt(best_en)}**" in table
    assert (out / "figure.png").exists()


def test_paper_profile_footnotes_its_mi(tmp_path):
    data = _pairs_folder(tmp_path / "data", names=("p1",))
    results = evaluate.evaluate(data, evaluate.parse_methods("average"), str(tmp_path / "out"),
                                profile="paper", quantize=True, log=lambda m: None)
    np.testing.assert_allclose(results["average"]["MI"], 2 * results["average"]["EN"], rtol=1e-6)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "2 × EN(F)" in table and "8-bit" in table


def test_bad_fused_images_are_reported_or_skipped(tmp_path):
    data = _pairs_folder(tmp_path / "data")
    fused = _fused_folder(tmp_path / "other", data)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(os.path.join(fused, "p2.png"))
    os.remove(os.path.join(fused, "p3.png"))
    result = _run("--data", data, "--methods", f"average,dir:{fused}", "--out", str(tmp_path / "o1"))
    assert result.returncode == 1
    assert "p2.png is 10x10, its pair is 80x72" in result.stderr
    assert not (tmp_path / "o1" / "table.md").exists()
    result = _run("--data", data, "--methods", f"average,dir:{fused}", "--out", str(tmp_path / "o2"),
                  "--skip-bad")
    assert result.returncode == 1, result.stderr[-2000:]
    results = json.loads((tmp_path / "o2" / "results.json").read_text())
    assert results["meta"]["pairs"] == 1
    skipped = dict(results["meta"]["skipped"])
    assert "10x10" in skipped["p2"] and "no fused image for pair 'p3'" in skipped["p3"]
    assert "Skipped:" in (tmp_path / "o2" / "table.md").read_text()


def test_unknown_methods_and_pairs_are_clear_errors(tmp_path):
    data = _pairs_folder(tmp_path / "data", names=("p1",))
    with pytest.raises(evaluate.ConfigError, match="unknown method 'median'"):
        evaluate.parse_methods("average,median")
    with pytest.raises(evaluate.InputError, match="no such folder"):
        evaluate.parse_methods("dir:/nowhere/at/all")
    with pytest.raises(evaluate.InputError, match="not in the folder"):
        evaluate.evaluate(data, evaluate.parse_methods("average"), str(tmp_path / "o"), pair_spec="p9")


def test_a_constant_fusion_gives_finite_scores(tmp_path):
    data = _pairs_folder(tmp_path / "data", names=("p1",))
    fused = tmp_path / "flat"
    os.makedirs(fused)
    Image.fromarray(np.full((72, 80), 128, np.uint8)).save(fused / "p1.png")
    results = evaluate.evaluate(data, evaluate.parse_methods(f"dir:{fused}"), str(tmp_path / "o"),
                                profile="default", log=lambda m: None)
    assert all(np.isfinite(v) for v in results["flat"].values())
