"""Infrared/visible video fusion: two streams, each a video file (any container FFmpeg reads,
through PyAV, the `[video]` extra) or a folder of frames in name order, fused frame by frame
into one video at the visible stream's frame rate.

The visible stream's colour is kept as for still pairs (`fuse.fuse_color`: fused on BT.601 Y,
its Cb/Cr kept); an infrared stream is reduced to gray. Frames are fused `batch` at a time,
while one thread decodes the next batches and another encodes the last ones. The output (and
the weight-map videos) are written under temporary names and renamed once complete.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import threading
import uuid
from fractions import Fraction

import numpy as np

from ifes_jax import fuse
from ifes_jax.data.images import (IMAGE_EXTENSIONS, MAX_PIXELS, luma, read_image, rgb_to_ycbcr,
                                  to_float01, to_uint, ycbcr_to_rgb)
from ifes_jax.errors import DataError, InputError

DEFAULT_RATE = Fraction(25)  # frame folders carry no rate: `fps` or this


def default_batch() -> int:
    """Frames per network call: 8 on an accelerator; 1 on a CPU, where a 640x480 frame takes
    longer in a batch of 2 or 4 than alone (docs/benchmarks.md)."""
    import jax
    return 1 if jax.default_backend() == "cpu" else 8


def _av():
    try:
        import av
    except ImportError:
        raise InputError("video fusion needs PyAV: pip install 'ifes-jax[video]'") from None
    return av


@dataclasses.dataclass(frozen=True)
class Stream:
    """One input: a video file or a folder of frames (`frames` lists them, in name order)."""
    path: str
    count: int
    width: int
    height: int
    rate: Fraction | None  # None for a folder of frames
    frames: tuple[str, ...] = ()

    def describe(self) -> str:
        rate = f"{float(self.rate):g} fps" if self.rate else "frames"
        return f"{self.path} ({self.count} frames of {self.width}x{self.height}, {rate})"


def probe(path) -> Stream:
    """The frame count, size and rate of a video file or a folder of frames (one-line errors)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        frames = tuple(os.path.join(path, f) for f in sorted(os.listdir(path))
                       if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        if not frames:
            raise DataError(f"{path}: a folder without frames ({', '.join(IMAGE_EXTENSIONS)})")
        from ifes_jax.data.pairs import image_size
        width, height = image_size(frames[0])
        return Stream(path, len(frames), width, height, None, frames)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such video file or folder of frames")
    av = _av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{path}: holds no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            count = sum(1 for packet in container.demux(stream) if packet.size)
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.FFmpegError as exc:
        raise DataError(f"{path}: not a readable video ({exc})") from None
    if count == 0 or not width or not height:
        raise DataError(f"{path}: a video without frames")
    return Stream(path, count, width, height, Fraction(rate) if rate else None)


def read_frames(stream: Stream, color: bool, max_pixels: int = MAX_PIXELS):
    """The frames of `stream` as float32 in [0, 1]: (H, W, 3) RGB where `color` and the source
    has colour, else (H, W) gray (BT.601 Y)."""
    if stream.frames:
        first_mode = None
        for path in stream.frames:
            pixels, bits, mode = read_image(path, max_pixels)
            if pixels.shape[:2] != (stream.height, stream.width):
                raise DataError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]}, the folder's "
                                f"first frame is {stream.width}x{stream.height}")
            first_mode = first_mode or mode
            image = to_float01(pixels, bits)
            if not color or first_mode == "gray":  # the first frame decides gray or colour
                yield luma(image)
            else:
                yield image if mode == "rgb" else np.repeat(image[..., None], 3, axis=-1)
        return
    av = _av()
    try:
        with av.open(stream.path) as container:
            source = container.streams.video[0]
            source.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(source)):
                pixels = frame.to_ndarray(format="rgb24" if color else "gray")
                yield pixels.astype(np.float32) / 255.0
    except av.FFmpegError as exc:
        raise DataError(f"{stream.path}: cannot be decoded ({exc})") from None


def check_streams(ir: Stream, vis: Stream, trim: bool = False) -> int:
    """The number of frames to fuse; refuses (one line) streams of different sizes or rates,
    and of different frame counts unless `trim` (then the shorter count)."""
    if (ir.width, ir.height) != (vis.width, vis.height):
        raise InputError(f"{ir.path} is {ir.width}x{ir.height}, {vis.path} is "
                         f"{vis.width}x{vis.height}: frame sizes differ")
    if ir.rate and vis.rate and ir.rate != vis.rate:
        raise InputError(f"{ir.path} plays at {float(ir.rate):g} fps, {vis.path} at "
                         f"{float(vis.rate):g} fps: frame rates differ")
    if ir.count != vis.count and not trim:
        raise InputError(f"{ir.path} has {ir.count} frames, {vis.path} has {vis.count}: frame "
                         "counts differ (--trim fuses the first frames of the shorter)")
    return min(ir.count, vis.count)


def output_paths(out_path, save_weights: bool = False) -> list[str]:
    """The fused video and, with `save_weights`, NAME_weight_ir.EXT and NAME_weight_vis.EXT."""
    stem, ext = os.path.splitext(out_path)
    return [out_path] + ([f"{stem}_weight_ir{ext}", f"{stem}_weight_vis{ext}"] if save_weights else [])


class _Encoder:
    """One output video written to a temporary file beside `path` (`commit` renames it)."""

    def __init__(self, path, width, height, rate, codec):
        av = _av()
        folder, name = os.path.split(os.path.abspath(path))
        self.path, self.tmp = path, os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
        os.makedirs(folder, exist_ok=True)
        self.container = av.open(self.tmp, "w")
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width, height
        # 4:2:0 halves the chroma planes: odd sizes keep every pixel's colour in 4:4:4
        self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"

    def write(self, image01):
        pixels = to_uint(image01)
        fmt = "rgb24" if pixels.ndim == 3 else "gray"
        frame = _av().VideoFrame.from_ndarray(pixels, format=fmt).reformat(format=self.stream.pix_fmt)
        self.container.mux(self.stream.encode(frame))

    def close(self):
        self.container.mux(self.stream.encode())
        self.container.close()

    def commit(self):
        os.replace(self.tmp, self.path)

    def discard(self):
        try:
            self.container.close()
        except Exception:  # already closed, or the failure being cleaned up after
            pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def _batches(ir: Stream, vis: Stream, count: int, batch: int, max_pixels):
    """(ir (B, H, W), vis (B, H, W[, 3])) numpy batches of the first `count` frame pairs."""
    ir_frames, vis_frames = read_frames(ir, False, max_pixels), read_frames(vis, True, max_pixels)
    for start in range(0, count, batch):
        n = min(batch, count - start)
        pairs = [(next(ir_frames, None), next(vis_frames, None)) for _ in range(n)]
        for offset, (a, b) in enumerate(pairs):
            if a is None or b is None:
                short = ir if a is None else vis
                raise DataError(f"{short.path}: ended after {start + offset} frames, "
                                f"{short.count} were counted")
        yield np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])


def _in_background(iterable, depth: int = 2):
    """Iterate `iterable` in a thread, `depth` items ahead; its exceptions are raised here."""
    items, done = queue.Queue(maxsize=depth), object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as exc:  # handed to the consumer
            items.put((done, exc))
        finally:
            getattr(iterable, "close", lambda: None)()
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, exc = items.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _fuse_batch(fuser, ir, vis, batch, smooth_weights):
    """Fused RGB (or gray) frames and weights of one batch (padded to `batch`: one program)."""
    n = len(ir)
    color = vis.ndim == 4
    y = rgb_to_ycbcr(vis) if color else vis[..., None]
    pad = ((0, batch - n),) + ((0, 0),) * 2
    out = fuser(np.pad(ir, pad, mode="edge"), np.pad(y[..., 0], pad, mode="edge"),
                smooth_weights=smooth_weights)
    fused, weights = out["fused"][:n], out["weights"][:n]
    if color:
        fused = np.clip(ycbcr_to_rgb(np.concatenate([fused[..., None], y[..., 1:]], -1)), 0, 1)
    return fused, weights


def output_rate(ir: Stream, vis: Stream, fps=None) -> Fraction:
    """The visible stream's rate, else the infrared one's; of two frame folders `fps` (25)."""
    rate = vis.rate or ir.rate
    if fps is not None and rate is not None:
        raise InputError(f"--fps is for folders of frames: {vis.path if vis.rate else ir.path} "
                         f"plays at {float(rate):g} fps")
    if fps is not None and not fps > 0:
        raise InputError(f"--fps must be positive, got {fps}")
    return rate or Fraction(fps if fps is not None else DEFAULT_RATE).limit_denominator(1001)


def fuse_videos(fuser, ir_source, vis_source, out_path, *, batch: int = 8, trim: bool = False,
                save_weights: bool = False, smooth_weights: bool = False, fps=None,
                overwrite: bool = False, codec: str = "libx264", progress: bool = True,
                max_pixels: int = MAX_PIXELS) -> dict:
    """Fuse two streams (paths, or the `Stream`s `probe` made of them) into the video
    `out_path` (its container from the extension), at the visible stream's rate (a frame
    folder's: `fps`, default 25). Returns {"frames", "rate", "ir", "vis"}. Nothing is left
    under the output names if anything fails."""
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    ir, vis = (s if isinstance(s, Stream) else probe(s) for s in (ir_source, vis_source))
    count = check_streams(ir, vis, trim)
    rate = output_rate(ir, vis, fps)
    outputs = output_paths(out_path, save_weights)
    fuse.check_outputs(outputs, [ir.path, vis.path], overwrite)
    encoders, bar = [], _progress(count, progress)
    try:
        encoders = [_Encoder(p, ir.width, ir.height, rate, codec) for p in outputs]
        fused = (_fuse_batch(fuser, ir_b, vis_b, batch, smooth_weights) for ir_b, vis_b
                 in _in_background(_batches(ir, vis, count, batch, max_pixels)))
        _encode(_in_background(fused), encoders, bar)
        for encoder in encoders:
            encoder.close()
    except BaseException as exc:
        for encoder in encoders:
            encoder.discard()
        if isinstance(exc, _av().FFmpegError):
            raise InputError(f"{out_path}: cannot be encoded ({exc})") from None
        raise
    finally:
        bar.close()
    for encoder in encoders:
        encoder.commit()
    return {"frames": count, "rate": rate, "ir": ir, "vis": vis}


def _encode(batches, encoders, bar):
    """Write each fused frame (and its two weight maps, when there are three encoders)."""
    for fused, weights in batches:
        for i in range(len(fused)):
            encoders[0].write(fused[i])
            for k, encoder in enumerate(encoders[1:]):
                encoder.write(np.clip(weights[i, ..., k], 0, 1))
        bar.update(len(fused))
        elapsed = max(bar.format_dict["elapsed"], 1e-9)
        bar.set_postfix_str(f"{bar.n / elapsed:.2f} frames/s")


def _progress(total, enabled):
    from tqdm import tqdm
    return tqdm(total=total, desc="fuse video", unit="frame", disable=not enabled or total < 2)
