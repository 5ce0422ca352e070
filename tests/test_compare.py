"""scripts/compare.py: paired changes against a reference, checked with numpy."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _results(path, scores):
    """An evaluate results.json of {method: (AG values per pair)}."""
    per_pair = {m: {f"p{i}": {"AG": float(v)} for i, v in enumerate(vals)} for m, vals in scores.items()}
    means = {m: {"AG": float(np.mean(vals))} for m, vals in scores.items()}
    path.write_text(json.dumps(dict(means, per_pair=per_pair, meta={})))
    return str(path)


def test_paired_change_matches_numpy_and_files_merge(tmp_path):
    from ifes_jax import compare
    ref = np.array([7.0, 8.0, 9.5, 10.0, 6.5])
    other = ref + np.array([0.3, -0.1, 0.4, 0.2, 0.1])
    a = _results(tmp_path / "a.json", {"ref": ref})
    b = _results(tmp_path / "b.json", {"other": other})
    per_pair, means = compare.load_results([a, b])
    got = compare.paired_change(per_pair["other"], per_pair["ref"], "AG")
    d = other - ref
    np.testing.assert_allclose(got["change"], 100 * d.mean() / ref.mean())
    np.testing.assert_allclose(got["se"], d.mean() / (d.std(ddof=1) / np.sqrt(5)))
    assert got["higher"] == 4 and got["n"] == 5
    out = tmp_path / "c.md"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "compare.py"), "--results", a, b,
                             "--against", "ref", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    row = f"| other | {got['change']:+.1f} % ({got['se']:+.1f} se, 4/5) |"
    assert row in result.stdout and row in out.read_text()


def test_other_pairs_or_a_missing_reference_are_one_line_errors(tmp_path):
    a = _results(tmp_path / "a.json", {"ref": [1.0, 2.0]})
    b = _results(tmp_path / "b.json", {"other": [1.0, 2.0, 3.0]})
    for args in (["--results", a, b, "--against", "ref"], ["--results", a, "--against", "nobody"],
                 ["--results", str(tmp_path / "none.json"), "--against", "ref"]):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "compare.py"), *args],
                                capture_output=True, text=True)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
