"""Frames from real clips (../shared/data/videos) and from small files written here."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest

from linkedout.extract.decode import DecodedVideo, DecodeError, decode_video, sample_indices
from tests.conftest import shared_data

N = 8
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clips() -> dict[str, Path]:
    return {p.name: p for p in sorted(shared_data("videos").iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def decoded(clips) -> dict[str, DecodedVideo]:
    """Every shared clip decoded once at N frames (the slow part, shared by several tests)."""
    return {name: decode_video(path, N) for name, path in clips.items()}


def _write_clip(path: Path, levels: list[int], codec: str = "mpeg4", fps: int = 10) -> None:
    """A 64x48 clip whose frame k is flat grey at `levels[k]`, so content identifies the frame."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for level in levels:
            image = np.full((48, 64, 3), level, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _write_packets(path: Path, payloads: list[bytes]) -> None:
    """An MPEG-4 video stream whose packets hold `payloads` as they are (garbage, or none)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
        for k, payload in enumerate(payloads):
            packet = av.Packet(payload)
            packet.stream, packet.time_base = stream, stream.time_base
            packet.pts = packet.dts = k * 100
            out.mux(packet)


# ------------------------------------------------------------------ sampling
def test_sample_indices_takes_segment_midpoints():
    assert sample_indices(10, 4) == [1, 3, 6, 8]
    assert sample_indices(8, 8) == list(range(8))
    assert sample_indices(1440, 4) == [180, 540, 900, 1260]


def test_sample_indices_repeats_frames_of_a_short_clip():
    assert sample_indices(2, 4) == [0, 0, 1, 1]
    assert sample_indices(1, 3) == [0, 0, 0]


def test_sample_indices_rejects_empty_requests():
    with pytest.raises(ValueError):
        sample_indices(10, 0)
    with pytest.raises(ValueError):
        sample_indices(0, 4)


# ------------------------------------------------------------------ real clips
def test_every_shared_clip_gives_n_frames_spread_over_the_clip(clips, decoded):
    assert len(clips) >= 14
    for name, path in clips.items():
        video = decoded[name]
        with av.open(str(path)) as container:
            stream = container.streams.best("video")
            size = (stream.codec_context.height, stream.codec_context.width)
            duration = container.duration / 1e6
        assert video.frames.shape == (N, *size, 3), name
        assert video.frames.dtype == np.uint8 and video.frames.flags.c_contiguous, name
        assert video.frames.std() > 1, name  # real pictures, not a blank buffer
        assert len(video.indices) == len(video.seconds) == N, name
        assert list(video.indices) == sorted(set(video.indices)), name
        assert 0 <= video.indices[0] and video.indices[-1] < video.total_frames, name
        assert list(video.seconds) == sorted(video.seconds), name
        assert 0 <= video.seconds[0] and video.seconds[-1] <= duration, name
        # The count agrees with duration x rate (loosely: containers pad their duration).
        assert abs(video.total_frames - duration * video.fps) <= 0.1 * duration * video.fps, name
        assert video.reader in ("decord", "pyav"), name


def test_vp8_webm_and_mpeg4_avi_decode_with_true_counts_and_timestamps(decoded):
    webm, avi = decoded["big_buck_bunny_0_30.webm"], decoded["tests_data_test.avi"]
    # Counts checked by decoding every frame; the webm does not state its count.
    assert (webm.total_frames, webm.fps) == (720, 24.0)
    assert (avi.total_frames, avi.fps) == (164, 25.0)
    # decord's own timestamps for this AVI are unset values read as -3.7e17 seconds.
    assert avi.seconds == pytest.approx([(i + 1) / 25 for i in avi.indices])


def test_a_file_with_two_video_streams_is_read_from_the_better_one(decoded):
    # nasa_13013.mp4 holds a 320x180 25 fps stream first and a 480x270 29.97 fps one second.
    video = decoded["nasa_13013.mp4"]
    assert video.frames.shape[1:3] == (270, 480)
    assert video.total_frames == 390
    assert video.fps == pytest.approx(30000 / 1001)


def test_sampled_frames_are_the_frames_at_those_indices(clips):
    # popeye_T00-1 is open-GOP HEVC: decord's get_batch returns frames 236 earlier for indices
    # 315, 405 and 495 of these 16, so this pins that such files are read correctly.
    for name, checked in (("popeye_T00-1.mkv", 6), ("bikes.mp4", 16)):
        video = decode_video(clips[name], 16)
        wanted = video.indices[:checked]
        truth = {}
        with av.open(str(clips[name])) as container:
            stream = container.streams.best("video")
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    truth[i] = frame.to_ndarray(format="rgb24")
                if i == wanted[-1]:
                    break
        for got, index in zip(video.frames, wanted):
            error = np.abs(got.astype(np.int16) - truth[index]).mean()
            assert error < 2, f"{name} frame {index} differs by {error:.1f} grey levels"


def test_threads_decoding_at_once_get_the_same_frames(clips, decoded):
    names = [n for n in clips if "popeye" not in n][:6] * 2
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: decode_video(clips[n], N), names))
    for name, video in zip(names, results):
        assert video.indices == decoded[name].indices
        assert np.array_equal(video.frames, decoded[name].frames), name


@pytest.mark.parametrize("name", ["squirrel.mp4", "dog_eating_854132.mp4", "bigbuckbunny.mp4"])
def test_truncated_mp4_gives_fewer_frames_or_a_decode_error(clips, decoded, name, tmp_path):
    data = clips[name].read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 5])
    # In a child process: a hang or a native crash must fail this test, not end the run.
    script = (
        "import json, sys\n"
        "from linkedout.extract.decode import DecodeError, decode_video\n"
        "try:\n"
        f"    v = decode_video(sys.argv[1], {N})\n"
        "    print(json.dumps({'shape': v.frames.shape, 'total': v.total_frames,"
        " 'indices': v.indices}))\n"
        "except DecodeError as e:\n"
        "    print(json.dumps({'error': str(e)}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(cut)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if "error" in result:
        assert result["error"] and "\n" not in result["error"]
    else:
        whole = decoded[name]
        assert 0 < result["total"] < whole.total_frames
        assert result["shape"] == [N, *whole.frames.shape[1:]]
        assert max(result["indices"]) < result["total"]


# ------------------------------------------------------------------ small files made here
def test_short_clip_repeats_frames_and_keeps_their_order(tmp_path):
    path = tmp_path / "three.mp4"
    _write_clip(path, [30, 130, 230])
    video = decode_video(path, N)
    assert video.total_frames == 3
    assert video.indices == (0, 0, 0, 1, 1, 2, 2, 2)
    assert video.frames.shape == (N, 48, 64, 3)
    levels = video.frames.reshape(N, -1).mean(axis=1)
    assert levels == pytest.approx([30, 30, 30, 130, 130, 230, 230, 230], abs=6)


def test_mkv_without_a_stated_count_is_counted_and_sampled_right(tmp_path):
    path = tmp_path / "ramp.mkv"
    _write_clip(path, [10 * k for k in range(20)])
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska states no count
    video = decode_video(path, 4)
    assert video.total_frames == 20
    assert video.indices == (2, 7, 12, 17)
    levels = video.frames.reshape(4, -1).mean(axis=1)
    assert levels == pytest.approx([20, 70, 120, 170], abs=6)
    assert video.seconds == pytest.approx([0.2, 0.7, 1.2, 1.7])


def test_unreadable_files_raise_a_one_line_reason(tmp_path):
    text = tmp_path / "x.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    audio = tmp_path / "sound.mp4"
    with wave.open(str(audio), "wb") as w:  # a WAV file under a video name
        w.setparams((1, 2, 8000, 0, "NONE", "not compressed"))
        w.writeframes(bytes(16000))
    no_frames = tmp_path / "no_frames.mkv"
    _write_packets(no_frames, [])
    garbage = tmp_path / "garbage.mkv"
    _write_packets(garbage, [bytes([7]) * 100] * 5)
    cases = {
        text: "not a readable video",
        empty: "file is empty",
        audio: "no video stream",
        no_frames: "not a readable video",
        garbage: "truncated or corrupt",
        tmp_path / "missing.mp4": "no such file",
    }
    for path, reason in cases.items():
        with pytest.raises(DecodeError) as caught:
            decode_video(path, N)
        assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_asking_for_no_frames_is_a_programming_error(tmp_path):
    path = tmp_path / "one.mp4"
    _write_clip(path, [100])
    with pytest.raises(ValueError):
        decode_video(path, 0)
