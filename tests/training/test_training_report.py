"""The HTML training report, from synthetic metric rows and outcomes of the bundled tiny schedule
(no Ray, no Prefect: the rows are shaped as training/loop.py writes them)."""

from __future__ import annotations

import base64
import io
import math
import re

import pytest
from PIL import Image

from reelflow.curation.storage import Storage, join
from reelflow.training.report import write_training_report
from reelflow.training.schedule import Schedule, load_schedule


@pytest.fixture(scope="module")
def schedule() -> Schedule:
    return load_schedule("tiny")


def _rows(schedule: Schedule, *, wait: float = 0.05, skip: set[str] = frozenset(), val_every: int = 0) -> list[dict]:
    """Metric rows as the loop logs them: every log_every steps, cumulative samples and time, a
    validation pass on the last row (and every ``val_every`` steps), recon and latent_scale on the TAE."""
    rows = []
    for i, st in enumerate(schedule.stages):
        if st.name in skip:
            continue
        base = 2.0 / (i + 1)
        samples, elapsed = 0, 0.0
        for step in range(st.log_every, st.iterations + 1, st.log_every):
            samples += st.global_batch_size * st.log_every
            elapsed += 0.5
            row = {"stage": st.name, "stage_index": i, "step": step, "split": "train",
                   "loss": base * math.exp(-step / 12) + 0.05, "lr": st.lr_at(step - 1), "samples": samples,
                   "samples_per_s": st.global_batch_size * st.log_every / 0.5, "data_wait_frac": wait,
                   "grad_norm": 0.5 + 0.1 * i if step % 10 else None, "elapsed_s": elapsed, "kind": st.model}
            if st.model == "tae":
                row["recon"] = 0.8 * row["loss"]
            if step == st.iterations or (val_every and step % val_every == 0):
                row["val_loss_image"] = row["loss"] * 1.1
                row["val_loss_video"] = row["loss"] * 1.2
            if step == st.iterations and st.model == "tae":
                row["latent_scale"] = 0.9
            rows.append(row)
    return rows


def _outcomes(schedule: Schedule, rows: list[dict], out: str) -> list[dict]:
    outs = []
    for i, st in enumerate(schedule.stages):
        mine = [r for r in rows if r["stage"] == st.name]
        last = mine[-1] if mine else {}
        outs.append({"index": i, "name": st.name, "model": st.model, "steps": last.get("step", 0), "seconds": 3.5,
                     "checkpoint": join(out, "stages", schedule.stage_dir_name(i), "model.pt"),
                     "final_loss": last.get("loss"), "val": {k: v for k, v in last.items() if k.startswith("val_loss")},
                     "samples_per_s": last.get("samples_per_s"), "resumed": i == 2, "skipped": False})
    return outs


def _write(tmp_path, schedule: Schedule, rows: list[dict], outcomes: list[dict] | None = None) -> str:
    out = str(tmp_path / "run")
    outcomes = _outcomes(schedule, rows, out) if outcomes is None else outcomes
    uri = write_training_report(Storage(), out, schedule, outcomes, rows)
    assert uri == join(out, "report.html")
    return (tmp_path / "run" / "report.html").read_text(encoding="utf-8")


def _pngs(page: str) -> list[Image.Image]:
    imgs = []
    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        img.verify()  # a truncated or corrupt PNG raises here
        imgs.append(Image.open(io.BytesIO(base64.b64decode(b64))))
    return imgs


def test_report_has_schedule_charts_and_generate_hint(tmp_path, schedule):
    page = _write(tmp_path, schedule, _rows(schedule))
    for st in schedule.stages:
        assert st.name in page
    assert 'id="schedule"' in page and "<table class=sched>" in page
    assert "global batch" in page and "final train loss" in page
    decayed = next(st for st in schedule.stages if st.final_lr is not None)
    assert f"{decayed.lr:g} → {decayed.final_lr:g}" in page  # joint_64 decays (cosine) to its final_lr
    assert "resumed" in page  # joint_32's outcome flag
    imgs = _pngs(page)
    assert len(imgs) >= 2
    assert all(img.format == "PNG" and img.width > 300 and img.height > 150 for img in imgs)
    model = join(str(tmp_path / "run"), "model.pt")
    assert f"reelflow generate {model} --prompt" in page
    assert "TAE latent scale" in page and "0.9" in page
    assert "input-bound" not in page.split('id="throughput"')[1].split("<table>")[0]  # no note: waits are low
    assert "no metric rows" not in page


def test_val_points_and_val_columns(tmp_path, schedule):
    with_val = _write(tmp_path / "a", schedule, _rows(schedule, val_every=10))
    assert "val image" in with_val and "val video" in with_val
    # the last val loss of the first stage (the TAE), as in the table
    last_tae = [r for r in _rows(schedule) if r["stage_index"] == 0][-1]
    assert f"{last_tae['val_loss_video']:.4g}" in with_val
    no_val = [{k: v for k, v in r.items() if not k.startswith("val_loss")} for r in _rows(schedule)]
    page = _write(tmp_path / "b", schedule, no_val)
    assert len(_pngs(page)) >= 2  # drawn without markers, no crash


def test_stage_without_rows_is_reported(tmp_path, schedule):
    rows = _rows(schedule, skip={"joint_64", "audio"})
    outcomes = _outcomes(schedule, rows, str(tmp_path / "run"))[:3]  # the run stopped in joint_64
    page = _write(tmp_path, schedule, rows, outcomes)
    assert "No metric rows for stage(s) joint_64, audio" in page
    assert "no outcome" in page and "No outcome for stage(s) joint_64, audio" in page
    assert len(_pngs(page)) >= 2


def test_empty_rows_do_not_crash(tmp_path, schedule):
    page = _write(tmp_path, schedule, [], [])
    assert "No metrics" in page
    for st in schedule.stages:
        assert st.name in page  # the schedule table is still there
    assert "reelflow generate" in page


def test_rows_with_missing_and_none_fields(tmp_path, schedule):
    rows = _rows(schedule)
    for r in rows[::2]:
        for k in ("data_wait_frac", "grad_norm", "samples_per_s", "elapsed_s", "samples", "lr"):
            r[k] = None
    for r in rows[1::3]:
        for k in ("data_wait_frac", "grad_norm", "recon", "stage_index"):
            r.pop(k, None)
    rows.append({"stage": "not_a_stage", "step": 1, "split": "train", "loss": 1.0})
    page = _write(tmp_path, schedule, rows)
    assert "not_a_stage" in page and "name no stage of this schedule" in page
    assert len(_pngs(page)) >= 3


def test_input_bound_note(tmp_path, schedule):
    page = _write(tmp_path, schedule, _rows(schedule, wait=0.6))
    assert "input-bound" in page
    assert "Input-bound stage(s): tae, t2i_32, joint_32, joint_64, audio" in page
