"""Sample frames from a video file: decord for speed, PyAV whenever decord cannot be trusted.

A cheap PyAV demux pass (packets only, no decoding) comes first. It gives the frame count and
timestamps even where the container states neither, and it tells when decord would go wrong:
decord lists keyframes by decode order and seeks by them, so on open-GOP streams (HEVC with
leading B-frames, e.g. the Popeye clips) its `get_batch` silently returns frames from seconds
earlier; and where a container over-states the frame count, `get_batch` has been reported to
hang in native code (dmlc/decord#373). Only when decord's count and keyframes agree with the
demuxer's is its `get_batch` used.

Both readers open the stream FFmpeg calls "best": a file may hold several video streams, and
decord always reads that one. Every call opens its own readers, so threads may decode at once.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import av
import decord
import numpy as np


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray
    """uint8 RGB `[N, H, W, 3]` at the stream's native resolution, C-contiguous."""
    indices: tuple[int, ...]
    """Frame numbers sampled (0-based, in presentation order within the stream)."""
    seconds: tuple[float, ...]
    """Presentation timestamps of those frames."""
    fps: float
    total_frames: int
    reader: str
    """Which library decoded the frames: "decord" or "pyav"."""


class DecodeError(Exception):
    """The file gives no frames; the message is a one-line reason fit for a failure record."""


def sample_indices(total_frames: int, num_frames: int) -> list[int]:
    """Uniform sampling over the whole clip at segment midpoints.

    Index i is `floor((i + 0.5) * total / num)`; a clip shorter than `num_frames` repeats frames
    so every item yields the same number.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if total_frames < 1:
        raise ValueError(f"total_frames must be at least 1, got {total_frames}")
    # Integer arithmetic: a float midpoint can land a hair below an exact integer.
    return [(2 * i + 1) * total_frames // (2 * num_frames) for i in range(num_frames)]


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def unreadable_reason(path: str | Path) -> str | None:
    """Why `path` is no video file to read, found with `stat` alone (a FIFO is never opened:
    reading one blocks until something writes to it), or None for a non-empty regular file."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            return "dangling symlink: the file it points to does not exist"
        return f"no such file: {path}"
    except OSError as e:
        return f"cannot read the file: {e.strerror or e}"
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a file")
        return f"not a regular file but {kind}: not read"
    if info.st_size == 0:
        return "file is empty"
    return None


def decode_video(path: str | Path, num_frames: int) -> DecodedVideo:
    """`num_frames` frames sampled uniformly over the clip (see `sample_indices`).

    Each distinct frame is decoded once, so decoding a clip shorter than `num_frames` holds no
    more frames than the clip has; only the returned batch repeats them (`num_frames` frames,
    bounded by `ExtractConfig`'s frame limit), so that every item gives the model the number of
    frames its dataset's manifest states. Files that are no regular file are refused from
    `stat` alone, never opened."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    path = Path(path)
    why = unreadable_reason(path)
    if why:
        raise DecodeError(why)
    probe = _probe(path)
    video = _decode_decord(path, num_frames, probe)
    return video if video is not None else _decode_pyav(path, num_frames, probe)


@dataclass(frozen=True)
class _Probe:
    packets: int
    keyframes: list[int]
    """Presentation-order positions of the keyframe packets."""
    seconds: list[float] | None
    """Packet timestamps in presentation order; None when the container leaves some out."""
    fps: float


def _probe(path: Path) -> _Probe:
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise DecodeError(f"not a readable video: {_reason(e)}") from e
    with container:
        stream = container.streams.best("video")
        if stream is None:
            raise DecodeError("no video stream")
        packets = []
        try:
            # Empty packets are demuxer flush markers, not frames.
            packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        except av.FFmpegError:
            pass  # a damaged file: decoding finds out how much of it is usable
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        timed = all(pts is not None for pts, _ in packets)
        if timed:
            packets.sort(key=lambda p: p[0])
        return _Probe(
            packets=len(packets),
            keyframes=[i for i, (_, key) in enumerate(packets) if key],
            seconds=[float(pts * stream.time_base) for pts, _ in packets] if timed else None,
            fps=fps,
        )


def _decode_decord(path: Path, num_frames: int, probe: _Probe) -> DecodedVideo | None:
    """decord's frames, or None where decord cannot open, read or be trusted with the file."""
    try:
        reader = decord.VideoReader(str(path))
        if len(reader) != probe.packets or reader.get_key_indices() != probe.keyframes:
            return None
        indices = sample_indices(len(reader), num_frames)
        distinct = sorted(set(indices))  # a short clip: decode each of its frames once
        batch = reader.get_batch(distinct)
        fps = float(reader.get_avg_fps())
    except Exception:  # decord raises RuntimeError, its own DECORDError, even AssertionError
        return None
    # decord's output type follows a process-wide "bridge" another module may have switched.
    frames = np.asarray(batch.asnumpy() if hasattr(batch, "asnumpy") else batch)
    if frames.dtype != np.uint8 or frames.ndim != 4 or len(frames) != len(distinct):
        return None
    if len(distinct) != len(indices):
        position = {index: k for k, index in enumerate(distinct)}
        frames = frames[[position[i] for i in indices]]
    # decord's own timestamps are garbage for some AVI files (unset pts read as numbers).
    if probe.seconds is not None:
        seconds = tuple(probe.seconds[i] for i in indices)
    else:
        seconds = tuple(i / (fps or 1.0) for i in indices)
    return DecodedVideo(
        frames=np.ascontiguousarray(frames),
        indices=tuple(indices),
        seconds=seconds,
        fps=fps,
        total_frames=len(reader),
        reader="decord",
    )


def _decode_pyav(path: Path, num_frames: int, probe: _Probe) -> DecodedVideo:
    total, kept = _pyav_pass(path, num_frames, probe.packets, probe.fps)
    if total != probe.packets:
        # Some packets gave no frame (a truncated file, hidden frames): sample again against
        # the count of frames that actually decoded.
        total, kept = _pyav_pass(path, num_frames, total, probe.fps)
    indices = sample_indices(total, num_frames)
    if any(i not in kept for i in indices):
        raise DecodeError("decoding gave a different frame count on a second pass")
    if probe.seconds is not None and total == probe.packets:
        # Decoders can misorder timestamps (MPEG-4 with packed B-frames in AVI); the sorted
        # packet timestamps cannot be.
        seconds = tuple(probe.seconds[i] for i in indices)
    else:
        seconds = tuple(kept[i][1] for i in indices)
    return DecodedVideo(
        frames=np.stack([kept[i][0] for i in indices]),
        indices=tuple(indices),
        seconds=seconds,
        fps=probe.fps,
        total_frames=total,
        reader="pyav",
    )


def _pyav_pass(
    path: Path, num_frames: int, expected: int, fps: float
) -> tuple[int, dict[int, tuple[np.ndarray, float]]]:
    """Decode every frame in order, keeping those sampled from `expected` frames.

    Returns the number of frames decoded and {index: (rgb, seconds)} for the kept ones.
    """
    wanted = set(sample_indices(expected, num_frames)) if expected > 0 else set()
    kept: dict[int, tuple[np.ndarray, float]] = {}
    size: tuple[int, int] | None = None
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.best("video")
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if count in wanted:
                    # A stream may change resolution midway; the batch needs one shape.
                    size = size or (frame.width, frame.height)
                    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                    seconds = frame.time if frame.time is not None else count / (fps or 1.0)
                    kept[count] = (rgb, float(seconds))
                count += 1
    except av.FFmpegError as e:
        # Frames decoded before the damage are still good: a truncated clip keeps them.
        if count == 0:
            raise DecodeError(f"truncated or corrupt: {_reason(e)}") from e
    if count == 0:
        raise DecodeError("no decodable video frames")
    return count, kept


def _reason(error: av.FFmpegError) -> str:
    text = error.strerror or str(error)
    return text.splitlines()[0] if text else type(error).__name__
