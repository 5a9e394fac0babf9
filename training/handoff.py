"""Stage hand-off: the models a stage starts from.

Movie Gen: the 256 px joint stage starts from the text-to-image model with its spatial positional
embeddings kept and new temporal embeddings added (up to 32 latent frames); the 768 px stage
expands the spatial embeddings 3x. Here a stage starts from the previous stage's generation
checkpoint (or from scratch, or a given checkpoint), and the video transformer's factorised
position tables are grown to the stage's latent grid with `resize_pos_embed` (time extended,
height/width interpolated). The first stage that trains the video model from scratch builds its
tables at exactly that stage's size (a text-to-image stage has one latent frame of positions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reelflow.curation.storage import Storage, is_s3
from reelflow.models.configs import ModelConfig, get_config
from reelflow.models.video_transformer import VideoTransformer
from reelflow.training.checkpoint import GenerationModels, build_models, load_checkpoint
from reelflow.training.schedule import Schedule, StageSpec


@dataclass(frozen=True)
class Grid:
    """Latent positions a video stage needs: latent frames and the largest patch grid over the
    aspect buckets it trains on."""

    frames: int  # latent frames (1 for images)
    height: int  # patches
    width: int


def model_config(schedule: Schedule) -> ModelConfig:
    config = get_config(schedule.model_size, with_audio=schedule.with_audio)
    if schedule.text_path:
        config.text.path = schedule.text_path
    return config


def check_schedule_fits(schedule: Schedule) -> None:
    """Raise ScheduleError for stages the models cannot take (frame counts off the TAE's 1 + r*k
    grid, audio spans longer than the audio model's window): before any stage runs."""
    from reelflow.training.schedule import ScheduleError
    from reelflow.training.steps import audio_frames

    config = model_config(schedule)
    problems = []
    for st in schedule.stages:
        try:
            config.tae.latent_frames(st.frames)
        except ValueError as e:
            problems.append(f"{st.name}: {e}")
        if st.model == "audio" and config.audio is not None:
            n = audio_frames(config.audio, st.frames, st.fps)
            if n > config.audio.window_frames:
                problems.append(f"{st.name}: {st.frames} frames at {st.fps} fps make {n} audio frames; the "
                                f"{schedule.model_size} audio model's window is {config.audio.window_frames} "
                                "(use fewer frames or a higher fps)")
    problems += _audio_span_problems(schedule, config)
    if problems:
        raise ScheduleError("schedule does not fit the models:\n  " + "\n  ".join(problems))


def _audio_span_problems(schedule: Schedule, config: ModelConfig) -> list[str]:
    """The final audio stage must train on as many audio frames as ``generate`` samples in one
    window (the final video stage's frames at its fps, capped at the audio window): positions past
    the trained span keep their random initialisation. Measured on the demo: trained on 40 audio
    frames and sampled on 71, the tiny audio model made the same clicks for every video, at the end
    of its trained span and of its window (38% of bounces heard within a frame, by coincidence)."""
    from reelflow.training.steps import audio_frames

    audio = [st for st in schedule.stages if st.model == "audio"]
    video = [st for st in schedule.stages if st.model == "video" and st.data != "image"]
    if not audio or not video or config.audio is None:
        return []
    st, vs = audio[-1], video[-1]
    trained = audio_frames(config.audio, st.frames, st.fps)
    sampled = min(audio_frames(config.audio, vs.frames, vs.fps), config.audio.window_frames)
    if trained >= sampled:
        return []
    return [f"{st.name}: trains on {trained} audio frames ({st.frames} frames at {st.fps} fps), but samples of "
            f"{vs.name} ({vs.frames} frames at {vs.fps} fps) take {sampled}: the audio model's positions past "
            f"{trained} would never train (give {st.name} at least {vs.frames} frames at {vs.fps} fps)"]


def spatial_multiple(config: ModelConfig) -> int:
    """Pixel sizes must divide by the TAE's spatial compression times the patch size."""
    return config.tae.spatial_compression * max(config.video.patch_size[1:])


def stage_grid(config: ModelConfig, stage: StageSpec, bucket_sizes: list[tuple[int, int]]) -> Grid:
    """The latent grid a stage needs, from the (h, w) pixel sizes of its buckets."""
    s = config.tae.spatial_compression
    _, ph, pw = config.video.patch_size
    frames = config.tae.latent_frames(stage.frames)
    h = max(math.ceil(bh / s / ph) for bh, _ in bucket_sizes)
    w = max(math.ceil(bw / s / pw) for _, bw in bucket_sizes)
    return Grid(frames=frames, height=h, width=w)


def initial_models(schedule: Schedule, stage: StageSpec, init_checkpoint: str | None,
                   video_trained: bool, grid: Grid | None) -> GenerationModels:
    """The models `stage` starts from: a checkpoint (the previous stage's, or `init` when a path),
    or fresh ones; then the hand-off for a video stage."""
    if init_checkpoint:
        if is_s3(init_checkpoint):  # workers read the previous stage's checkpoint from the lake
            init_checkpoint = str(Storage().localize(init_checkpoint))
        models = load_checkpoint(init_checkpoint)
    else:
        models = build_models(model_config(schedule))
    if stage.model == "video" and grid is not None:
        hand_off_video(models, grid, fresh=not video_trained)
    return models


def hand_off_video(models: GenerationModels, grid: Grid, fresh: bool) -> None:
    """Size the video transformer's positions for `grid`. A model never trained before is rebuilt
    at exactly that size; a trained one only grows (time extended, space interpolated)."""
    cfg = models.config.video
    pt = cfg.patch_size[0]
    if fresh:
        cfg.max_frames, cfg.max_height, cfg.max_width = grid.frames * pt, grid.height, grid.width
        models.video = VideoTransformer(cfg)
        return
    models.video.resize_pos_embed(
        max_frames=grid.frames * pt if grid.frames * pt > cfg.max_frames else None,
        max_height=grid.height if grid.height > cfg.max_height else None,
        max_width=grid.width if grid.width > cfg.max_width else None,
    )
