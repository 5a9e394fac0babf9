"""One analysis decode per source (issue #13, item 1; ARCHITECTURE decision 4).

The shots stage decodes each source once. That one stream of frames feeds the shot detector
(every frame, at the detector's own small size) and leaves behind the source's **analysis
frames**: the frame nearest each tick of a grid at ``scoring.analysis.fps`` from the source's
first frame, scaled so its short side is ``scoring.analysis.short_side``. The score stage reads
each candidate's window of them (memory-mapped) instead of decoding its span of the source again,
so no stage before extraction opens the source video a second time.

The frames stream to disk as they are decoded (``frames.u8``, raw RGB): a two-hour source holds
one frame in memory, not two hours of them; on disk they take width x height x 3 bytes per tick
(455 x 256 x 3 x 8 fps = 2.8 MB per second of 16:9 source at the defaults). They are a work file:
the flow deletes them once the score stage has judged every candidate. The source's audio goes
beside them (``audio.f32``) as the score stage reads a clip's audio: mixed to stereo integers as
the extract stage writes it, then 16 kHz mono (``frames._source_audio``), from one ffmpeg that
runs while the video decodes.

What the grid changes against sampling each extracted clip (``frames.decode_for_analysis``): a
clip's samples are the source frames nearest to ticks of the source's grid rather than of the
clip's own, so they sit up to half a tick (1/16 s) away. ``tests/test_judge_before_encode.py``
states what that moves, per score.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np

from reelflow.curation.safe_open import open_media
from reelflow.curation.scoring.frames import AnalysisClip, _analysis_size, clip_audio_command, stereo_s32_to_mono
from reelflow.curation.storage import Storage, is_s3, join

FRAMES_FILE, AUDIO_FILE, INDEX_FILE = "frames.u8", "audio.f32", "index.json"
AUDIO_RATE = 16000  # what the audio scorers read (scoring.frames.decode_for_analysis)


# -- picking the frames of the grid -------------------------------------------------------------
class NearestOnGrid:
    """Fed a stream's frames in time order, yields for each tick ``t0 + k / fps`` the frame nearest
    it, each frame at most once (a source slower than the grid is not padded with repeats)."""

    def __init__(self, fps: float):
        self.step = 1.0 / fps
        self.t0: float | None = None
        self.k = 0  # the next tick
        self.prev: tuple[float, object] | None = None
        self.taken: float | None = None  # time of the last frame yielded

    def _tick(self) -> float:
        return self.t0 + self.k * self.step

    def feed(self, t: float, frame: object) -> Iterator[tuple[float, object]]:
        if self.t0 is None:
            self.t0 = t
        while self._tick() <= t + 1e-9:
            g = self._tick()
            chosen = self.prev if self.prev is not None and g - self.prev[0] < t - g else (t, frame)
            if self.taken is None or chosen[0] > self.taken:
                self.taken = chosen[0]
                yield chosen
            self.k += 1
        self.prev = (t, frame)

    def finish(self, end_s: float | None = None) -> Iterator[tuple[float, object]]:
        """The last frame, when it is the nearest to a tick still inside the stream."""
        if self.prev is None or (self.taken is not None and self.prev[0] <= self.taken):
            return
        g = self._tick()
        if g - self.prev[0] < self.step / 2 and (end_s is None or g < end_s):
            self.taken = self.prev[0]
            yield self.prev


# -- writing a source's analysis frames ---------------------------------------------------------
class AnalysisWriter:
    """Streams analysis frames (and the source's audio) into a local folder, then publishes it."""

    def __init__(self, folder: Path, short_side: int, fps: float):
        self.folder = folder
        self.short_side = short_side
        self.fps = fps
        self.grid = NearestOnGrid(fps)
        self.times: list[float] = []
        self.size: tuple[int, int] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self._out = open(folder / FRAMES_FILE, "wb")  # noqa: SIM115 - closed in ``close``

    def _write(self, t: float, frame: av.VideoFrame) -> None:
        self.size = self.size or _analysis_size(frame.width, frame.height, self.short_side)
        self._out.write(frame.to_ndarray(width=self.size[0], height=self.size[1], format="rgb24").tobytes())
        self.times.append(t)

    def __call__(self, frame: av.VideoFrame, t: float, fps: float) -> None:
        for tt, f in self.grid.feed(t, frame):
            self._write(tt, f)

    def close(self, end_s: float | None, audio: bool) -> None:
        for tt, f in self.grid.finish(end_s):
            self._write(tt, f)
        self._out.close()
        w, h = self.size or (0, 0)
        index = {"fps": self.fps, "width": w, "height": h, "times": self.times,
                 "audio_rate": AUDIO_RATE if audio else None}
        (self.folder / INDEX_FILE).write_text(json.dumps(index))

    def abort(self) -> None:
        self._out.close()


class SourceAudio:
    """The source's audio as the score stage reads a clip's, written to ``audio.f32`` by a thread
    while the video decodes (ffmpeg does the decode and the stereo integer mix in its own
    process; see ``frames._source_audio`` for why the mix goes through integers)."""

    def __init__(self, path: str | Path, out: Path, stereo_rate: int):
        self.stereo_rate = stereo_rate
        cmd = clip_audio_command(path, stereo_rate)
        # stderr to a file, not a pipe: a damaged stream can log more than a pipe holds, and an
        # ffmpeg blocked on its log would stop feeding stdout.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        self.out = out
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._pump, name="source-audio", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
            chunk = self.stereo_rate * 8  # one second of stereo s32
            with open(self.out, "wb") as f:
                while data := self.proc.stdout.read(chunk):
                    f.write(stereo_s32_to_mono(np.frombuffer(data[: len(data) // 4 * 4], np.int32),
                                               self.stereo_rate, resampler).tobytes())
                f.write(stereo_s32_to_mono(None, 0, resampler).tobytes())
        except BaseException as e:  # reported by ``wait``, in the decoding thread
            self.error = e

    def wait(self) -> str | None:
        """None when the audio is written, else why not (the caller then keeps no analysis
        frames, and the score stage decodes each span, failing the candidates it cannot read)."""
        self.thread.join()
        rc = self.proc.wait()
        self.log.seek(0)
        err = self.log.read().decode(errors="replace").strip()
        self.log.close()
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        if rc != 0:
            return f"ffmpeg could not decode the source's audio: {(err.splitlines() or ['no message'])[-1]}"
        return None

    def kill(self) -> None:
        self.proc.kill()
        self.thread.join()
        self.proc.wait()
        self.log.close()


# -- the one pass ---------------------------------------------------------------------------------
@dataclass
class DecodedSource:
    fps: float  # the stream's frame rate
    frames: int  # frames decoded
    end_time: float  # presentation time after the last frame, from the stream's start (s)


FrameSink = Callable[[av.VideoFrame, float, float], None]  # (frame, time in s, stream fps)


def decode_source(path: str | Path, sinks: list[FrameSink]) -> DecodedSource:
    """Decode the source's video once, handing every frame, its time relative to the stream's
    start (as shot times are) and the stream's rate to each sink in turn."""
    with open_media(path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        rate = float(vs.average_rate or vs.guessed_rate or 0) or 25.0
        start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        n, last = 0, 0.0
        for frame in c.decode(vs):
            t = frame.time
            if t is None:
                continue
            last = t
            n += 1
            for sink in sinks:
                sink(frame, t - start, rate)
    if not n:
        raise ValueError(f"no video frames in {path}")
    return DecodedSource(rate, n, last - start + 1.0 / rate)


def analysis_root(output: str) -> str:
    """Where the shots stage leaves the sources' analysis frames (beside its stage table)."""
    return join(output, "_stages", "shots", "analysis")


def analysis_uri(output: str, item_id: str) -> str:
    return join(analysis_root(output), item_id)


def publish(local: Path, storage: Storage, uri: str) -> None:
    """Move a finished analysis folder to ``uri``: renamed into place locally (a retried task
    replaces its own folder whole), uploaded to S3 (the index last, so a reader never sees an
    index without its frames)."""
    if is_s3(uri):
        for name in (FRAMES_FILE, AUDIO_FILE, INDEX_FILE):
            if (local / name).exists():
                storage.upload_file(local / name, join(uri, name))
        shutil.rmtree(local, ignore_errors=True)
        return
    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    local.rename(dest)  # ``staging_folder`` put it beside ``dest``: same file system


def staging_folder(cache_dir: str | Path, uri: str) -> Path:
    """A fresh local folder to write into: inside the destination's parent when it is local (so
    publishing is a rename), else in the worker's cache."""
    parent = Path(uri).parent if not is_s3(uri) else Path(cache_dir) / "analysis-staging"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".writing-", dir=parent))


# -- reading a candidate's window ---------------------------------------------------------------
@dataclass
class SourceFrames:
    """A source's analysis frames, memory-mapped; ``clip`` cuts a candidate's window out of them."""

    fps: float
    times: np.ndarray
    frames: np.ndarray  # (T, H, W, 3) uint8, memory-mapped
    audio: np.ndarray | None  # (N,) float32 at ``audio_rate``, memory-mapped
    audio_rate: int | None

    @classmethod
    def open(cls, storage: Storage, uri: str, cache_dir: str | Path) -> "SourceFrames | None":
        """The analysis frames at ``uri``, or None when there are none (never written, or already
        cleaned up): the caller then decodes the span itself."""
        if not storage.exists(join(uri, INDEX_FILE)):
            return None
        index = json.loads(storage.read_bytes(join(uri, INDEX_FILE)))
        times = np.asarray(index["times"], np.float64)
        w, h = int(index["width"]), int(index["height"])
        local = storage.localize(join(uri, FRAMES_FILE), cache_dir)
        frames = (np.memmap(local, np.uint8, "r", shape=(len(times), h, w, 3)) if len(times)
                  else np.zeros((0, h, w, 3), np.uint8))
        audio = None
        if index.get("audio_rate"):
            a_local = storage.localize(join(uri, AUDIO_FILE), cache_dir)
            audio = np.memmap(a_local, np.float32, "r") if a_local.stat().st_size else np.zeros(0, np.float32)
        return cls(float(index["fps"]), times, frames, audio, index.get("audio_rate"))

    def clip(self, start_s: float, end_s: float, rotation: int = 0) -> AnalysisClip:
        lo, hi = np.searchsorted(self.times, [start_s - 1e-6, end_s - 1e-6])
        if hi <= lo:
            raise ValueError(f"no analysis frames in [{start_s:.2f}, {end_s:.2f}) s")
        frames = np.array(self.frames[lo:hi])
        if rotation % 360:
            frames = np.ascontiguousarray(np.rot90(frames, k=(rotation // 90) % 4, axes=(1, 2)))
        audio = None
        if self.audio is not None:
            a = int(round(start_s * self.audio_rate))
            audio = np.array(self.audio[a : a + int(round((end_s - start_s) * self.audio_rate))])
        return AnalysisClip(frames, self.fps, audio, self.audio_rate if self.audio is not None else None,
                            start_s, end_s)
