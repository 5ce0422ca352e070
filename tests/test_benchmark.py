"""scripts/benchmark.py runs every case (tiny sizes, one repetition): it cannot rot. No timings
are asserted."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def test_every_benchmark_case_runs_once(tmp_path, capsys):
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--tiny",
                             "--out", str(out), "--plot", str(plot)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("train step") == 7 and kinds.count("inference") == 7
    assert kinds.count("deployment") == 4 and any("frames_per_s" in r for r in rows)
    assert kinds.count("loss (value + grad)") == 2 and kinds.count("input pipeline") == 2 + 2 * 4
    from ifes_jax.cpu import native
    conv_paths = 3 if native.unavailable() is None else 2  # YNNPACK, XLA, oneDNN
    profiles_timed = [r["case"].split(", ")[-1] for r in rows if r["kind"] == "metrics per pair"]
    assert profiles_timed == ["default profile", "vifb profile", "cddfuse profile"]
    assert kinds.count("convolutions") == 2 * 3 * conv_paths
    assert all(r["seconds"] > 0 and np.isfinite(r["seconds"]) for r in rows)
    assert plot.exists() and "| case |" in result.stdout
    import benchmark
    benchmark.main(["--render", str(out)])
    assert capsys.readouterr().out.count("\n| ") == len(rows) + 1  # the header, a line per case


def test_the_benchmarks_patch_unfolding_loss_is_the_closed_form_loss():
    import benchmark
    from ifes_jax import losses
    from ifes_jax.data.synthetic import synthetic_pair
    ir, vis = synthetic_pair(0, 40, 44)
    fused = 0.3 * ir + 0.7 * vis
    np.testing.assert_allclose(float(benchmark.naive_window_loss(fused, ir, vis)),
                               1 - float(losses.decomposition_ssim(fused, ir, vis)), atol=1e-5)
