"""Shard planning/writing, stage store, ledger and index built from hand-made stage tables."""

import json

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from reelflow.curation import output_tables
from reelflow.curation import shard as shard_mod
from reelflow.curation.ledger import build_ledger
from reelflow.curation.policy import demo_policy, policy_from_dict
from reelflow.curation.records import STAGE_SCHEMAS, clip_key
from reelflow.curation.run_outputs import write_outputs
from reelflow.curation.shard import plan_shards, write_shard
from reelflow.curation.stage_store import StageStore
from reelflow.curation.storage import Storage


def clip_row(i, w=320, h=180, dur=2.0, nbytes=100):
    return {"item_id": clip_key("vabc", i, 0), "width": w, "height": h, "duration_s": dur, "clip_bytes": nbytes,
            "title": "t", "description": None, "status": "ok"}


def test_plan_shards_groups_by_bucket_and_caps_size():
    p = policy_from_dict({**json.loads(demo_policy().model_dump_json()), "output": {"shard_max_samples": 2, "max_short_side": 256}})
    rows = [clip_row(i) for i in range(5)] + [clip_row(10 + i, 180, 320) for i in range(2)]
    plan = plan_shards(list(reversed(rows)), p)
    assert [x["shard"] for x in plan] == [
        "shards/16x9_1p5-2p5s/shard-000000.tar", "shards/16x9_1p5-2p5s/shard-000001.tar",
        "shards/16x9_1p5-2p5s/shard-000002.tar", "shards/9x16_1p5-2p5s/shard-000000.tar"]
    keys = [r["item_id"] for x in plan for r in x["rows"]]
    assert keys == sorted(keys[:5]) + sorted(keys[5:])  # deterministic order, whatever the input order
    assert plan_shards(rows, p) == plan


def test_write_shard_reads_back_with_plain_webdataset(tmp_path):
    storage = Storage()
    media = tmp_path / "m"
    media.mkdir()
    rows = []
    for i in range(3):
        (media / f"{i}.mp4").write_bytes(b"video%d" % i)
        r = {**clip_row(i), "clip_uri": str(media / f"{i}.mp4"), "audio_uri": None, "caption": f"cap {i}",
             "license": "CC0-1.0", "bucket": "b"}
        if i == 1:
            (media / "1.flac").write_bytes(b"audio")
            r["audio_uri"] = str(media / "1.flac")
        rows.append(r)
    out = write_shard(storage, str(tmp_path / "out"), "shards/b/shard-000000.tar", rows)
    assert all(r["shard"] == "shards/b/shard-000000.tar" for r in out)
    samples = list(wds.WebDataset(str(tmp_path / "out/shards/b/shard-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [r["item_id"] for r in rows]
    assert samples[1]["flac"] == b"audio" and "flac" not in samples[0]
    rec = json.loads(samples[2]["json"])
    assert rec["key"] == rows[2]["item_id"] and rec["license"] == "CC0-1.0" and samples[2]["txt"] == b"cap 2"
    # Byte-identical on rewrite: resume must not change finished shards.
    first = (tmp_path / "out/shards/b/shard-000000.tar").read_bytes()
    write_shard(storage, str(tmp_path / "out"), "shards/b/shard-000000.tar", rows)
    assert (tmp_path / "out/shards/b/shard-000000.tar").read_bytes() == first

    # The layout is webdataset's own: the same bytes its TarWriter writes for these samples.
    samples = [shard_mod._sample(storage, r) for r in out]
    with open(tmp_path / "wds.tar", "wb") as f, wds.TarWriter(f, mtime=shard_mod.TAR_MTIME, encoder=False) as tw:
        for sample in samples:
            tw.write(sample)
    assert (tmp_path / "wds.tar").read_bytes() == first


def _common(stage, item, status="ok", reason=None, kind="video", parent=None):
    return {"run_id": "r", "item_id": item, "kind": kind, "parent_id": parent, "source_uri": f"/src/{item}",
            "stage": stage, "status": status, "reason": reason}


@pytest.fixture
def store(tmp_path):
    s = StageStore(Storage(), str(tmp_path))
    s.write_part("ingest", [_common("ingest", v) for v in ("va", "vb", "vc", "vd")])
    s.write_part("probe", [_common("probe", "va"), _common("probe", "vb", "failed", "empty file (0 bytes)"),
                           _common("probe", "vc"), _common("probe", "vd")])
    s.write_part("filter", [_common("filter", v) for v in ("va", "vc", "vd")])
    s.write_part("shots", [_common("shots", v) for v in ("va", "vc", "vd")])
    s.write_part("clips", [_common("clips", "va_1", kind="clip", parent="va"),
                           _common("clips", "va_2", "rejected", "shot_too_short: 1s<4s", "clip", "va"),
                           _common("clips", "vc_1", "rejected", "shot_too_short: 2s<4s", "clip", "vc"),
                           _common("clips", "vd_1", kind="clip", parent="vd")])
    s.write_part("extract", [{**_common("extract", "va_1", kind="clip", parent="va"), "width": 320, "height": 180,
                              "duration_s": 2.0},
                             _common("extract", "vd_1", "failed", "extract: ExtractError: ffmpeg exited 1", "clip", "vd")])
    s.write_part("shard", [{**_common("shard", "va_1", kind="clip", parent="va"), "shard": "shards/x/shard-000000.tar",
                            "bucket": "x", "caption": "", "duration_s": 2.0}])
    return s


def test_store_parts(store):
    assert store.read("probe").num_rows == 4
    assert store.read_part("clips", store.parts("clips")[0], ["parent_id"]).column_names == ["parent_id"]
    assert store.read("probe").schema == STAGE_SCHEMAS["probe"]
    store.write_part("probe", [])
    assert len(store.parts("probe")) == 1


def test_ledger_gives_every_item_one_terminal_status(store):
    led = {r["item_id"]: r for r in build_ledger(store).to_pylist()}
    assert len(led) == 4 + 4
    assert (led["va"]["status"], led["va"]["reason"]) == ("accepted", "1 clip(s) accepted")
    assert (led["vb"]["status"], led["vb"]["stage"]) == ("failed", "probe")
    assert led["vc"]["status"] == "rejected" and led["vc"]["reason"] == "no clip accepted (1x shot_too_short)"
    assert led["vd"]["status"] == "failed" and "1x extract" in led["vd"]["reason"]
    assert led["va_1"]["status"] == "accepted" and led["va_2"]["status"] == "rejected"
    assert led["vd_1"]["reason"] == "extract: ExtractError: ffmpeg exited 1"
    out = write_outputs(store, "r", "{}")
    f = {r["stage"]: r for r in out.funnel}
    assert (f["probe"]["rows"], f["probe"]["passed"], f["probe"]["failed"]) == (4, 3, 1)
    idx = output_tables.read(store.storage, store.output, "index")
    assert idx.column("key").to_pylist() == ["va_1"] and idx.column("sampling_weight").to_pylist() == [1.0]
    assert output_tables.read(store.storage, store.output, "ledger") == build_ledger(store)
    assert out.summary["videos"] == {"accepted": 1, "rejected": 1, "failed": 2} and out.summary["shards"] == [
        "shards/x/shard-000000.tar"]


def test_ledger_flags_items_a_stopped_run_left_behind(store):
    store.clear("shard")
    led = {r["item_id"]: r for r in build_ledger(store).to_pylist()}
    assert led["va_1"]["status"] == "failed" and led["va_1"]["reason"].startswith("unfinished")


def _many_videos(store: StageStore, n: int) -> None:
    """``n`` more videos through every stage, with the outcomes a run produces: rejected and failed
    at each video stage, clips rejected by a rule or as duplicates, failed (retryable or not),
    unfinished, and kept in a few shards."""
    rows: dict[str, list[dict]] = {st: [] for st in ("ingest", "probe", "filter", "shots", "clips", "score", "dedup",
                                                    "extract", "caption", "balance", "shard")}
    for i in range(n):
        v = f"vm{i:04d}"
        rows["ingest"].append(_common("ingest", v))
        if i % 11 == 1:
            rows["probe"].append(_common("probe", v, "failed", "probe: not a video"))
            continue
        rows["probe"].append(_common("probe", v))
        if i % 13 == 2:
            rows["filter"].append(_common("filter", v, "rejected", "too_short: 1s<4s"))
            continue
        rows["filter"].append(_common("filter", v))
        rows["shots"].append(_common("shots", v))
        for c in range(i % 4):  # 0..3 clips: some videos plan none
            cid = f"{v}_c{c}"
            clip = dict(kind="clip", parent=v)
            rows["clips"].append(_common("clips", cid, **clip))
            fate = (i + c) % 6
            if fate == 0:
                rows["score"].append(_common("score", cid, "rejected", f"{'ocr' if c else 'motion'}: too much", **clip))
                continue
            rows["score"].append(_common("score", cid, **clip))
            if fate == 1:
                rows["dedup"].append({**_common("dedup", cid, "rejected", "near duplicate", **clip),
                                      "duplicate_of": f"{v}_c9"})
                continue
            rows["dedup"].append(_common("dedup", cid, **clip))
            if fate == 2:
                rows["extract"].append({**_common("extract", cid, "failed", "extract: timeout", **clip),
                                        "retryable": bool(i % 2)})
                continue
            rows["extract"].append(_common("extract", cid, **clip))
            if fate == 3:
                continue  # unfinished: no caption row
            for st in ("caption", "balance"):
                rows[st].append(_common(st, cid, **clip))
            rows["shard"].append({**_common("shard", cid, **clip), "shard": f"shards/b{i % 2}/shard-{i % 3:06d}.tar",
                                  "bucket": f"b{i % 2}", "caption": "c", "duration_s": 2.0 + c})
    for st, r in rows.items():
        for k in range(0, len(r), 37):  # several parts a stage
            store.write_part(st, r[k:k + 37])


def test_ledger_built_by_the_workers_equals_the_driver_s(store, ray_session, tmp_path):
    """The shuffle by video over 5 partitions writes the same rows, counts and index as the
    in-driver build; a run over single_file_max_rows is read back from its parts alone."""
    _many_videos(store, 300)
    small = write_outputs(store, "r", "{}")
    ledger = output_tables.read(store.storage, store.output, "ledger")
    index = output_tables.read(store.storage, store.output, "index")
    assert output_tables.uris(store.storage, store.output, "ledger") == [f"{store.output}/ledger.parquet"]
    assert set(ledger.column("status").to_pylist()) == {"accepted", "rejected", "failed"}

    big = write_outputs(store, "r", "{}", in_driver=False, partitions=5, part_rows=37, single_file_max_rows=0)
    assert (big.summary, big.funnel, big.rule_rejects) == (small.summary, small.funnel, small.rule_rejects)
    assert not store.storage.exists(f"{store.output}/ledger.parquet")
    parts = output_tables.uris(store.storage, store.output, "ledger")
    assert len(parts) == 5
    by_id = lambda t: sorted(t.to_pylist(), key=lambda r: r["item_id"])  # noqa: E731
    assert by_id(output_tables.read(store.storage, store.output, "ledger")) == by_id(ledger)
    assert output_tables.read(store.storage, store.output, "index") == index
    # Every video's rows (its own and its clips') sit in one part.
    homes: dict[str, set] = {}
    for i, uri in enumerate(parts):
        for r in pq.read_table(uri).to_pylist():
            homes.setdefault(r["item_id"] if r["kind"] == "video" else r["parent_id"], set()).add(i)
    assert all(len(h) == 1 for h in homes.values())
    assert small.rule_rejects == {"motion": small.rule_rejects["motion"], "ocr": small.rule_rejects["ocr"]}
    # The single file comes back once the run is small enough again; outputs are rewritten whole.
    write_outputs(store, "r", "{}", in_driver=False, partitions=2, part_rows=37)
    assert output_tables.uris(store.storage, store.output, "ledger") == [f"{store.output}/ledger.parquet"]
    assert len(output_tables.part_uris(store.storage, store.output, "ledger")) == 2


def _balance_rows(media, n: int) -> list[dict]:
    """Accepted clips in two buckets, of sizes that make both caps cut shards; some with audio and
    a CLIP embedding."""
    rows = []
    for i in range(n):
        clip = media / f"{i}.mp4"
        clip.write_bytes(b"v" * (200_000 + 37_000 * (i % 5)))
        w, h = (320, 180) if i % 3 else (180, 320)
        r = {**_common("balance", clip_key(f"v{i % 7:03d}", i, 0), kind="clip", parent=f"v{i % 7:03d}"),
             "width": w, "height": h, "duration_s": 2.0, "start_s": 0.0, "end_s": 2.0, "fps": 24.0,
             "clip_bytes": clip.stat().st_size, "clip_uri": str(clip), "caption": f"clip {i}", "license": "CC0-1.0",
             "title": "t", "sampling_weight": 1.0 + (i % 2) / 10, "cluster_id": i % 4, "cluster_size": 2,
             **{s: 0.25 + i / 100 for s in ("motion_mean", "static", "cuts_per_s", "border_fraction", "sharpness",
                                            "mean_luma", "text_conf_max")}}
        if i % 4 == 0:
            (media / f"{i}.flac").write_bytes(b"a" * 20)
            r["audio_uri"] = str(media / f"{i}.flac")
        if i % 5 == 0:
            r["clip_embedding"] = [0.1 * i, -0.5, 1 / 3]
        rows.append(r)
    rows.append({**_common("balance", "vzzz_s0000_c00", "failed", "caption: timeout", "clip", "vzzz")})
    return rows


def test_shard_stage_by_the_workers_writes_the_driver_s_bytes(tmp_path, ray_session):
    """The distributed shard stage (a plan cut by one task over the sorted blocks, then one writer per shard) writes the same
    tars and the same shard table as the in-driver one; a rerun skips on its finished marker."""
    from reelflow.curation import pipeline, table_gates
    from reelflow.curation.stages import StageContext

    media = tmp_path / "media"
    media.mkdir()
    rows = _balance_rows(media, 40)
    base = {**json.loads(demo_policy().model_dump_json())}
    out = {}
    for name, max_rows in (("driver", 20_000), ("workers", 0)):
        policy = policy_from_dict({**base, "output": {**base["output"], "shard_max_samples": 4, "shard_max_bytes": 1 << 20},
                                   "runtime": {**base["runtime"], "driver_max_rows": max_rows}})
        ctx = StageContext(run_id="r", output=str(tmp_path / name), policy=policy)
        store = StageStore(Storage(), ctx.output)
        for k in range(0, len(rows), 9):
            store.write_part("balance", rows[k:k + 9])
        run = pipeline.run_shard_stage(ctx, store)
        assert (run.inputs, run.processed) == (40, 40)
        table_gates.check_stage_table("shard", store, "balance", "item_id", policy)
        tars = sorted((tmp_path / name / "shards").rglob("*.tar"))
        out[name] = ({str(p.relative_to(tmp_path / name)): p.read_bytes() for p in tars},
                     sorted(store.read("shard").to_pylist(), key=lambda r: r["item_id"]))
        if name == "workers":
            again = pipeline.run_shard_stage(ctx, store)
            assert (again.skipped, again.processed) == (40, 0)
    assert len(out["driver"][0]) >= 6 and {p.split("/")[1] for p in out["driver"][0]} == {"16x9_1p5-2p5s", "9x16_1p5-2p5s"}
    assert out["workers"][0] == out["driver"][0]
    assert out["workers"][1] == out["driver"][1]
