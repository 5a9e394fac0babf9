"""Validation loss per aspect bucket: the per-bucket sums, their reduction across workers (real
torch.distributed, gloo, two processes that see different buckets), the metric columns, and how
rows carrying them read back from metrics.parquet and show in the training report."""

from __future__ import annotations

import math
import multiprocessing as mp
import queue

import pandas as pd
import pytest

from reelflow.training.val_metrics import ValSums, bucket_losses, format_val, is_bucket_key, parse_bucket_key

BUCKETS = ["16x9", "9x16"]


def _weighted_mean(row: dict, kind: str) -> float:
    parts = bucket_losses(row, kind)
    return sum(loss * n for loss, n in parts.values()) / sum(n for _, n in parts.values())


def test_per_bucket_sums_give_the_pooled_loss_as_their_count_weighted_mean():
    sums = ValSums(BUCKETS)
    for bucket, loss, n in [("16x9", 0.5, 4), ("9x16", 2.0, 1), ("16x9", 1.0, 2)]:
        sums.add(bucket, loss, n)
    row = sums.row("video")
    assert row["val_loss_video"] == pytest.approx((0.5 * 4 + 2.0 + 1.0 * 2) / 7)
    assert row["val_loss_video/16x9"] == pytest.approx((0.5 * 4 + 1.0 * 2) / 6) and row["val_count_video/16x9"] == 6
    assert row["val_loss_video/9x16"] == 2.0 and row["val_count_video/9x16"] == 1
    assert _weighted_mean(row, "video") == pytest.approx(row["val_loss_video"])
    # a bucket the (capped) pass did not reach has no column; a pass with no sample has no loss at all
    only = ValSums(BUCKETS)
    only.add("9x16", 1.5, 3)
    assert set(only.row("image")) == {"val_loss_image", "val_loss_image/9x16", "val_count_image/9x16"}
    assert ValSums(BUCKETS).row("image") == {} and ValSums([]).row("image") == {}


def test_the_reduction_layout_is_fixed_by_the_planned_buckets():
    with pytest.raises(ValueError, match="sorted"):
        ValSums(["9x16", "16x9"])  # every worker must lay the vector out the same way
    sums = ValSums(BUCKETS)
    with pytest.raises(ValueError, match="1x1"):
        sums.add("1x1", 1.0, 1)  # a batch outside the plan would desynchronise the reduction
    sums.add("9x16", 1.0, 2)
    assert sums.vector() == [2.0, 2.0, 0.0, 2.0, 0.0, 2.0]
    assert ValSums.from_vector(BUCKETS, sums.vector()) == sums
    doubled = sums.reduce(lambda v: [2 * x for x in v])  # two identical workers
    assert doubled.row("video")["val_loss_video/9x16"] == 1.0 and doubled.row("video")["val_count_video/9x16"] == 4


def test_column_names_and_the_compact_form_for_logs_and_tables():
    assert parse_bucket_key("val_loss_video/16x9") == ("video", "16x9")
    assert parse_bucket_key("val_loss_video") is None and parse_bucket_key("val_count_video/16x9") is None
    assert is_bucket_key("val_count_image/9x16") and not is_bucket_key("val_loss_image")
    row = {"val_loss_image": 0.5, "val_loss_video": 0.25, "val_loss_video/9x16": 0.5, "val_count_video/9x16": 1,
           "val_loss_video/16x9": 0.125, "val_count_video/16x9": 2, "loss": 9.0}
    assert format_val(row) == "image 0.5000, video 0.2500 (16x9 0.1250, 9x16 0.5000)"
    # a stage outcome keeps the losses without their counts: still shown
    assert format_val({"val_loss_video": 0.25, "val_loss_video/16x9": 0.125}) == "video 0.2500 (16x9 0.1250)"


def _reduce_worker(rank: int, world: int, init: str, out) -> None:
    """One worker of a real gloo group: it validates only the buckets its batches hold (none at
    all for rank 1 in the second pass) and reduces with training.loop's own all-reduce."""
    import torch
    import torch.distributed as dist

    from reelflow.training.loop import _all_reduce_vector

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        device = torch.device("cpu")
        rows = []
        seen = {0: [("16x9", 1.0, 2), ("16x9", 3.0, 1)], 1: [("9x16", 0.5, 2)]}  # pass 1: disjoint buckets
        for batches in (seen[rank], [("16x9", 2.0, 1), ("9x16", 4.0, 1)] if rank == 0 else []):  # pass 2
            sums = ValSums(BUCKETS)
            for b in batches:
                sums.add(*b)
            rows.append(sums.reduce(lambda v: _all_reduce_vector(v, device)).row("video"))
        out.put((rank, rows))
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # two real processes in a gloo group
def test_workers_that_see_different_buckets_reduce_to_the_same_per_bucket_losses(tmp_path):
    """Two processes, each with buckets the other lacks (then one with no batch at all): every
    worker takes part in every reduction, none hangs, and both end with the same row, equal to one
    worker validating everything."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_reduce_worker, args=(r, 2, init, out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = dict(out.get(timeout=120) for _ in procs)
    except queue.Empty:
        pytest.fail("a worker hung in the reduction (or died): " + str([p.exitcode for p in procs]))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert got[0] == got[1]
    first, second = got[0]
    alone = ValSums(BUCKETS)
    for b in [("16x9", 1.0, 2), ("16x9", 3.0, 1), ("9x16", 0.5, 2)]:
        alone.add(*b)
    assert first == pytest.approx(alone.row("video"))
    assert first["val_loss_video/16x9"] == pytest.approx(5 / 3) and first["val_count_video/9x16"] == 2
    assert second == pytest.approx({"val_loss_video": 3.0, "val_loss_video/16x9": 2.0, "val_count_video/16x9": 1,
                                    "val_loss_video/9x16": 4.0, "val_count_video/9x16": 1})


def _rows_with_buckets() -> list[dict]:
    """A TAE stage (2 passes, joint data) and a t2i stage whose capped pass reached one bucket."""
    rows = []
    for step, scale in ((500, 2.0), (1000, 1.0)):
        row = {"stage": "tae", "stage_index": 0, "step": step, "split": "train", "loss": scale, "lr": 5e-4}
        for kind in ("image", "video"):
            s = ValSums(BUCKETS)
            s.add("16x9", 0.3 * scale, 3)
            s.add("9x16", 0.9 * scale, 1)
            row.update(s.row(kind))
        rows.append(row)
    s = ValSums(BUCKETS)
    s.add("16x9", 0.7, 2)
    rows.append({"stage": "t2i_32", "stage_index": 1, "step": 300, "split": "train", "loss": 0.8, "lr": 1e-3,
                 **s.row("image")})
    return rows


def test_bucket_columns_read_back_from_parquet_and_show_in_the_report(tmp_path):
    from reelflow.curation.storage import Storage
    from reelflow.training.report import write_training_report
    from reelflow.training.schedule import load_schedule

    rows = _rows_with_buckets()
    pd.DataFrame(rows).to_parquet(tmp_path / "metrics.parquet", index=False)  # as the train flow writes it
    back = pd.read_parquet(tmp_path / "metrics.parquet")
    assert {"val_loss_video/16x9", "val_count_video/9x16", "val_loss_image/16x9"} <= set(back.columns)
    last_tae = back[back["stage"] == "tae"].iloc[-1].to_dict()
    assert bucket_losses(last_tae, "video") == {"16x9": (pytest.approx(0.3), 3), "9x16": (pytest.approx(0.9), 1)}
    assert _weighted_mean(last_tae, "video") == pytest.approx(last_tae["val_loss_video"])
    t2i = back[back["stage"] == "t2i_32"].iloc[0].to_dict()
    assert math.isnan(t2i["val_loss_image/9x16"]) and set(bucket_losses(t2i, "image")) == {"16x9"}  # NaN: not reached

    schedule = load_schedule("tiny")
    uri = write_training_report(Storage(), str(tmp_path / "run"), schedule, [], rows)
    page = (tmp_path / "run" / "report.html").read_text()
    assert uri.endswith("report.html")
    table = page.split('id="buckets"')[1].split("</table>")[0]
    assert "<th>16x9</th><th>9x16</th>" in table
    assert "<td>0.3 <span class=muted>n=3</span><br><span class=muted>first pass 0.6</span></td>" in table
    assert "<td>0.9 <span class=muted>n=1</span>" in table
    t2i_line = [line for line in table.split("<tr>") if "t2i_32" in line][0]
    assert "<td>0.7 <span class=muted>n=2</span></td><td>—</td>" in t2i_line  # 9x16 not reached: a dash, not a number
    # the per-stage charts and the schedule table keep one val loss per kind
    assert "val video/16x9" not in page and "val image" in page
