"""One self-contained HTML report of a run: ``OUTPUT/report.html``.

For a data engineer opening it in a browser: the header (inputs, clips kept, hours), the funnel
per stage and per quality rule (Movie Gen's retention table, in policy order), a histogram per
quality score with the policy's thresholds drawn on it, and a contact sheet of kept and rejected
clips with the reason each was rejected. Charts are matplotlib PNGs and thumbnails JPEGs, both
embedded as base64 data URIs, so the report is one file that can be mailed or opened from S3.

Works on older outputs without a ``score`` stage table (no histograms, rule funnel or reasons
per rule then), on runs with zero clips, and with OUTPUT on S3 (written with ``Storage``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from curation.ledger import build_ledger
from curation.records import CLIP, FAILED, OK, REJECTED, SCORE_COLUMNS, STAGE_SCHEMAS, VIDEO
from curation.stage_store import StageStore
from curation.storage import Storage, join

REPORT_STAGES = ["ingest", "probe", "filter", "shots", "clips", "extract", "score", "dedup", "caption", "balance", "shard"]
SCORE_STAGE = "score"
SAMPLE_PER_GROUP = 12  # kept clips, and rejected clips, shown in the contact sheet
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
    shard: pa.Table | None  # the kept clips of older outputs, which have no score table
    rules: list[RuleStat] = field(default_factory=list)
    first_rule: list[str | None] = field(default_factory=list)  # per score row: the rule that rejected it


def write_report(storage: Storage, output: str, store: StageStore, policy_rules: list[dict], run_id: str) -> str:
    """Build ``OUTPUT/report.html`` from the stage tables and return its URI."""
    tables = {st: _read_stage(store, st) for st in REPORT_STAGES}
    data = ReportData(
        run_id=run_id, output=output, funnel=_funnel(tables), score=tables[SCORE_STAGE], shard=tables["shard"],
        **_summary(storage, output, store, tables),
    )
    if data.score is not None:
        data.rules = [_rule_stat(r, data.score) for r in policy_rules]
        data.first_rule = _attribute(data.score, data.rules)
        _count_rules(data)
    page = _page(data, [
        _header_html(data), _funnel_html(data), _rules_html(data), _histograms_html(data), _contact_html(storage, data),
    ])
    uri = join(output, "report.html")
    storage.write_bytes(uri, page.encode("utf-8"))
    return uri


# -- data -------------------------------------------------------------------------------------


def _read_stage(store: StageStore, stage: str) -> pa.Table | None:
    """The stage table, or None when no part was ever written (e.g. no score stage in older outputs)."""
    parts = store.parts(stage)
    if not parts:
        return None
    if stage in STAGE_SCHEMAS:
        return store.read(stage)
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
    led_uri = join(output, "ledger.parquet")
    if storage.exists(led_uri):
        ledger, source = pq.read_table(io.BytesIO(storage.read_bytes(led_uri))), "ledger.parquet"
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


def _png(fig: Figure) -> str:
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
    return _png(fig)


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
    return _png(fig)


def _hist_chart(data: ReportData, col: str, values: np.ndarray, groups: list[str]) -> str:
    fig = Figure(figsize=(4.4, 2.7), dpi=90, layout="constrained")
    ax = fig.add_subplot()
    finite = np.isfinite(values)
    bins = np.histogram_bin_edges(values[finite], bins=24)
    if bins[0] == bins[-1]:  # one distinct value: give the bar a width
        bins = np.linspace(bins[0] - 0.5, bins[0] + 0.5, 3)
    stacks = [values[finite & (np.array(groups) == g)] for g in ("kept", "this", "other")]
    ax.hist(stacks, bins=bins, stacked=True, color=[C_KEPT, C_REJ, C_REJ_OTHER])
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
    return _png(fig)


# -- thumbnails -------------------------------------------------------------------------------


def _thumb_strip(storage: Storage, uri: str) -> str:
    """THUMB_FRAMES frames at the centres of equal segments of the clip, side by side, as a JPEG data URI."""
    path = storage.localize(uri)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        dur = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / av.time_base
        targets = [(i + 0.5) / THUMB_FRAMES * dur for i in range(THUMB_FRAMES)]
        frames = _frames_at(c.decode(s), targets)
    if not frames:
        raise ValueError("no video frame decoded")
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
"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _page(data: ReportData, sections: list[str]) -> str:
    nav = " · ".join(f'<a href="#{k}">{t}</a>' for k, t in (
        ("funnel", "funnel"), ("rules", "rules"), ("scores", "score histograms"), ("sheet", "contact sheet")))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>reelflow report {_e(data.run_id)}</title>'
            f"<style>{CSS}</style></head><body><div class=muted>{nav}</div>{''.join(sections)}</body></html>")


def _header_html(data: ReportData) -> str:
    s = data.summary
    clips, videos = s.get("clips", {}), s.get("videos", {})
    kpis = [
        ("inputs", s.get("inputs", 0)), ("videos accepted", videos.get("accepted", 0)),
        ("clips accepted", clips.get("accepted", 0)), ("clips rejected", clips.get("rejected", 0)),
        ("clips failed", clips.get("failed", 0)), ("hours kept", f"{float(s.get('hours') or 0):.3f}"),
    ]
    boxes = "".join(f"<div class=kpi><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in kpis)
    return (f"<h1>reelflow curation report — run <code>{_e(data.run_id)}</code></h1>"
            f"<div class=muted>output <code>{_e(data.output)}</code>; figures from {_e(data.summary_source)}</div>"
            f"<div class=kpis>{boxes}</div>")


def _funnel_html(data: ReportData) -> str:
    head = "<tr><th class=l>stage</th><th>rows in</th><th>passed</th><th>rejected</th><th>failed</th></tr>"
    body = "".join(
        f"<tr><td class=l>{_e(f['stage'])}</td><td>{f['rows']}</td><td>{f['passed']}</td><td>{f['rejected']}</td><td>{f['failed']}</td></tr>"
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
        rows.append(f"<tr class={'on' if r.enforcing else 'off'}><td class=l>{_e(r.rule)}</td><td class=l><code>{_e(r.column)}</code></td>"
                    f"<td>{_fmt(r.min)}</td><td>{_fmt(r.max)}</td><td class=l>{_e(mode)}</td><td>{r.removed}</td>"
                    f"<td>{r.failing}</td><td>{r.remaining}</td><td>{pct}</td></tr>")
    known = {r.rule for r in data.rules}
    extra = Counter(x for x in data.first_rule if x and x not in known)
    note = "".join(f"<p class=note>{n} clip(s) rejected by <code>{_e(k)}</code>, which the policy does not list.</p>"
                   for k, n in extra.items())
    return (f'<h2 id="rules">Funnel per quality rule</h2><p class=muted>{total} clip(s) entered the score stage; '
            "a clip counts against the first enforcing rule it broke (rules in policy order), "
            "“failing (any)” counts every rule it broke, score-only ones included.</p>"
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
    note = f"<p class=muted>Same value on every scored clip: {_e(', '.join(constant))}</p>" if constant else ""
    note += f"<p class=muted>No finite value (skipped): {_e(', '.join(skipped))}</p>" if skipped else ""
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
    lines = [f"{_e(r.rule)} {_bounds(r)}{'' if r.enforcing else ' (not enforced)'}" for r in data.rules if r.column == col]
    cap = (f"kept {counts['kept']}, rejected here {counts['this']}, elsewhere {counts['other']}; {nan} NaN/failed"
           + ("; thresholds: " + "; ".join(lines) if lines else ""))
    return f'<figure><img alt="{_e(col)}" src="{_hist_chart(data, col, values, groups)}"><figcaption>{cap}</figcaption></figure>'


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
    if data.score is None:
        kept = _spread([r for r in data.shard.to_pylist() if r["status"] == OK]) if data.shard is not None else []
        return (title + f"<h3>Kept ({len(kept)} shown)</h3>{_sheet(storage, kept, with_reason=False)}"
                "<p class=muted>No score stage table: rejected clips have no clip file to show.</p>")
    rows = data.score.to_pylist()
    kept = _spread([r for r in rows if r["status"] == OK])
    out = [title, f"<h3>Kept ({len(kept)} of {sum(r['status'] == OK for r in rows)})</h3>",
           _sheet(storage, kept, with_reason=False)]
    groups = _rejected_sample(rows, data)
    n_rej = sum(r["status"] == REJECTED for r in rows)
    out.append(f"<h3>Rejected ({sum(len(v) for v in groups.values())} of {n_rej}), by rule</h3>")
    if not groups:
        out.append("<p class=muted>None.</p>")
    for rule, sample in groups.items():
        out.append(f"<h3><code>{_e(rule)}</code></h3>{_sheet(storage, sample, with_reason=True)}")
    return "".join(out)


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


def _sheet(storage: Storage, rows: list[dict], with_reason: bool) -> str:
    if not rows:
        return "<p class=muted>None.</p>"
    return "<div class=sheet>" + "".join(_clip_card(storage, r, with_reason) for r in rows) + "</div>"


def _clip_card(storage: Storage, r: dict, with_reason: bool) -> str:
    try:
        img = f'<img alt="{_e(r["item_id"])}" src="{_thumb_strip(storage, r["clip_uri"])}">'
    except Exception as e:  # a missing or broken clip must not lose the whole report
        img = f"<div class=why>thumbnail unavailable: {_e(type(e).__name__)}: {_e(e)}</div>"
    meta = f"{_fmt(r.get('duration_s'))} s, {_fmt(r.get('width'))}×{_fmt(r.get('height'))}"
    text = f"<div class=key>{_e(r['item_id'])} <span class=muted>({_e(meta)})</span></div>"
    if with_reason:
        text += f"<div class=why>{_e(r.get('reason') or r.get('rule_failures') or 'no reason recorded')}</div>"
    fails = r.get("rule_failures")
    if fails and fails != r.get("reason"):  # kept clips can still break score-only rules
        text += f"<div class=all>{'all failures' if with_reason else 'score-only failures'}: {_e(fails)}</div>"
    return f"<div class=clip>{img}{text}</div>"
