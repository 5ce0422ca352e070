"""Video fusion (scripts/fuse.py --ir-video/--vis-video): every output frame is the still-pair
fusion (`fuse_color`) of its two input frames, at the right rate and with the visible colour;
mismatched or unreadable streams are refused in one line and nothing is left behind."""
import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from ifes_jax import fuse, video
from ifes_jax.data.images import read_image, to_float01, write_png
from ifes_jax.data.synthetic import synthetic_pair
from ifes_jax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEIGHT, WIDTH = 47, 63  # odd: the output is 4:4:4, so colour survives to 8-bit rounding


def _write_video(path, frames, rate, codec="ffv1"):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
        for pixels in frames:
            fmt = "rgb24" if pixels.ndim == 3 else "gray"
            frame = av.VideoFrame.from_ndarray(pixels, format=fmt).reformat(format=stream.pix_fmt)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _decode(path, fmt="rgb24"):
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        return [f.to_ndarray(format=fmt) for f in container.decode(video=0)], rate


def _frames(count, height=HEIGHT, width=WIDTH):
    """Gray infrared and colour visible uint8 frames."""
    ir, vis = [], []
    for i in range(count):
        a, b = synthetic_pair(i, height, width)
        ir.append(np.rint(a * 255).astype(np.uint8))
        tint = np.stack([b, 0.6 * b + 0.2, 1 - 0.5 * b], -1)
        vis.append(np.rint(tint * 255).astype(np.uint8))
    return ir, vis


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """An infrared video (lossless, 30 fps) and a folder of colour visible PNG frames."""
    root = tmp_path_factory.mktemp("streams")
    ir, vis = _frames(5)
    _write_video(root / "ir.mkv", ir, 30)
    (root / "vis").mkdir()
    for i, frame in enumerate(vis):
        write_png(str(root / "vis" / f"frame_{i:03d}.png"), frame / 255.0)
    return root


def _fuse_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fuse.py")] + list(args),
                          capture_output=True, text=True, timeout=300)


def test_every_output_frame_is_the_fusion_of_its_pair(streams, tmp_path):
    out = tmp_path / "fused.mkv"
    result = _fuse_cli("--ir-video", str(streams / "ir.mkv"), "--vis-video", str(streams / "vis"),
                       "--out", str(out), "--codec", "ffv1", "--batch", "2", "--save-weights")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 frames at 30 fps" in result.stdout
    fused, rate = _decode(out)
    assert rate == 30 and len(fused) == 5 and fused[0].shape == (HEIGHT, WIDTH, 3)
    weights_ir, _ = _decode(tmp_path / "fused_weight_ir.mkv", "gray")
    fuser = fuse.load_exported()
    ir_frames, _ = _decode(streams / "ir.mkv", "gray")
    vis_paths = sorted(os.listdir(streams / "vis"))
    for i, name in enumerate(vis_paths):
        pixels, bits, _ = read_image(str(streams / "vis" / name))
        want = fuse.fuse_color(fuser, ir_frames[i] / np.float32(255), to_float01(pixels, bits))
        np.testing.assert_allclose(fused[i] / 255.0, want["fused"], atol=3 / 255)
        np.testing.assert_allclose(weights_ir[i] / 255.0, np.clip(want["weights"][..., 0], 0, 1),
                                   atol=2 / 255)
    # the colour is the visible frame's: chroma follows the visible image, not the gray fusion
    assert np.abs(fused[0][..., 0].astype(int) - fused[0][..., 2]).mean() > 20
    assert sorted(os.listdir(tmp_path)) == ["fused.mkv", "fused_weight_ir.mkv", "fused_weight_vis.mkv"]


def test_two_videos_fuse_at_the_visible_rate_with_h264(tmp_path):
    ir, vis = _frames(3, 48, 64)
    _write_video(tmp_path / "ir.mp4", ir, Fraction(30000, 1001), "libx264")
    _write_video(tmp_path / "vis.mp4", vis, Fraction(30000, 1001), "libx264")
    done = video.fuse_videos(fuse.load_exported(), tmp_path / "ir.mp4", tmp_path / "vis.mp4",
                             tmp_path / "out.mp4", batch=2, progress=False)
    frames, rate = _decode(tmp_path / "out.mp4")
    assert done["frames"] == 3 and len(frames) == 3 and rate == Fraction(30000, 1001)
    assert frames[0].shape == (48, 64, 3)


def test_mismatched_streams_are_refused_or_trimmed(streams, tmp_path):
    ir, vis = _frames(3)
    _write_video(tmp_path / "short.mkv", ir, 30)
    _write_video(tmp_path / "fast.mkv", ir + ir[:2], 60)
    _write_video(tmp_path / "small.mkv", [f[:40, :60] for f in ir], 30)
    vis_folder = str(streams / "vis")
    out = tmp_path / "o.mkv"
    for ir_path, message in ((tmp_path / "short.mkv", "has 3 frames, "),
                             (tmp_path / "small.mkv", "frame sizes differ")):
        result = _fuse_cli("--ir-video", str(ir_path), "--vis-video", vis_folder, "--out", str(out))
        assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(InputError, match="frame rates differ"):
        video.check_streams(video.probe(tmp_path / "fast.mkv"), video.probe(streams / "ir.mkv"))
    trimmed = video.fuse_videos(fuse.load_exported(), tmp_path / "short.mkv", vis_folder, out,
                                trim=True, progress=False, codec="ffv1")
    assert trimmed["frames"] == 3 and len(_decode(out)[0]) == 3


def test_unreadable_streams_and_failures_mid_way_leave_nothing(streams, tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    result = _fuse_cli("--ir-video", str(tmp_path / "junk.mp4"), "--vis-video", str(streams / "vis"),
                       "--out", str(tmp_path / "o.mp4"))
    assert result.returncode == 1 and "junk.mp4: not a readable video" in result.stderr
    broken = tmp_path / "vis"
    broken.mkdir()
    for name in sorted(os.listdir(streams / "vis")):
        (broken / name).write_bytes((streams / "vis" / name).read_bytes())
    (broken / "frame_003.png").write_bytes(b"not a png")  # the 4th frame is corrupt
    out = tmp_path / "out" / "f.mkv"
    with pytest.raises(InputError, match="frame_003.png: not a readable image"):
        video.fuse_videos(fuse.load_exported(), streams / "ir.mkv", broken, out, batch=1,
                          save_weights=True, progress=False, codec="ffv1")
    assert os.listdir(tmp_path / "out") == []  # no output, no temporary file
    with pytest.raises(InputError, match="overwrite the input"):
        video.fuse_videos(fuse.load_exported(), streams / "ir.mkv", streams / "vis",
                          streams / "ir.mkv", progress=False)


def test_ctrl_c_mid_way_leaves_nothing(streams, tmp_path):
    shipped = fuse.load_exported()
    calls = []

    def interrupted(ir, vis, **options):  # the user presses Ctrl-C during the second batch
        calls.append(len(ir))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return shipped(ir, vis, **options)
    with pytest.raises(KeyboardInterrupt):
        video.fuse_videos(interrupted, streams / "ir.mkv", streams / "vis", tmp_path / "f.mp4",
                          batch=2, save_weights=True, progress=False)
    assert calls == [2, 2] and os.listdir(tmp_path) == []
