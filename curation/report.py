"""One self-contained HTML report of a run: ``OUTPUT/report.html``.

For a data engineer opening it in a browser: the header (inputs, clips kept, hours), the funnel
per stage and per quality rule (Movie Gen's retention table, in policy order), a histogram per
quality score with the policy's thresholds drawn on it, the duplicate groups (each kept clip beside
the clips dropped as its exact / near / semantic duplicates), the concept clusters with their
sampling weights, and a contact sheet of the clips that reached the shards (with caption, camera
motion, cluster and weight) and of rejected clips with the reason each was rejected. Charts are
matplotlib PNGs and thumbnails JPEGs, both embedded as base64 data URIs, so the report is one file
that can be mailed or opened from S3.

Works on older outputs without a ``score``, ``dedup``, ``caption`` or ``balance`` stage table (the
sections that need one are skipped, and say so), on runs with zero clips, and with OUTPUT on S3
(written with ``Storage``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import secrets
import zlib
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from reelflow.curation import output_tables, ray_tables
from reelflow.curation.ledger import build_ledger
from reelflow.curation.records import CLIP, FAILED, OK, REJECTED, SCORE_COLUMNS, STAGE_ORDER, STAGE_SCHEMAS, VIDEO
from reelflow.curation.stage_store import StageStore, _superseded_dropped
from reelflow.curation.storage import Storage, join

REPORT_STAGES = list(STAGE_ORDER)
SCORE_STAGE = "score"
SAMPLE_CLIPS = 20_000  # candidate clips a large run's report reads (a hash sample by video)
SAMPLE_PER_GROUP = 12  # kept clips, and rejected clips, shown in the contact sheet
DUP_GROUPS = 8  # duplicate groups shown in the Duplicates section
DUPS_PER_GROUP = 3  # duplicates shown beside each group's kept clip
BALANCE_TABLE_ROWS = 12  # clusters listed under the balance chart (largest and smallest)
DEDUP_LEVELS = ("exact", "near", "semantic")
SIMILARITY_UNIT = {"exact": "identical decoded content", "near": "frame agreement", "semantic": "cosine"}
# List columns (embeddings, pHashes, shot lists) are never shown: left out when rows are read.
HEAVY_COLUMNS = {"clip_embedding", "caption_embedding", "phashes", "shot_starts", "shot_ends", "transcript_segments"}
# Fields of a kept clip's card that later stages add: taken from the first table that has them.
KEPT_INFO = ("caption", "camera_motion", "camera_confidence", "cluster_id", "cluster_size", "sampling_weight",
             "tags", "transcript", "transcript_language", "rule_failures")
THUMB_FRAMES = 4
THUMB_HEIGHT = 96  # px: small JPEGs keep the report file small
UNATTRIBUTED = "(no rule named)"
SCORE_ONLY_MARK = "(score only)"  # suffix of a score-only entry in rule_failures

# Colours of the three outcomes, the same in every chart.
C_KEPT, C_REJ, C_REJ_OTHER, C_FAIL = "#2e7d32", "#e65100", "#ffb74d", "#c62828"


@dataclass
class RuleStat:
    """One policy rule and what it did to the scored clips."""

    rule: str
    column: str
    min: float | None
    max: float | None
    enabled: bool
    score_only: bool
    removed: int = 0  # clips this rule rejected (it was their first enforcing failure)
    failing: int = 0  # clips that broke it anywhere in their rule_failures (incl. score-only)
    remaining: int = 0  # clips left after this rule, in policy order
    in_table: bool = True

    @property
    def enforcing(self) -> bool:
        return self.enabled and not self.score_only


@dataclass
class ReportData:
    run_id: str
    output: str
    summary: dict
    summary_source: str
    funnel: list[dict]
    score: pa.Table | None
    shard: pa.Table | None  # the clips accepted at the end (status ok)
    dedup: pa.Table | None = None
    extract: pa.Table | None = None
    caption: pa.Table | None = None
    balance: pa.Table | None = None
    sample_rate: float = 1.0  # fraction of clips the tables were read for (1.0: all of them)
    rules: list[RuleStat] = field(default_factory=list)
    first_rule: list[str | None] = field(default_factory=list)  # per score row: the rule that rejected it
    # clip URI -> its thumbnail strip, decoding in ``decoder`` (a clip can show twice; decoded once)
    thumbs: dict[str, Future[str]] = field(default_factory=dict)
    decoder: ThreadPoolExecutor | None = None  # where thumbnails decode (set by write_report)
    # A card's thumbnail is a placeholder in the page until every section is built (``_with_thumbs``).
    placeholders: dict[str, tuple[Future[str], str]] = field(default_factory=dict)  # placeholder -> (strip, alt)
    placeholder_nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    _encoded: dict[str, dict] | None = None

    def encoded(self, item_id: str) -> dict | None:
        """The extract row of a clip that was encoded (its file, width and height), else None."""
        if self._encoded is None:
            cols = ["item_id", "status", "clip_uri", "width", "height"]
            rows = (self.extract.select([c for c in cols if c in self.extract.column_names]).to_pylist()
                    if self.extract is not None and "clip_uri" in self.extract.column_names else [])
            self._encoded = {r["item_id"]: r for r in rows if r.get("status") == "ok" and r.get("clip_uri")}
        return self._encoded.get(item_id)


def write_report(storage: Storage, output: str, store: StageStore, policy_rules: list[dict], run_id: str,
                 funnel: list[dict] | None = None, max_rows: int | None = None) -> str:
    """Build ``OUTPUT/report.html`` from the stage tables and return its URI.

    ``funnel``: the run's exact funnel (``run_outputs.Outputs.funnel``); without it, counted from
    the tables read. ``max_rows``: stage tables beyond this many rows are read as a sample (see
    ``read_tables``), so the report's process holds ~``SAMPLE_CLIPS`` clips whatever the run."""
    tables, rate = read_tables(store, max_rows)
    data = ReportData(
        run_id=run_id, output=output, funnel=funnel or _funnel(tables), score=tables[SCORE_STAGE],
        shard=tables["shard"], dedup=tables["dedup"], extract=tables["extract"], caption=tables["caption"],
        balance=tables["balance"], sample_rate=rate, **_summary(storage, output, store, tables),
    )
    if data.score is not None:
        data.rules = [_rule_stat(r, data.score) for r in policy_rules]
        data.first_rule = _attribute(data.score, data.rules)
        _count_rules(data)
    # The sections that show clips are built first: their thumbnails decode in a thread (PyAV
    # decodes without the GIL) while this one draws the charts (~0.7 s of a ~5 s report).
    with ThreadPoolExecutor(1, thread_name_prefix="report-thumbnails") as decoder:
        data.decoder = decoder
        dedup, contact = _dedup_html(storage, data), _contact_html(storage, data)
        page = _page(data, [
            _header_html(data), _funnel_html(data), _rules_html(data), _histograms_html(data), dedup,
            _balance_html(data), contact,
        ])
        page = _with_thumbs(page, data)
    uri = join(output, "report.html")
    storage.write_bytes(uri, page.encode("utf-8"))
    return uri


# -- data -------------------------------------------------------------------------------------


def read_tables(store: StageStore, max_rows: int | None) -> tuple[dict[str, pa.Table | None], float]:
    """Every stage table without its list columns, and the fraction of clips read: 1.0, or, when
    the tables hold more than ``max_rows`` rows, ``SAMPLE_CLIPS`` / candidate clips -- a sample
    by a hash of each item's key (of its video's key for clips), the same items in every table,
    read by the Ray workers."""
    if max_rows is None or ray_tables.small_tables(store, REPORT_STAGES, max_rows):
        return {st: _read_stage(store, st) for st in REPORT_STAGES}, 1.0
    clips = ray_tables.read_table(store, "clips", columns=["item_id"])
    n = clips.count() if clips is not None else 0
    rate = min(1.0, SAMPLE_CLIPS / n) if n else 1.0
    out: dict[str, pa.Table | None] = {}
    for st in REPORT_STAGES:
        cols = [c for c in STAGE_SCHEMAS[st].names if c not in HEAVY_COLUMNS]
        ds = ray_tables.read_table(store, st, columns=cols)
        if ds is None:
            out[st] = None
            continue
        ds = ds.map_batches(_sampled, fn_kwargs={"rate": rate}, batch_format="pyarrow", batch_size=None)
        blocks = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        out[st] = (pa.concat_tables(blocks, promote_options="permissive") if blocks
                   else STAGE_SCHEMAS[st].empty_table().select(cols))
    return out, rate


def _sampled(batch: pa.Table, rate: float) -> pa.Table:
    """Rows whose video is in the sample: a clip goes with its video (the contact sheet's
    thumbnails, the duplicate groups and the rules all see whole videos)."""
    video = batch["parent_id"] if "parent_id" in batch.column_names else batch["item_id"]
    ids = [p or i for p, i in zip(video.to_pylist(), batch["item_id"].to_pylist())]
    cut = int(rate * 2**32)
    return batch.filter(pa.array([zlib.crc32((k or "").encode()) < cut for k in ids], pa.bool_()))


def _read_stage(store: StageStore, stage: str) -> pa.Table | None:
    """The stage table without its list columns, or None when no part was ever written (e.g. no
    score stage in older outputs)."""
    parts = store.parts(stage)
    if not parts:
        return None
    if stage in STAGE_SCHEMAS:
        cols = [c for c in STAGE_SCHEMAS[stage].names if c not in HEAVY_COLUMNS]
        tables = [store.read_part(stage, u, cols) for u in parts]
        return _superseded_dropped(pa.concat_tables(tables, promote_options="permissive"))
    # A stage this records.py has no schema for (score tables written before it was registered): as is.
    tables = [pq.read_table(io.BytesIO(store.storage.read_bytes(u))) for u in parts]
    return pa.concat_tables(tables, promote_options="permissive")


def _funnel(tables: dict[str, pa.Table | None]) -> list[dict]:
    out = []
    for st in REPORT_STAGES:
        t = tables[st]
        if t is None and st in (SCORE_STAGE, "dedup", "caption", "balance"):
            continue  # older outputs lack these stages: leave them out rather than show zeros
        c = Counter(t.column("status").to_pylist()) if t is not None and t.num_rows else Counter()
        rows = t.num_rows if t is not None else 0
        out.append({"stage": st, "rows": rows, "passed": c[OK], "rejected": c[REJECTED], "failed": c[FAILED]})
    return out


def _summary(storage: Storage, output: str, store: StageStore, tables: dict) -> dict:
    """Header figures: dataset.json when the run wrote it, else the ledger and the shard table."""
    ds_uri = join(output, "dataset.json")
    if storage.exists(ds_uri):
        return {"summary": json.loads(storage.read_bytes(ds_uri)), "summary_source": "dataset.json"}
    if output_tables.exists(storage, output, output_tables.LEDGER):
        ledger = output_tables.read(storage, output, output_tables.LEDGER, columns=["kind", "status"])
        where = output_tables.location(storage, output, output_tables.LEDGER)
        source = "ledger.parquet" if where.endswith(".parquet") else "ledger/ (its parts)"
    else:
        ledger, source = build_ledger(store), "the ledger built from the stage tables"
    by = Counter(zip(ledger.column("kind").to_pylist(), ledger.column("status").to_pylist()))
    shard = tables["shard"]
    seconds = 0.0
    if shard is not None and shard.num_rows:
        seconds = sum(r["duration_s"] or 0.0 for r in shard.select(["status", "duration_s"]).to_pylist() if r["status"] == OK)
    summary = {
        "run_id": None,
        "inputs": sum(n for (k, _), n in by.items() if k == VIDEO),
        "videos": {s: by[(VIDEO, s)] for s in ("accepted", REJECTED, FAILED)},
        "clips": {s: by[(CLIP, s)] for s in ("accepted", REJECTED, FAILED)},
        "hours": round(seconds / 3600, 6),
    }
    return {"summary": summary, "summary_source": source}


def _rule_stat(r: dict, score: pa.Table) -> RuleStat:
    col = str(r.get("score") or "")
    return RuleStat(
        rule=str(r["rule"]), column=col, min=_num(r.get("min")), max=_num(r.get("max")),
        enabled=bool(r.get("enabled", True)), score_only=bool(r.get("score_only", False)),
        in_table=col in score.column_names,
    )


def _num(v) -> float | None:
    return None if v is None else float(v)


def _failed_rules(rule_failures: str | None, enforcing_only: bool = False) -> list[str]:
    """Rule names of a ``rule_failures`` cell: "rule: score=value>=limit; ..." -> ["rule", ...].

    ``enforcing_only`` drops the entries marked " (score only)" (curation.scoring.rules.verdict).
    """
    if not rule_failures:
        return []
    parts = [p.strip() for p in rule_failures.split("; ") if p.strip()]
    if enforcing_only:
        parts = [p for p in parts if not p.endswith(SCORE_ONLY_MARK)]
    return [p.split(":", 1)[0].strip() for p in parts]


def _attribute(score: pa.Table, rules: list[RuleStat]) -> list[str | None]:
    """Per score row, the rule that removed it: its first failing rule that enforces.

    Score-only (and disabled) rules are listed in rule_failures too but reject nothing, so they are
    skipped; a rule the policy does not list is trusted to enforce.
    """
    passive = {r.rule for r in rules if not r.enforcing}
    statuses = score.column("status").to_pylist()
    fails = _column(score, "rule_failures")
    reasons = _column(score, "reason")
    out: list[str | None] = []
    for status, rf, reason in zip(statuses, fails, reasons):
        if status != REJECTED:
            out.append(None)
            continue
        names = [n for n in _failed_rules(rf, enforcing_only=True) if n not in passive] or _failed_rules(reason)
        out.append(names[0] if names else UNATTRIBUTED)
    return out


def _column(t: pa.Table, name: str) -> list:
    return t.column(name).to_pylist() if name in t.column_names else [None] * t.num_rows


def _rows(t: pa.Table | None) -> list[dict]:
    """The table's rows as dicts, without the list columns no section shows (embeddings are large)."""
    if t is None:
        return []
    return t.select([c for c in t.column_names if c not in HEAVY_COLUMNS]).to_pylist()


def _by_key(t: pa.Table | None) -> dict[str, dict]:
    return {r["item_id"]: r for r in _rows(t)}


def _duplicates(data: ReportData) -> list[dict]:
    """Rows of the dedup table that were dropped as a duplicate of another clip."""
    return [r for r in _rows(data.dedup) if r["status"] == REJECTED and r.get("duplicate_of")]


def _kept_rows(data: ReportData) -> tuple[list[dict], str]:
    """The clips accepted at the end (status ok in the shard table) and a heading for them.

    Each row gets the caption, camera motion, cluster and weight from the shard table, or from the
    balance / caption / score table where the shard table lacks them (older outputs). Without a
    shard table (an unfinished run) the clips that passed scoring and dedup stand in.
    """
    if data.shard is not None:
        rows = [r for r in _rows(data.shard) if r["status"] == OK]
        head = "Kept: accepted into the shards"
    elif data.score is not None:
        dups = {r["item_id"] for r in _duplicates(data)}
        rows = [r for r in _rows(data.score) if r["status"] == OK and r["item_id"] not in dups]
        head = "Passed scoring" + (" and dedup" if data.dedup is not None else "") + " (no shard table: the run did not finish)"
    else:
        return [], "Kept"
    sources = [_by_key(t) for t in (data.balance, data.caption, data.score) if t is not None]
    for r in rows:
        for col in KEPT_INFO:
            if r.get(col) is None:
                r[col] = next((s[r["item_id"]][col] for s in sources if s.get(r["item_id"], {}).get(col) is not None), None)
    return rows, head


def _count_rules(data: ReportData) -> None:
    """Fill removed / failing / remaining per rule (Movie Gen's retention table, in policy order)."""
    assert data.score is not None
    removed = Counter(x for x in data.first_rule if x)
    failing = Counter(n for rf in _column(data.score, "rule_failures") for n in set(_failed_rules(rf)))
    left = _scored_count(data)
    for r in data.rules:
        r.removed, r.failing = removed[r.rule], failing[r.rule]
        left -= r.removed
        r.remaining = left


def _scored_count(data: ReportData) -> int:
    """Clips that got scores: rows of the score table that did not fail."""
    assert data.score is not None
    return sum(1 for s in data.score.column("status").to_pylist() if s != FAILED)


# -- charts -----------------------------------------------------------------------------------


def figure_data_uri(fig: Figure) -> str:
    """A chart as a ``data:image/png`` URI to inline in a page (training's report uses it too)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    # Charts use a handful of flat colours: a 256-colour palette PNG is ~3x smaller than RGBA.
    img = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _funnel_chart(funnel: list[dict]) -> str:
    fig = Figure(figsize=(7.5, 0.42 * len(funnel) + 1.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    names = [f["stage"] for f in funnel][::-1]  # first stage on top
    rows = funnel[::-1]
    left = np.zeros(len(rows))
    for key, colour in (("passed", C_KEPT), ("rejected", C_REJ), ("failed", C_FAIL)):
        vals = np.array([r[key] for r in rows], dtype=float)
        ax.barh(names, vals, left=left, color=colour, label=key)
        left += vals
    for i, r in enumerate(rows):
        ax.text(left[i], i, f"  {r['rows']} in", va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, left.max()) * 1.18)
    ax.set_xlabel("rows (videos for ingest…shots, clips from clips on)")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return figure_data_uri(fig)


def _rules_chart(data: ReportData) -> str:
    """Clips remaining after each rule, as % of the clips entering the score stage."""
    assert data.score is not None
    total = data.score.num_rows
    labels = ["entered score", "scored (no error)"] + [r.rule for r in data.rules]
    left = [total, _scored_count(data)] + [r.remaining for r in data.rules]
    removed = [0, total - _scored_count(data)] + [r.removed for r in data.rules]
    fig = Figure(figsize=(7.5, 0.36 * len(labels) + 1.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    pct = [100.0 * v / total if total else 0.0 for v in left]
    colours = [C_KEPT] * 2 + [C_KEPT if r.enforcing else "#9e9e9e" for r in data.rules]
    ax.barh(y, pct, color=colours)
    for yi, p, n, rm in zip(y, pct, left, removed):
        ax.text(p, yi, f"  {p:.1f}% ({n})" + (f"  −{rm}" if rm else ""), va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 135)
    ax.set_xlabel("% of clips entering the score stage still kept (rules in policy order)")
    ax.spines[["top", "right"]].set_visible(False)
    return figure_data_uri(fig)


def _balance_chart(clusters: list[tuple[int, int, float]]) -> str:
    """Bars: clips per concept cluster, largest first; dots: each cluster's sampling weight."""
    n = len(clusters)
    x = np.arange(n)
    sizes = np.array([c[1] for c in clusters], dtype=float)
    weights = np.array([c[2] for c in clusters], dtype=float)
    fig = Figure(figsize=(7.5, 3.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(x, sizes, width=0.8 if n <= 200 else 1.0, color=C_KEPT)
    ax.set_ylabel("clips in cluster", color=C_KEPT, fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    ax2.plot(x, weights, "o" if n <= 60 else "-", color=C_REJ, ms=5, lw=1)
    ax2.axhline(1.0, color="#757575", ls=":", lw=1)
    ax2.text(n - 0.35, 1.0, "weight 1 ", color="#757575", fontsize=7, ha="right", va="bottom")
    ax2.set_ylim(0, max(1.0, float(np.nanmax(weights))) * 1.15)
    ax2.set_ylabel("sampling weight (mean 1)", color=C_REJ, fontsize=9)
    if n <= 40:
        ax.set_xticks(x, [str(c[0]) for c in clusters], fontsize=7)
        ax.set_xlabel("concept cluster id, largest first", fontsize=9)
    else:
        ax.set_xlabel(f"{n} concept clusters, largest first", fontsize=9)
    ax.set_xlim(-0.7, n - 0.3)
    for a in (ax, ax2):
        a.tick_params(labelsize=7)
        a.spines[["top"]].set_visible(False)
    return figure_data_uri(fig)


def _hist_chart(data: ReportData, col: str, values: np.ndarray, groups: list[str]) -> str:
    # Fixed margins, not a layout engine, and one filled outline per group, not a bar per bin:
    # a report draws ~15 of these, and constrained layout plus ~70 bar patches each took ~3 s.
    fig = Figure(figsize=(4.4, 2.7), dpi=90)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.1, top=0.9)
    ax = fig.add_subplot()
    finite = np.isfinite(values)
    bins = np.histogram_bin_edges(values[finite], bins=24)
    if bins[0] == bins[-1]:  # one distinct value: give the bar a width
        bins = np.linspace(bins[0] - 0.5, bins[0] + 0.5, 3)
    base = np.zeros(len(bins) - 1)
    for g, colour in (("kept", C_KEPT), ("this", C_REJ), ("other", C_REJ_OTHER)):  # stacked in this order
        top = base + np.histogram(values[finite & (np.array(groups) == g)], bins=bins)[0]
        if (top > base).any():  # a group with no values in range draws nothing
            ax.stairs(top, bins, baseline=base, fill=True, color=colour)
        base = top
    ax.set_ylim(0, max(1.0, base.max()) * 1.05)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = bins[0], bins[-1]
    for r in data.rules:
        if r.column != col:
            continue
        style = {"color": "black", "ls": "-"} if r.enforcing else {"color": "#757575", "ls": "--" if r.enabled else ":"}
        for bound, sign in ((r.min, "≥"), (r.max, "<")):  # rules keep min <= v < max
            if bound is not None:
                ax.axvline(bound, lw=1.4, **style, label=f"{r.rule} {sign} {bound:g}")
                lo, hi = min(lo, bound), max(hi, bound)
    pad = 0.04 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)  # a threshold outside the data range stays visible
    ax.set_title(col, fontsize=10, family="monospace")
    ax.set_ylabel("clips", fontsize=8)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    ax.spines[["top", "right"]].set_visible(False)
    return figure_data_uri(fig)


# -- thumbnails -------------------------------------------------------------------------------


def _thumb(storage: Storage, data: ReportData, r: dict) -> Future[str]:
    """``_thumb_strip`` of a clip, decoded once (a kept clip can show in Duplicates and the contact
    sheet): from its encoded file, or, for a candidate that was judged and never encoded, from its
    span of the source."""
    if r.get("clip_uri"):
        key, uri, span = r["clip_uri"], r["clip_uri"], None
    else:
        span = (float(r["start_s"]), float(r["end_s"]), int(r.get("rotation") or 0))
        key, uri = f"{r['source_uri']}#{span}", r["source_uri"]
    if key not in data.thumbs:
        assert data.decoder is not None, "thumbnails decode in write_report's decoder thread"
        data.thumbs[key] = data.decoder.submit(_thumb_strip, storage, uri, span)
    return data.thumbs[key]


def _thumb_placeholder(storage: Storage, data: ReportData, r: dict) -> str:
    """Where a card's ``<img>`` goes, until ``_with_thumbs`` puts it in (its strip may still be decoding)."""
    token = f"\x00thumb-{data.placeholder_nonce}-{len(data.placeholders)}\x00"
    data.placeholders[token] = (_thumb(storage, data, r), r["item_id"])
    return token


def _with_thumbs(page: str, data: ReportData) -> str:
    """The page with each placeholder replaced by its thumbnail, or by why there is none: a missing
    or broken clip must not lose the whole report."""
    def img(m: re.Match) -> str:
        strip, alt = data.placeholders[m.group(0)]
        try:
            return f'<img alt="{html_text(alt)}" src="{strip.result()}">'
        except Exception as e:  # noqa: BLE001
            return f"<div class=why>thumbnail unavailable: {html_text(type(e).__name__)}: {html_text(e)}</div>"

    return re.sub(f"\x00thumb-{data.placeholder_nonce}-\\d+\x00", img, page)


def _thumb_strip(storage: Storage, uri: str, span: tuple[float, float, int] | None = None) -> str:
    """THUMB_FRAMES frames at the centres of equal segments of the clip (or of ``span``: start,
    end and display rotation in a source), side by side, as a JPEG data URI."""
    path = storage.localize(uri)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        if span is None:
            start, dur = 0.0, float(s.duration * s.time_base) if s.duration else (c.duration or 0) / av.time_base
        else:
            start, dur = span[0], span[1] - span[0]
            if start > 0:
                c.seek(int(start / s.time_base), stream=s, backward=True)
        targets = [start + (i + 0.5) / THUMB_FRAMES * dur for i in range(THUMB_FRAMES)]
        frames = _frames_at(c.decode(s), targets)
    if not frames:
        raise ValueError("no video frame decoded")
    if span is not None and span[2] % 360:  # upright, as the extracted clip would be
        frames = [np.ascontiguousarray(np.rot90(f, k=(span[2] // 90) % 4)) for f in frames]
        frames = [_fit_height(f) for f in frames]
    gap = np.full((THUMB_HEIGHT, 3, 3), 255, np.uint8)
    strip = np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="JPEG", quality=72)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _frames_at(decoded, targets: list[float]) -> list[np.ndarray]:
    """One pass over the decode: the first frame at or after each target time (clips are short)."""
    out: list[np.ndarray] = []
    last = None
    for frame in decoded:
        last = frame
        t = frame.time if frame.time is not None else 0.0
        while len(out) < len(targets) and t + 1e-6 >= targets[len(out)]:
            out.append(_small(frame))
        if len(out) == len(targets):
            break
    while last is not None and len(out) < len(targets):  # stream shorter than its stated duration
        out.append(_small(last))
    return out


def _fit_height(img: np.ndarray) -> np.ndarray:
    """A turned thumbnail back to THUMB_HEIGHT rows."""
    if img.shape[0] == THUMB_HEIGHT:
        return img
    w = max(2, round(THUMB_HEIGHT * img.shape[1] / img.shape[0]))
    return np.asarray(Image.fromarray(img).resize((w, THUMB_HEIGHT)))


def _small(frame) -> np.ndarray:
    w = max(2, round(THUMB_HEIGHT * frame.width / max(1, frame.height)))
    return frame.reformat(width=w, height=THUMB_HEIGHT, format="rgb24").to_ndarray()


# -- html -------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1320px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px} .muted{color:#666;font-size:13px} code{font-size:12px}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0} .kpi{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.kpi b{display:block;font-size:20px} .kpi span{font-size:12px;color:#666}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f5f5f5} td.l,th.l{text-align:left} tr.off td{color:#888}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:10px}
.grid figure{margin:0;border:1px solid #eee;padding:4px} figcaption{font-size:11px;color:#555}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:8px}
.clip{border:1px solid #e0e0e0;border-radius:4px;padding:6px;font-size:12px} .clip img{display:block;max-width:100%}
.clip .key{font-family:monospace;font-size:11px} .clip .why{color:#b23c17;word-break:break-word}
.clip .all{color:#777;font-size:11px;word-break:break-word} .note{background:#fff8e1;border:1px solid #ffe082;padding:8px;font-size:13px}
.clip .cap{font-size:13px;color:#111;margin:4px 0 2px} .clip .info{color:#444;font-size:11px;word-break:break-word}
.clip .lvl{font-weight:600;margin-top:2px} .clip.kept{border-left:4px solid #2e7d32} .clip.dup{border-left:4px solid #e65100}
.dgroup{display:grid;grid-template-columns:1fr 1fr;gap:8px;margin:10px 0;padding:8px;border:1px solid #ddd;border-radius:4px;background:#fafafa}
.dgroup .clip{background:#fff} .dups{display:flex;flex-direction:column;gap:8px} td.cap{text-align:left;max-width:640px}
"""


def html_text(v) -> str:
    """``v`` as escaped HTML text (None: empty)."""
    return html.escape("" if v is None else str(v))


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _page(data: ReportData, sections: list[str]) -> str:
    nav = " · ".join(f'<a href="#{k}">{t}</a>' for k, t in (
        ("funnel", "funnel"), ("rules", "rules"), ("scores", "score histograms"), ("dedup", "duplicates"),
        ("balance", "concept balance"), ("sheet", "contact sheet")))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>reelflow report {html_text(data.run_id)}</title>'
            f"<style>{CSS}</style></head><body><div class=muted>{nav}</div>{''.join(sections)}</body></html>")


def _header_html(data: ReportData) -> str:
    s = data.summary
    clips, videos = s.get("clips", {}), s.get("videos", {})
    kpis = [
        ("inputs", s.get("inputs", 0)), ("videos accepted", videos.get("accepted", 0)),
        ("clips accepted", clips.get("accepted", 0)), ("clips rejected", clips.get("rejected", 0)),
        ("clips failed", clips.get("failed", 0)), ("hours kept", f"{float(s.get('hours') or 0):.3f}"),
    ]
    if data.dedup is not None:
        dups = (len(_duplicates(data)) if data.sample_rate >= 1.0 else
                next((f["rejected"] for f in data.funnel if f["stage"] == "dedup"), 0))
        kpis.insert(4, ("of which duplicates", dups))
    boxes = "".join(f"<div class=kpi><b>{html_text(v)}</b><span>{html_text(k)}</span></div>" for k, v in kpis)
    sampled = "" if data.sample_rate >= 1.0 else (
        f"<p class=note>A large run: the rules table, the histograms, the duplicates, the balance chart and "
        f"the contact sheet show a sample of {100 * data.sample_rate:.2g}% of the videos (a hash of the key; "
        f"{data.score.num_rows if data.score is not None else 0:,} scored clips), and the seconds below are "
        f"scaled up from it. The figures above and the funnel count every item.</p>")
    return (f"<h1>reelflow curation report — run <code>{html_text(data.run_id)}</code></h1>"
            f"<div class=muted>output <code>{html_text(data.output)}</code>; figures from {html_text(data.summary_source)}</div>"
            f"<div class=kpis>{boxes}</div>{sampled}{_encode_saving_html(data)}")


def encode_saving(score: pa.Table | None, extract: pa.Table | None) -> tuple[float, float]:
    """(seconds of candidate clips analysed, seconds encoded): clips are judged from the source and
    only those the rules and dedup keep are encoded (judge before encode)."""
    def total(t: pa.Table | None) -> float:
        if t is None or not t.num_rows:
            return 0.0
        return float(sum(d or 0.0 for d, st in zip(t.column("duration_s").to_pylist(), t.column("status").to_pylist())
                         if st != FAILED))
    return total(score), total(extract)


def _encode_saving_html(data: ReportData) -> str:
    if data.score is None:
        return ""
    analysed, encoded = (s / data.sample_rate for s in encode_saving(data.score, data.extract))
    share = f" ({100 * encoded / analysed:.0f}%)" if analysed else ""
    return (f"<p class=muted>Judged before encoding: {analysed:.1f} s of candidate clips analysed from their "
            f"sources, {encoded:.1f} s encoded{share}. Rejected and duplicate clips were never encoded.</p>")


def _funnel_html(data: ReportData) -> str:
    head = "<tr><th class=l>stage</th><th>rows in</th><th>passed</th><th>rejected</th><th>failed</th></tr>"
    body = "".join(
        f"<tr><td class=l>{html_text(f['stage'])}</td><td>{f['rows']}</td><td>{f['passed']}</td><td>{f['rejected']}</td><td>{f['failed']}</td></tr>"
        for f in data.funnel)
    note = "" if data.score is not None else (
        "<p class=note>This output has no <code>score</code> stage table (an older run, or scoring "
        "not run): the per-rule funnel, score histograms and rejection reasons per rule are skipped.</p>")
    return (f'<h2 id="funnel">Funnel per stage</h2>{note}<img alt="funnel per stage" src="{_funnel_chart(data.funnel)}">'
            f"<table>{head}{body}</table>")


def _rules_html(data: ReportData) -> str:
    if data.score is None:
        return '<h2 id="rules">Funnel per quality rule</h2><p class=muted>No score stage table.</p>'
    total = data.score.num_rows
    head = ("<tr><th class=l>rule</th><th class=l>score</th><th>min</th><th>max</th><th class=l>mode</th>"
            "<th>removed</th><th>failing (any)</th><th>remaining</th><th>% of scored</th></tr>")
    rows = []
    for r in data.rules:
        mode = "enforced" if r.enforcing else ("score only" if r.enabled else "disabled")
        if not r.in_table:
            mode += " (score not in table)"
        pct = f"{100.0 * r.remaining / total:.1f}%" if total else "—"
        rows.append(f"<tr class={'on' if r.enforcing else 'off'}><td class=l>{html_text(r.rule)}</td><td class=l><code>{html_text(r.column)}</code></td>"
                    f"<td>{_fmt(r.min)}</td><td>{_fmt(r.max)}</td><td class=l>{html_text(mode)}</td><td>{r.removed}</td>"
                    f"<td>{r.failing}</td><td>{r.remaining}</td><td>{pct}</td></tr>")
    known = {r.rule for r in data.rules}
    extra = Counter(x for x in data.first_rule if x and x not in known)
    note = "".join(f"<p class=note>{n} clip(s) rejected by <code>{html_text(k)}</code>, which the policy does not list.</p>"
                   for k, n in extra.items())
    return (f'<h2 id="rules">Funnel per quality rule</h2><p class=muted>{total} clip(s) entered the score stage; '
            "a clip counts against the first enforcing rule it broke (rules in policy order), "
            "“failing (any)” counts every rule it broke, score-only ones included, among the rules it was "
            "scored on (lazy scoring gives a clip the cheap rules rejected no flow or OCR scores).</p>"
            f'<img alt="retention per rule" src="{_rules_chart(data)}"><table>{head}{"".join(rows)}</table>{note}')


def _histograms_html(data: ReportData) -> str:
    title = '<h2 id="scores">Score histograms</h2>'
    if data.score is None:
        return title + "<p class=muted>No score stage table.</p>"
    status = data.score.column("status").to_pylist()
    figs, skipped, constant = [], [], []
    ruled = {r.column for r in data.rules}
    for col in _score_columns(data):
        values = np.array([np.nan if v is None else float(v) for v in data.score.column(col).to_pylist()], dtype=float)
        values[np.array([s == FAILED for s in status], dtype=bool)] = np.nan  # failed rows have no real scores
        finite = values[np.isfinite(values)]
        if not finite.size:
            skipped.append(col)
        elif finite.min() == finite.max() and col not in ruled:
            constant.append(f"{col} = {_fmt(float(finite[0]))}")  # a one-bar chart says nothing more
        else:
            figs.append(_hist_figure(data, col, values, _hist_groups(data, col, status)))
    key = "".join(f'<span style="color:{c}">■</span> {t} &nbsp; ' for c, t in (
        (C_KEPT, "kept"), (C_REJ, "rejected by a rule on this score"), (C_REJ_OTHER, "rejected by another rule")))
    lines = "thresholds: solid = enforced, dashed = score only, dotted = disabled"
    note = f"<p class=muted>Same value on every scored clip: {html_text(', '.join(constant))}</p>" if constant else ""
    note += f"<p class=muted>No finite value (skipped): {html_text(', '.join(skipped))}</p>" if skipped else ""
    return title + f"<p class=muted>{key}<br>{lines}</p><div class=grid>{''.join(figs)}</div>{note}"


def _hist_groups(data: ReportData, col: str, status: list[str]) -> list[str]:
    """Per score row: kept, rejected by a rule reading ``col`` ("this"), rejected by another rule, failed."""
    rule_col = {r.rule: r.column for r in data.rules}
    out = []
    for s, rule in zip(status, data.first_rule):
        if s == REJECTED:
            out.append("this" if rule_col.get(rule or "") == col else "other")
        else:
            out.append("kept" if s == OK else "failed")
    return out


def _hist_figure(data: ReportData, col: str, values: np.ndarray, groups: list[str]) -> str:
    counts = Counter(g for g, v in zip(groups, values) if np.isfinite(v))
    nan = int((~np.isfinite(values)).sum())
    lines = [f"{html_text(r.rule)} {_bounds(r)}{'' if r.enforcing else ' (not enforced)'}" for r in data.rules if r.column == col]
    cap = (f"kept {counts['kept']}, rejected here {counts['this']}, elsewhere {counts['other']}; {nan} not scored (failed, not applicable, or skipped by lazy scoring)"
           + ("; thresholds: " + "; ".join(lines) if lines else ""))
    return f'<figure><img alt="{html_text(col)}" src="{_hist_chart(data, col, values, groups)}"><figcaption>{cap}</figcaption></figure>'


def _bounds(r: RuleStat) -> str:
    parts = ([f"≥ {_fmt(r.min)}"] if r.min is not None else []) + ([f"&lt; {_fmt(r.max)}"] if r.max is not None else [])
    return " and ".join(parts)


def _score_columns(data: ReportData) -> list[str]:
    """Known score columns in the table, then any other column a rule reads."""
    assert data.score is not None
    names = data.score.column_names
    cols = [c for c in SCORE_COLUMNS if c in names]
    cols += [r.column for r in data.rules if r.column in names and r.column not in cols]
    return list(dict.fromkeys(cols))


def _contact_html(storage: Storage, data: ReportData) -> str:
    title = '<h2 id="sheet">Contact sheet</h2>'
    kept_all, head = _kept_rows(data)
    kept = _spread(kept_all)
    out = [title, f"<h3>{html_text(head)} ({len(kept)} of {len(kept_all)} shown)</h3>",
           "<p class=muted>Caption, camera motion, concept cluster and sampling weight as written to the shards.</p>"
           if data.shard is not None else "", _sheet(storage, data, kept, with_reason=False)]
    if data.score is None:
        return "".join(out) + "<p class=muted>No score stage table: rejected clips have no clip file to show.</p>"
    rows = _rows(data.score)
    groups = _rejected_sample(rows, data)
    n_rej = sum(r["status"] == REJECTED for r in rows)
    out.append(f"<h3>Rejected ({sum(len(v) for v in groups.values())} of {n_rej}), by rule</h3>")
    if not groups:
        out.append("<p class=muted>None.</p>")
    for rule, sample in groups.items():
        out.append(f"<h3><code>{html_text(rule)}</code></h3>{_sheet(storage, data, sample, with_reason=True)}")
    if data.dedup is not None:
        n_dup = len(_duplicates(data))
        out.append(f"<h3>Removed as duplicates ({n_dup})</h3><p class=muted>"
                   + ('Shown beside the clip each group kept, under <a href="#dedup">Duplicates</a>.' if n_dup else "None.")
                   + "</p>")
    lost = _lost_after_scoring(data, rows)
    if lost:
        out.append(f"<h3>Lost after scoring ({min(len(lost), SAMPLE_PER_GROUP)} of {len(lost)}): passed the rules and "
                   "dedup, but not in the shard table</h3>" + _sheet(storage, data, _spread(lost), with_reason=True))
    return "".join(out)


def _lost_after_scoring(data: ReportData, score_rows: list[dict]) -> list[dict]:
    """Clips that passed scoring and dedup but are not ok in the shard table, with the reason why."""
    if data.shard is None:
        return []
    later = [(st, _by_key(t)) for st, t in (("shard", data.shard), ("balance", data.balance),
                                            ("caption", data.caption), ("extract", data.extract),
                                            ("dedup", data.dedup)) if t is not None]
    out = []
    for r in score_rows:
        if r["status"] != OK:
            continue
        seen = [(st, rows[r["item_id"]]) for st, rows in later if r["item_id"] in rows]
        if seen and seen[0][0] == "shard" and seen[0][1]["status"] == OK:
            continue  # kept
        if any(st == "dedup" and x["status"] == REJECTED and x.get("duplicate_of") for st, x in seen):
            continue  # a duplicate: shown under Duplicates
        bad = next(((st, x) for st, x in seen if x["status"] != OK), None)
        if bad:
            why = f"{bad[0]} {bad[1]['status']}: {bad[1].get('reason') or 'no reason recorded'}"
        else:
            why = "not in the shard table; last seen in " + (seen[0][0] if seen else "score")
        out.append({**r, "reason": why, "rule_failures": None})
    return out


def _spread(rows: list[dict], n: int = SAMPLE_PER_GROUP) -> list[dict]:
    """A deterministic, evenly spread sample (sorted by key) so reruns show the same clips."""
    rows = sorted(rows, key=lambda r: r["item_id"])
    if len(rows) <= n:
        return rows
    return [rows[int(i * len(rows) / n)] for i in range(n)]


def _rejected_sample(rows: list[dict], data: ReportData) -> dict[str, list[dict]]:
    """Up to SAMPLE_PER_GROUP rejected clips, shared round-robin across rules (policy order)."""
    by: dict[str, list[dict]] = {}
    for r, rule in zip(rows, data.first_rule):
        if r["status"] == REJECTED:
            by.setdefault(rule or UNATTRIBUTED, []).append(r)
    order = [r.rule for r in data.rules if r.rule in by] + sorted(k for k in by if k not in {r.rule for r in data.rules})
    pools = {k: _spread(by[k], len(by[k])) for k in order}
    picked: dict[str, list[dict]] = {k: [] for k in order}
    budget = SAMPLE_PER_GROUP
    while budget and any(pools.values()):
        for k in order:
            if budget and pools[k]:
                picked[k].append(pools[k].pop(0))
                budget -= 1
    return {k: v for k, v in picked.items() if v}


def _sheet(storage: Storage, data: ReportData, rows: list[dict], with_reason: bool) -> str:
    if not rows:
        return "<p class=muted>None.</p>"
    cards = (_clip_card(storage, data, r, reason=with_reason, info=not with_reason) for r in rows)
    return "<div class=sheet>" + "".join(cards) + "</div>"


def _clip_card(storage: Storage, data: ReportData, r: dict, *, reason: bool = False, info: bool = False,
               fails: bool = True, head: str = "", cls: str = "") -> str:
    """One clip: its thumbnail strip, key and size, then ``head`` (HTML), the reason it was rejected
    (``reason``), what later stages said about it (``info``: caption, camera, cluster, weight) and the
    rules it broke (``fails``)."""
    if not r.get("clip_uri") and (enc := data.encoded(r["item_id"])):  # judged, kept, then encoded
        r = {**r, "clip_uri": enc["clip_uri"], "width": enc.get("width"), "height": enc.get("height")}
    img = _thumb_placeholder(storage, data, r)
    if r.get("clip_uri"):
        meta = f"{_fmt(r.get('duration_s'))} s, {_fmt(r.get('width'))}×{_fmt(r.get('height'))}"
    else:  # judged from the source, never encoded
        meta = f"{_fmt(r.get('duration_s'))} s of a {_fmt(r.get('src_width'))}×{_fmt(r.get('src_height'))} source, not encoded"
    text = f"<div class=key>{html_text(r['item_id'])} <span class=muted>({html_text(meta)})</span></div>{head}"
    if reason:
        text += f"<div class=why>{html_text(r.get('reason') or r.get('rule_failures') or 'no reason recorded')}</div>"
    if info:
        text += _info_html(r, data)
    rf = r.get("rule_failures")
    if fails and rf and rf != r.get("reason"):  # kept clips can still break score-only rules
        text += f"<div class=all>{'all failures' if reason else 'score-only failures'}: {html_text(rf)}</div>"
    return f"<div class='clip {cls}'>{img}{text}</div>"


def _info_html(r: dict, data: ReportData) -> str:
    """Caption, camera motion, concept cluster and sampling weight of a kept clip (what is known)."""
    out = ""
    if r.get("caption"):
        out += f"<div class=cap>{html_text(r['caption'])}</div>"
    elif data.caption is not None:
        out += "<div class=all>no caption</div>"
    facts = []
    if r.get("camera_motion"):
        conf = r.get("camera_confidence")
        facts.append(f"camera: {r['camera_motion']}" + (f", conf {conf:.2f}" if conf is not None and math.isfinite(conf) else ""))
    if r.get("cluster_id") is not None:
        size = r.get("cluster_size")
        facts.append(f"cluster {r['cluster_id']}" + (f" ({size} clip{'s' if size != 1 else ''})" if size is not None else ""))
    if r.get("sampling_weight") is not None:
        facts.append(f"weight {r['sampling_weight']:.3f}")
    if facts:
        out += f"<div class=info>{html_text(' · '.join(facts))}</div>"
    if r.get("tags"):
        tags = [t.strip() for t in str(r["tags"]).split(";") if t.strip()]
        out += f"<div class=all>tags: {html_text('; '.join(tags[:3]))}{'; …' if len(tags) > 3 else ''}</div>"
    if r.get("transcript"):
        lang = f" ({r['transcript_language']})" if r.get("transcript_language") else ""
        out += f"<div class=all>transcript{html_text(lang)}: “{html_text(_clip_text(r['transcript'], 160))}”</div>"
    return out


def _fmt3(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) else "—"


def _clip_text(s: str, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


# -- duplicates and concept balance -------------------------------------------------------------


def _similarity(level: str | None, sim: float | None) -> str:
    if level == "exact":
        return SIMILARITY_UNIT["exact"]
    unit = SIMILARITY_UNIT.get(level or "", "similarity")
    return f"{unit} {sim:.3f}" if sim is not None and math.isfinite(sim) else unit


def _dedup_html(storage: Storage, data: ReportData) -> str:
    title = '<h2 id="dedup">Duplicates</h2>'
    if data.dedup is None:
        return title + "<p class=muted>No dedup stage table (an older run, or dedup not run): skipped.</p>"
    rows = _rows(data.dedup)
    dups = _duplicates(data)
    failed = sum(r["status"] == FAILED for r in rows)
    levels = list(DEDUP_LEVELS) + sorted({r.get("dedup_level") or "?" for r in dups} - set(DEDUP_LEVELS))
    body = []
    for lvl in levels:
        sims = np.array([r.get("dedup_similarity") for r in dups if (r.get("dedup_level") or "?") == lvl
                         and r.get("dedup_similarity") is not None], dtype=float)
        n = sum((r.get("dedup_level") or "?") == lvl for r in dups)
        rng = [f"{v:.3f}" for v in (sims.min(), np.median(sims), sims.max())] if sims.size and lvl != "exact" else ["—"] * 3
        body.append(f"<tr><td class=l>{html_text(lvl)}</td><td>{n}</td>" + "".join(f"<td>{v}</td>" for v in rng)
                    + f"<td class=l>{html_text(SIMILARITY_UNIT.get(lvl, ''))}</td></tr>")
    head = ("<tr><th class=l>level</th><th>removed</th><th>similarity min</th><th>median</th><th>max</th>"
            "<th class=l>similarity is</th></tr>")
    groups = _dup_groups(dups)
    intro = (f"<p class=muted>{len(rows)} clip(s) passed the quality rules and entered dedup; removed as duplicates: "
             f"{len(dups)}, in {len(groups)} group(s) (each level runs on the survivors of the one before)"
             + (f"; {failed} failed" if failed else "") + ".</p>")
    out = [title, intro, f"<table>{head}{''.join(body)}</table>"]
    if not groups:
        return "".join(out)
    shown = _pick_groups(groups)
    out.append(f"<h3>Duplicate groups ({len(shown)} of {len(groups)} shown)</h3><p class=muted>The clip each group "
               "kept (left) beside the clips dropped as its duplicates (right), with level, similarity to the kept "
               "clip and reason; groups alternate between levels, borderline (lowest similarity) first.</p>")
    by_key = {r["item_id"]: r for r in rows}
    score = _by_key(data.score)
    in_shards = {r["item_id"] for r in _rows(data.shard) if r["status"] == OK} if data.shard is not None else None
    for kept_key, members in shown:
        out.append(_dup_group_html(storage, data, kept_key, members, by_key.get(kept_key) or score.get(kept_key), in_shards))
    return "".join(out)


def _dup_groups(dups: list[dict]) -> dict[str, list[dict]]:
    """Kept clip -> the clips dropped as its duplicates, lowest similarity first."""
    groups: dict[str, list[dict]] = {}
    for r in dups:
        groups.setdefault(r["duplicate_of"], []).append(r)
    for members in groups.values():
        members.sort(key=lambda r: (_sim_key(r), r["item_id"]))
    return groups


def _sim_key(r: dict) -> float:
    s = r.get("dedup_similarity")
    return math.inf if s is None or not math.isfinite(s) else float(s)


def _pick_groups(groups: dict[str, list[dict]]) -> list[tuple[str, list[dict]]]:
    """Up to DUP_GROUPS groups, round-robin over the levels, each level's borderline groups first."""
    rank = {lvl: i for i, lvl in enumerate(DEDUP_LEVELS)}
    by_level: dict[str, list[tuple[str, list[dict]]]] = {}
    for k, members in groups.items():
        lvl = max((m.get("dedup_level") or "?" for m in members), key=lambda v: rank.get(v, len(rank)))
        by_level.setdefault(lvl, []).append((k, members))
    order = sorted(by_level, key=lambda v: (rank.get(v, len(rank)), v))
    pools = {lvl: sorted(by_level[lvl], key=lambda g: (_sim_key(g[1][0]), -len(g[1]), g[0])) for lvl in order}
    picked: list[tuple[str, list[dict]]] = []
    while len(picked) < DUP_GROUPS and any(pools.values()):
        for lvl in order:
            if pools[lvl] and len(picked) < DUP_GROUPS:
                picked.append(pools[lvl].pop(0))
    return picked


def _dup_group_html(storage: Storage, data: ReportData, kept_key: str, members: list[dict], kept: dict | None,
                    in_shards: set[str] | None) -> str:
    n = len(members)
    label = f"kept · {n} duplicate{'s' if n != 1 else ''} dropped in its favour"
    if kept is None:
        left = (f"<div class='clip kept'><div class=key>{html_text(kept_key)}</div><div class=lvl>{html_text(label)}</div>"
                "<div class=why>not in the dedup or score table</div></div>")
    else:
        head = f"<div class=lvl style='color:{C_KEPT}'>{html_text(label)}</div>"
        if kept["status"] != OK:  # a clip kept at one level can be dropped at a later one
            head += f"<div class=why>itself {html_text(kept['status'])}: {html_text(kept.get('reason'))}</div>"
        elif in_shards is not None:
            head += f"<div class=all>{'in the shards' if kept_key in in_shards else 'not in the shards'}</div>"
        left = _clip_card(storage, data, kept, fails=False, head=head, cls="kept")
    cards = [_clip_card(storage, data, m, reason=True, fails=False, cls="dup",
                        head=f"<div class=lvl style='color:{C_REJ}'>{html_text(m.get('dedup_level'))} · "
                             f"{html_text(_similarity(m.get('dedup_level'), m.get('dedup_similarity')))}</div>")
             for m in members[:DUPS_PER_GROUP]]
    rest = members[DUPS_PER_GROUP:]
    if rest:
        keys = ", ".join(m["item_id"] for m in rest[:10]) + (", …" if len(rest) > 10 else "")
        cards.append(f"<p class=muted>+{len(rest)} more: <code>{html_text(keys)}</code></p>")
    return f"<div class=dgroup><div>{left}</div><div class=dups>{''.join(cards)}</div></div>"


def _balance_html(data: ReportData) -> str:
    title = '<h2 id="balance">Concept balance</h2>'
    if data.balance is None:
        return title + "<p class=muted>No balance stage table (an older run, or balancing not run): skipped.</p>"
    rows = [r for r in _rows(data.balance) if r["status"] == OK]
    clustered = [r for r in rows if r.get("cluster_id") is not None]
    if not clustered:
        w = {round(float(r["sampling_weight"]), 6) for r in rows if r.get("sampling_weight") is not None}
        what = "every sampling weight is 1" if w <= {1.0} else f"sampling weights {html_text(sorted(w))}"
        return title + f"<p class=muted>No concept clusters (balancing off, or no embeddings): {what}.</p>"
    sizes = Counter(r["cluster_id"] for r in clustered)
    weights: dict[int, list[float]] = {}
    captions: dict[int, str] = {}
    for r in sorted(clustered, key=lambda r: r["item_id"]):
        if r.get("sampling_weight") is not None:
            weights.setdefault(r["cluster_id"], []).append(float(r["sampling_weight"]))
        if r.get("caption") and r["cluster_id"] not in captions:
            captions[r["cluster_id"]] = r["caption"]
    clusters = sorted(((c, n, float(np.mean(weights[c])) if c in weights else math.nan) for c, n in sizes.items()),
                      key=lambda c: (-c[1], c[0]))
    total = sum(n for _, n, _ in clusters)
    mass = {c: n * w for c, n, w in clusters if math.isfinite(w)}
    all_mass = sum(mass.values()) or 1.0
    big = clusters[0]
    intro = (f"<p class=muted>{total} clip(s) in {len(clusters)} concept cluster(s) (k-means over the video-text "
             "embeddings); each clip is sampled with weight ∝ 1/√(cluster size), mean 1 (Movie Gen). Nothing is "
             f"dropped. The largest cluster ({big[0]}) holds {100 * big[1] / total:.1f}% of the clips and "
             f"{100 * mass.get(big[0], 0.0) / all_mass:.1f}% of the sampling mass.</p>")
    if len(rows) > total:
        intro += f"<p class=muted>{len(rows) - total} clip(s) have no cluster.</p>"
    if len(clusters) > BALANCE_TABLE_ROWS:
        k = BALANCE_TABLE_ROWS * 2 // 3
        listed = clusters[:k] + [None] + clusters[-(BALANCE_TABLE_ROWS - k):]
    else:
        listed = list(clusters)
    head = ("<tr><th>cluster</th><th>clips</th><th>weight</th><th>% of clips</th><th>% of sampling mass</th>"
            "<th class=l>a caption from it</th></tr>")
    body = "".join(
        f"<tr><td colspan=6 class=l>… {len(clusters) - BALANCE_TABLE_ROWS} more</td></tr>" if c is None else
        f"<tr><td>{c[0]}</td><td>{c[1]}</td><td>{_fmt3(c[2])}</td><td>{100 * c[1] / total:.1f}%</td>"
        f"<td>{100 * mass.get(c[0], 0.0) / all_mass:.1f}%</td><td class=cap>{html_text(_clip_text(captions.get(c[0], ''), 140))}</td></tr>"
        for c in listed)
    return (title + intro + f'<img alt="concept clusters and sampling weights" src="{_balance_chart(clusters)}">'
            f"<table>{head}{body}</table>")
