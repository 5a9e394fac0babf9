"""One self-contained HTML report of a training run: ``OUTPUT/report.html``.

For an ML engineer opening it in a browser after `reelflow train`: the header (model size, stages,
workers, precision, steps, wall time, the final checkpoint and how to sample from it), the schedule
table (what each stage was asked to do beside what it did), the loss curves of every stage (train
loss, validation points, learning rate), the whole progressive schedule on one axis of cumulative
steps with the stage hand-offs marked, and the throughput per stage (samples/s, share of time spent
waiting for data). Charts are matplotlib PNGs embedded as base64 data URIs, as in the curation
report (`curation/report.py`, whose helpers this reuses), so the report is one file that can be
mailed or opened from S3.

Works on partial runs: a stage without metric rows, or without an outcome, says so; with no rows at
all the report says there are no metrics and still shows the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import blended_transform_factory

from reelflow.curation.report import CSS as CURATION_CSS
from reelflow.curation.report import figure_data_uri, html_text
from reelflow.curation.storage import Storage, join
from reelflow.training.schedule import Schedule, StageSpec
from reelflow.training.val_metrics import LOSS_PREFIX, bucket_losses, is_bucket_key

MODEL_FILE = "model.pt"  # OUTPUT/model.pt: the last stage's checkpoint (training.trainer.copy_final)
INPUT_BOUND = 0.3  # mean share of a stage's time spent waiting for data above which it is input-bound
LOG_SPAN = 10.0  # a loss axis spanning more than this factor is drawn log-scaled
PANEL_COLS = 3  # panels per row of the per-stage loss figure
LR_POINTS = 400  # the planned lr curve is drawn with at most this many points (moviegen has 100k+ steps)

# Colours: train loss, the two validation kinds, the learning rate; stages get the tab10 cycle.
C_TRAIN, C_LR, C_RECON = "#1565c0", "#9e9e9e", "#7e57c2"
C_VAL = {"val_loss_image": "#e65100", "val_loss_video": "#2e7d32"}
C_VAL_OTHER = "#ad1457"
MARKER_VAL = {"val_loss_image": "s", "val_loss_video": "D"}
LABEL_BOX = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.0}  # names stay legible over lines
STAGE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"]

CSS = CURATION_CSS + """
img.chart{max-width:100%;height:auto;display:block;margin:6px 0}
pre.cmd{background:#f5f5f5;border:1px solid #ddd;border-radius:4px;padding:8px 10px;font-size:13px;overflow-x:auto}
td.warn{color:#b23c17;font-weight:600} th.grp{background:#e8eaf6;text-align:center} tr.nodata td{color:#888}
td.nw{white-space:nowrap} .wide{overflow-x:auto} table.sched{font-size:12px} table.sched th,table.sched td{padding:3px 6px}
"""


@dataclass
class StageView:
    """One schedule stage with what the run produced for it."""

    index: int
    spec: StageSpec
    outcome: dict | None
    rows: list[dict] = field(default_factory=list)  # its metric rows, by step
    offset: int = 0  # steps of the stages before it, for the whole-schedule axis

    @property
    def span(self) -> int:
        """Steps this stage covers on the whole-schedule axis: planned, or more if more were logged."""
        return max([self.spec.iterations] + [int(r["step"]) for r in self.rows])

    @property
    def train(self) -> list[dict]:
        return [r for r in self.rows if r.get("split", "train") == "train" and _f(r.get("loss")) is not None]

    def val_keys(self) -> list[str]:
        """The pooled validation losses (one per kind); the per-bucket ones have their own table."""
        keys = {k for r in self.rows for k, v in r.items()
                if k.startswith("val_loss") and not is_bucket_key(k) and _f(v) is not None}
        return sorted(keys, key=lambda k: (k not in C_VAL, k))

    def last(self, key: str) -> float | None:
        """The last finite value of ``key`` over the rows."""
        return next((_f(r.get(key)) for r in reversed(self.rows) if _f(r.get(key)) is not None), None)

    @property
    def title(self) -> str:
        return f"{self.spec.name} ({self.spec.model}, {self.spec.resolution} px)"


def write_training_report(storage: Storage, output: str, schedule: Schedule, outcomes: list[dict],
                          rows: list[dict], evals: list[dict] | None = None) -> str:
    """Writes OUTPUT/report.html and returns its URI (curation.storage.join(output, "report.html"))."""
    stages, stray = _stage_views(schedule, outcomes, rows)
    sections = [_header_html(output, schedule, stages), _schedule_html(stages)]
    if evals and any(evals):
        sections.append(_eval_html(storage, output, schedule, evals))
    if any(s.train for s in stages):
        sections += [_loss_html(stages), _bucket_html(stages), _whole_html(stages), _throughput_html(stages)]
    else:
        sections.append('<h2 id="loss">Loss curves</h2><p class=note>No metrics: there are no metric rows for this '
                        "run (no stage logged a step yet, or metrics.jsonl is missing), so there are no loss curves "
                        "or throughput figures.</p>")
    if stray:
        names = sorted({str(r.get("stage")) for r in stray})
        sections.append(f"<p class=note>{len(stray)} metric row(s) name no stage of this schedule and are left out: "
                        f"{html_text(', '.join(names))}.</p>")
    page = _page(schedule, sections)
    uri = join(output, "report.html")
    storage.write_bytes(uri, page.encode("utf-8"))
    return uri


# -- data -------------------------------------------------------------------------------------


def _f(v) -> float | None:
    """``v`` as a finite float, else None (rows may hold None, NaN or be missing the key)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _stage_views(schedule: Schedule, outcomes: list[dict], rows: list[dict]) -> tuple[list[StageView], list[dict]]:
    """Rows and outcomes matched to the schedule's stages (by index, else by name); rows that match
    no stage are returned apart so the report can say so rather than draw them in the wrong place."""
    by_name = {s.name: i for i, s in enumerate(schedule.stages)}
    views = [StageView(i, s, None) for i, s in enumerate(schedule.stages)]
    for o in outcomes or []:
        i = o.get("index")
        if not (isinstance(i, int) and 0 <= i < len(views) and views[i].spec.name == o.get("name", views[i].spec.name)):
            i = by_name.get(o.get("name"))
        if i is not None:
            views[i].outcome = o
    stray = []
    for r in rows or []:
        i = r.get("stage_index")
        if not (isinstance(i, int) and 0 <= i < len(views) and views[i].spec.name == r.get("stage", views[i].spec.name)):
            i = by_name.get(r.get("stage"))
        if i is None or _f(r.get("step")) is None:
            stray.append(r)
        else:
            views[i].rows.append(r)
    offset = 0
    for v in views:
        v.rows.sort(key=lambda r: float(r["step"]))
        v.offset = offset
        offset += v.span
    return views, stray


def _rate(s: StageView) -> float | None:
    """Samples/s over the whole stage: samples seen / time in the loop (not the mean of interval
    rates, which over-weights short intervals); the mean rate when the counters are missing."""
    samples, elapsed = s.last("samples"), s.last("elapsed_s")
    if samples and elapsed:
        return samples / elapsed
    rates = [x for x in (_f(r.get("samples_per_s")) for r in s.train) if x is not None]
    return sum(rates) / len(rates) if rates else None


def _mean_of(s: StageView, key: str) -> float | None:
    """Mean of a per-interval rate over the stage's rows that have it."""
    vals = [x for x in (_f(r.get(key)) for r in s.train) if x is not None]
    return sum(vals) / len(vals) if vals else None


def _wait(s: StageView) -> tuple[float | None, float | None]:
    """(mean, max) share of time spent waiting for data, the mean weighted by each interval's length."""
    pts, prev = [], 0.0
    for r in s.train:
        el, w = _f(r.get("elapsed_s")), _f(r.get("data_wait_frac"))
        dt = (el - prev) if el is not None else None
        if el is not None:
            prev = el
        if w is not None:
            pts.append((min(max(w, 0.0), 1.0), dt if dt and dt > 0 else None))
    if not pts:
        return None, None
    if all(dt is not None for _, dt in pts):
        mean = sum(w * dt for w, dt in pts) / sum(dt for _, dt in pts)
    else:
        mean = sum(w for w, _ in pts) / len(pts)
    return mean, max(w for w, _ in pts)


def _val(s: StageView) -> dict[str, float]:
    """The stage's final validation losses: from its outcome, else from its last rows."""
    val = {k: x for k, v in ((s.outcome or {}).get("val") or {}).items()
           if not is_bucket_key(k) and (x := _f(v)) is not None}
    for k in s.val_keys():
        if k not in val and (x := s.last(k)) is not None:
            val[k] = x
    return val


# -- formatting -------------------------------------------------------------------------------


def _num(v, digits: int = 4) -> str:
    x = _f(v)
    return "—" if x is None else f"{x:.{digits}g}"


def _si(v) -> str:
    """3 significant digits with a k / M / G suffix: step counts of 10^5+ and rates stay legible."""
    x = _f(v)
    if x is None:
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _steps_axis(ax) -> None:
    """Few integer step ticks, 150k rather than 150000 (Movie Gen stages run 10^5 steps)."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _si(x) if x else "0"))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(s, 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def _lr_text(spec: StageSpec) -> str:
    return f"{spec.lr:g}" + (f" → {spec.final_lr:g}" if spec.final_lr is not None and spec.final_lr != spec.lr else "")


# -- charts -----------------------------------------------------------------------------------


def _log_if_wide(ax, values: list[float]) -> None:
    """Log y when the values span > LOG_SPAN x: early losses otherwise flatten the rest of the curve."""
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > LOG_SPAN:
        ax.set_yscale("log")


def _xy(rows: list[dict], key: str, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    pts = [(float(r["step"]) + offset, x) for r in rows if (x := _f(r.get(key))) is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.array(pts, dtype=float)
    return a[:, 0], a[:, 1]


def _lr_curve(s: StageView) -> tuple[np.ndarray, np.ndarray]:
    """The planned learning rate by step (`lr_at`), dense: rows are logged every log_every steps, too
    sparse to show a short warm-up. A row at step k logs lr_at(k - 1), so the curve is drawn at k."""
    steps = np.unique(np.linspace(0, s.spec.iterations - 1, min(LR_POINTS, s.spec.iterations)).astype(int))
    return steps + 1.0, np.array([s.spec.lr_at(int(k)) for k in steps])


def _lr_off_plan(s: StageView) -> tuple[np.ndarray, np.ndarray]:
    """Logged lr values more than 1% away from the plan: a schedule bug would show here."""
    x, y = _xy(s.rows, "lr")
    plan = np.array([s.spec.lr_at(int(k) - 1) for k in x])
    off = np.abs(y - plan) > 0.01 * np.maximum(np.abs(plan), 1e-12)
    return x[off], y[off]


def _marker_size(n: int) -> float:
    """Validation markers shrink when there are many passes, so the train curve stays visible."""
    return 7.0 if n <= 16 else 4.0 if n <= 60 else 2.5


def _val_style(key: str) -> tuple[str, str]:
    return C_VAL.get(key, C_VAL_OTHER), MARKER_VAL.get(key, "^")


def _val_label(key: str) -> str:
    return "val " + key.removeprefix("val_loss").strip("_") if key != "val_loss" else "val"


def _stage_panel(ax, s: StageView) -> None:
    ax.set_title(s.title, fontsize=10)
    ax.set_xlim(0, s.span * 1.04)
    ax.tick_params(labelsize=8)
    ax.spines[["top"]].set_visible(False)
    x, y = _xy(s.train, "loss")
    if not x.size:
        ax.text(0.5, 0.5, "no metric rows", transform=ax.transAxes, ha="center", va="center", color="#888", fontsize=11)
        ax.set_yticks([])
        return
    ax.plot(x, y, "-o" if x.size <= 12 else "-", color=C_TRAIN, lw=1.5, ms=3, label="train loss", zorder=3)
    values = list(y)
    rx, ry = _xy(s.train, "recon")
    if rx.size:
        ax.plot(rx, ry, "--", color=C_RECON, lw=1, label="recon", zorder=2)
        values += list(ry)
    for key in s.val_keys():
        vx, vy = _xy(s.rows, key)
        colour, marker = _val_style(key)
        ax.plot(vx, vy, marker, color=colour, ms=_marker_size(vx.size), mec="black", mew=0.6, ls="none",
                label=_val_label(key), zorder=4)
        values += list(vy)
    _log_if_wide(ax, values)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    lx, ly = _lr_curve(s)
    ax2 = ax.twinx()
    ax2.plot(lx, ly, color=C_LR, lw=1, ls=":", label="lr (planned)", zorder=1)
    gx, gy = _lr_off_plan(s)
    if gx.size:
        ax2.plot(gx, gy, "x", color="#c62828", ms=4, label="lr logged, off plan", zorder=1)
    ax2.set_ylim(0, max(float(np.max(np.concatenate([ly, gy]))), 1e-12) * 1.1)
    ax2.set_ylabel("lr", fontsize=8, color=C_LR)
    ax2.tick_params(labelsize=7, colors=C_LR)
    ax2.yaxis.get_offset_text().set_fontsize(7)
    ax2.spines[["top"]].set_visible(False)
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, fontsize=7, loc="best", framealpha=0.85)
    _steps_axis(ax)


def _stages_chart(stages: list[StageView]) -> str:
    """One panel per stage: train loss by step, validation points, lr on a twin axis."""
    cols = min(PANEL_COLS, len(stages))
    nrows = math.ceil(len(stages) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.1 * nrows), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < len(stages):
            _stage_panel(ax, stages[k])
        else:
            ax.set_visible(False)
    return figure_data_uri(fig)


def _whole_chart(stages: list[StageView]) -> str:
    """Train loss of every stage on one axis of cumulative steps, stage boundaries marked, lr below."""
    fig = Figure(figsize=(13, 4.8), dpi=100, layout="constrained")
    ax, lax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    total = sum(s.span for s in stages)
    values: list[float] = []
    val_seen: dict[str, str] = {}
    for s in stages:
        colour = STAGE_COLOURS[s.index % len(STAGE_COLOURS)]
        x, y = _xy(s.train, "loss", s.offset)
        if x.size:
            ax.plot(x, y, "-o" if x.size <= 12 else "-", color=colour, lw=1.5, ms=3)
            values += list(y)
        for key in s.val_keys():
            vx, vy = _xy(s.rows, key, s.offset)
            _, marker = _val_style(key)
            ax.plot(vx, vy, marker, color=colour, ms=_marker_size(vx.size), mec="black", mew=0.6, ls="none", zorder=4)
            values += list(vy)
            val_seen[key] = marker
        lx, ly = _lr_curve(s)
        lax.plot(lx + s.offset, ly, color=colour, lw=1.2)
    _log_if_wide(ax, values)
    # Stage boundaries and names: the progressive hand-offs at a glance.
    top = blended_transform_factory(ax.transData, ax.transAxes)
    last_upright = -1.0  # x of the previous upright label: the next keeps a label's width away
    for s in stages:
        colour = STAGE_COLOURS[s.index % len(STAGE_COLOURS)]
        if s.index:
            for a in (ax, lax):
                a.axvline(s.offset, color="#616161", ls="--", lw=0.9)
        wide = s.span / max(total, 1) > 0.011 * (len(s.spec.name) + 2)
        label = s.spec.name + ("" if s.train else " (no rows)")
        if wide:
            ax.text(s.offset + s.span / 2, 0.98, label, transform=top, ha="center", va="top", fontsize=9,
                    color=colour, fontweight="bold", bbox=LABEL_BOX, zorder=6)
        else:  # a short stage: its name upright beside its start line, clear of the one before
            x = max(s.offset + total * 0.003, last_upright + total * 0.016)
            last_upright = x
            ax.text(x, 0.98, label, transform=top, ha="left", va="top", rotation=90,
                    fontsize=8, color=colour, fontweight="bold", bbox=LABEL_BOX, zorder=6)
    ax.set_ylabel("train loss", fontsize=9)
    ax.margins(y=0.12)
    if ax.get_yscale() == "log":
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 1.8)  # head-room for the stage names
    else:
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.12 * (hi - lo))
    if val_seen:
        handles = [ax.plot([], [], m, color="white", mec="black", ms=7, ls="none")[0] for m in val_seen.values()]
        ax.legend(handles, [_val_label(k) + " (stage colour)" for k in val_seen], fontsize=8, loc="lower left",
                  framealpha=0.85)
    lax.set_ylabel("lr", fontsize=9)
    lax.set_xlabel("cumulative step (stages in schedule order)", fontsize=9)
    lax.set_xlim(0, total * 1.005)
    lax.set_ylim(bottom=0)
    for a in (ax, lax):
        a.tick_params(labelsize=8)
        a.spines[["top", "right"]].set_visible(False)
    lax.yaxis.get_offset_text().set_fontsize(7)
    _steps_axis(lax)
    return figure_data_uri(fig)


def _throughput_chart(stages: list[StageView]) -> str:
    """Bars per stage: samples/s (left) and share of time waiting for data (right)."""
    n = len(stages)
    fig = Figure(figsize=(11, 0.42 * n + 1.2), dpi=100, layout="constrained")
    ax, wax = fig.subplots(1, 2)
    y = np.arange(n)[::-1]  # first stage on top
    names = [s.spec.name for s in stages]
    rates = [_rate(s) for s in stages]
    waits = [_wait(s)[0] for s in stages]
    colours = [STAGE_COLOURS[s.index % len(STAGE_COLOURS)] for s in stages]
    ax.barh(y, [r or 0.0 for r in rates], color=colours)
    rmax = max([r for r in rates if r] or [1.0])
    for yi, r in zip(y, rates):
        ax.text(r or 0.0, yi, f" {_si(r)}" if r else " no rows", va="center", fontsize=8, color="#333" if r else "#888")
    ax.set_xlim(0, rmax * 1.25)
    ax.set_xlabel("samples / s (all workers)", fontsize=9)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _si(x) if x else "0"))
    wcol = ["#c62828" if w is not None and w > INPUT_BOUND else "#607d8b" for w in waits]
    wax.barh(y, [100 * (w or 0.0) for w in waits], color=wcol)
    for yi, w in zip(y, waits):
        wax.text(100 * (w or 0.0), yi, f" {100 * w:.0f}%" if w is not None else " —", va="center", fontsize=8)
    wax.axvline(100 * INPUT_BOUND, color="#c62828", ls=":", lw=1)
    wax.text(100 * INPUT_BOUND, -0.9, " input-bound above", color="#c62828", fontsize=7, va="bottom")
    wax.set_xlim(0, 110)
    wax.set_xlabel("% of time waiting for data", fontsize=9)
    for a in (ax, wax):
        a.set_yticks(y, names, fontsize=8)
        a.set_ylim(-1, n)
        a.tick_params(labelsize=8)
        a.spines[["top", "right"]].set_visible(False)
    return figure_data_uri(fig)


# -- html -------------------------------------------------------------------------------------


# Evaluation metrics drawn across the schedule (shares, 0..1) and the one in milliseconds.
EVAL_SHARES = ("present", "colour", "shape", "direction", "sync_ok", "silence_ok", "v2a_sync_ok", "v2a_silence_ok",
               "tae_object_present", "tae_object_colour", "tae_object_direction", "tae_ssim")


def _eval_html(storage: Storage, output: str, schedule: Schedule, evals: list[dict]) -> str:
    """What each stage's model generates, measured: a table, the metrics across the schedule, and
    each stage's contact sheet (samples, and the TAE's reconstructions of the probe)."""
    import base64

    names = [s.name for s in schedule.stages]
    # clip_score (a cosine in [-1, 1], only with a CLIP checkpoint configured) is tabled, not drawn as a share
    keys = [k for k in (*EVAL_SHARES, "sync_error_ms", "v2a_sync_error_ms", "tae_psnr", "tae_psnr_first_frame",
                        "tae_psnr_later_frames", "clip_score")
            if any(e.get(k) is not None for e in evals)]
    head = "".join(f"<th>{html_text(k)}</th>" for k in keys)
    body = ""
    for name, e in zip(names, evals):
        cells = "".join(f"<td>{'—' if e.get(k) is None else _num(e[k], 3)}</td>" for k in keys)
        expect = schedule.stages[names.index(name)].expect
        gate = ", ".join(f"{m} {'≥ ' + format(b.min, 'g') if b.min is not None else ''}"
                         f"{'≤ ' + format(b.max, 'g') if b.max is not None else ''}" for m, b in expect.items())
        body += f"<tr><td>{html_text(name)}</td>{cells}<td>{html_text(gate) or '—'}</td></tr>"
    fig = Figure(figsize=(9, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    for k in (k for k in EVAL_SHARES if k in keys):
        y = [np.nan if e.get(k) is None else e[k] for e in evals]
        ax.plot(x, y, marker="o", label=k)
    ax.set_xticks(x, names)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("share of samples")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    sheets = ""
    for i, name in enumerate(names):
        for fname, what in (("contact_sheet.png", "samples"), ("tae_contact_sheet.png", "TAE reconstructions")):
            uri = join(output, "stages", schedule.stage_dir_name(i), "eval", fname)
            if storage.exists(uri):
                data = base64.b64encode(storage.read_bytes(uri)).decode()
                sheets += f"<h3>{html_text(name)}: {what}</h3><img class=chart src='data:image/png;base64,{data}'>"
    return (f'<h2 id="eval">Evaluation</h2><p class=note>Each stage\'s model samples the prompt set; the metrics are '
            f"measured on the samples' pixels and audio (training/shape_metrics.py). The last column is the stage's "
            f"learning gate.</p><div class=wide><table><tr><th>stage</th>{head}<th>expect</th></tr>{body}</table></div>"
            f"<img class=chart src='{figure_data_uri(fig)}'>{sheets}")


def _page(schedule: Schedule, sections: list[str]) -> str:
    nav = " · ".join(f'<a href="#{k}">{t}</a>' for k, t in (
        ("schedule", "schedule"), ("eval", "evaluation"), ("loss", "loss per stage"), ("buckets", "val per bucket"),
        ("whole", "whole schedule"),
        ("throughput", "throughput")))
    title = f"reelflow training report ({schedule.model_size}, {len(schedule.stages)} stages)"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html_text(title)}</title>'
            f"<style>{CSS}</style></head><body><div class=muted>{nav}</div>{''.join(sections)}</body></html>")


def _header_html(output: str, schedule: Schedule, stages: list[StageView]) -> str:
    outs = [s.outcome for s in stages if s.outcome]
    steps = sum(int(o.get("steps") or 0) for o in outs) if outs else sum(int(s.train[-1]["step"]) for s in stages if s.train)
    planned = sum(s.spec.iterations for s in stages)
    seconds = sum(_f(o.get("seconds")) or 0.0 for o in outs) if outs else None
    kpis = [("model size", schedule.model_size), ("stages", len(stages)), ("workers", schedule.num_workers),
            ("precision", schedule.precision), ("steps", f"{steps:,} / {planned:,}"), ("wall time", _duration(seconds))]
    tae = next((s for s in stages if s.spec.model == "tae" and s.last("latent_scale") is not None), None)
    if tae:
        kpis.append(("TAE latent scale", _num(tae.last("latent_scale"))))
    boxes = "".join(f"<div class=kpi><b>{html_text(v)}</b><span>{html_text(k)}</span></div>" for k, v in kpis)
    model = join(output, MODEL_FILE)
    notes = []
    missing = [s.spec.name for s in stages if s.outcome is None]
    if missing:
        notes.append(f"No outcome for stage(s) {', '.join(missing)}: the run did not reach them, or stopped in them.")
    short = [f"{s.spec.name} ({s.outcome.get('steps')}/{s.spec.iterations})" for s in stages
             if s.outcome and int(s.outcome.get("steps") or 0) < s.spec.iterations]
    if short:
        notes.append(f"Stage(s) that stopped short of their iterations: {', '.join(short)}.")
    note = "".join(f"<p class=note>{html_text(n)}</p>" for n in notes)
    cmd = f'reelflow generate {model} --prompt "a red ball bouncing on a beach" --out sample.mp4'
    return (f"<h1>reelflow training report — {html_text(schedule.model_size)} model, {len(stages)} stages</h1>"
            f"<div class=muted>output <code>{html_text(output)}</code>; wall time is the sum of the stages' run times "
            "(a stage done by an earlier run counts that run's time)</div>"
            f"<div class=kpis>{boxes}</div>{note}"
            f"<p>Final checkpoint (the last stage's): <code>{html_text(model)}</code>. Sample from it with</p>"
            f"<pre class=cmd>{html_text(cmd)}</pre>")


def _schedule_html(stages: list[StageView]) -> str:
    val_keys = sorted({k for s in stages for k in _val(s)}, key=lambda k: (k not in C_VAL, k))
    val_keys = val_keys or ["val_loss_image", "val_loss_video"]
    plan = ["#", "stage", "model", "data", "px", "frames@fps", "image ratio", "global batch",
            "lr", "warm-up", "iterations", "init"]
    done = ["steps", "seconds", "final train loss"] + [_val_label(k) for k in val_keys] + ["samples/s", "flags"]
    head = (f"<tr><th colspan={len(plan)} class=grp>schedule</th><th colspan={len(done)} class=grp>outcome</th></tr>"
            "<tr>" + "".join(f"<th{' class=l' if h in ('stage', 'model', 'data', 'init') else ''}>{html_text(h)}</th>"
                             for h in plan + done) + "</tr>")
    body = []
    for s in stages:
        sp, o = s.spec, s.outcome or {}
        frames = f"{sp.frames}@{sp.fps:g}" if sp.data != "image" else "1 (image)"
        cells = [str(s.index), html_text(sp.name), html_text(sp.model), html_text(sp.data), str(sp.resolution), frames,
                 f"{sp.image_ratio:g}" if sp.data == "joint" else "—", str(sp.global_batch_size), html_text(_lr_text(sp)),
                 str(sp.warmup_steps), str(sp.iterations), html_text(sp.init)]
        val = _val(s)
        final = o.get("final_loss") if _f(o.get("final_loss")) is not None else (s.train[-1]["loss"] if s.train else None)
        flags = [f for f in ("resumed", "skipped") if o.get(f)]
        if not s.outcome:
            flags.append("no outcome")
        if not s.rows:
            flags.append("no rows")
        rate = o.get("samples_per_s") if _f(o.get("samples_per_s")) is not None else _rate(s)
        steps = o.get("steps", s.train[-1]["step"] if s.train else None)
        cells += [html_text(steps if steps is not None else "—"), _num(o.get("seconds"), 3), _num(final)]
        cells += [_num(val.get(k)) for k in val_keys] + [_num(rate, 3), html_text(", ".join(flags) or "—")]
        cls = {1: "l", 2: "l", 3: "l", 8: "nw", 11: "l", len(cells) - 1: "l"}
        row = "".join(f"<td{' class=' + cls[i] if i in cls else ''}>{c}</td>" for i, c in enumerate(cells))
        body.append(f"<tr{' class=nodata' if not s.rows else ''}>{row}</tr>")
    return ('<h2 id="schedule">Schedule</h2><p class=muted>Each stage starts from <code>init</code> '
            "(<code>previous</code>: the stage before's checkpoint). lr: peak (AdamW) after the linear warm-up, "
            "→ the cosine-decay target when one is set. Validation losses use fixed noise and t, so passes "
            f"compare.</p><div class=wide><table class=sched>{head}{''.join(body)}</table></div>")


def _loss_html(stages: list[StageView]) -> str:
    empty = [s.spec.name for s in stages if not s.train]
    note = (f"<p class=note>No metric rows for stage(s) {html_text(', '.join(empty))}: nothing to plot there "
            "(not run yet, or its metrics.jsonl is missing).</p>") if empty else ""
    return ('<h2 id="loss">Loss per stage</h2><p class=muted>Train loss (mean over each logging interval, all '
            "workers) by step within the stage; markers: validation passes; dotted grey, right axis: learning "
            "rate as planned (red crosses: logged values off the plan). A loss axis spanning more than "
            f"{LOG_SPAN:g}× is log-scaled.</p>{note}"
            f'<img class=chart alt="loss per stage" src="{_stages_chart(stages)}">')


def _val_passes(s: StageView) -> list[dict]:
    """The stage's rows that carry a validation pass (a pooled val loss), by step."""
    return [r for r in s.rows if any(k.startswith(LOSS_PREFIX) and not is_bucket_key(k) and _f(v) is not None
                                     for k, v in r.items())]


def _bucket_cell(first: tuple[float, int | None] | None, last: tuple[float, int | None] | None, passes: int) -> str:
    """The last pass's loss with its sample count, and where the first pass stood when there were more."""
    if last is None:
        return "<td>—</td>"
    n = f" <span class=muted>n={last[1]}</span>" if last[1] is not None else ""
    before = f"<br><span class=muted>first pass {_num(first[0])}</span>" if first is not None and passes > 1 else ""
    return f"<td>{_num(last[0])}{n}{before}</td>"


def _bucket_html(stages: list[StageView]) -> str:
    """Final validation loss per aspect bucket: one row per stage and kind, one column per bucket.
    The pooled val loss is their count-weighted mean, so a bucket the model has not learned (a
    rarely seen aspect, a position table grown at a hand-off) shows here while the pooled figure
    hides it. Empty when no row carries per-bucket losses (runs from before they were logged)."""
    # (stage, kind, {bucket: (loss, n)} of its first pass, of its last pass, number of passes)
    lines: list[tuple[StageView, str, dict, dict, int]] = []
    for s in stages:
        passes = _val_passes(s)
        if not passes:
            continue
        kinds = sorted({k[len(LOSS_PREFIX):] for k in passes[-1] if k.startswith(LOSS_PREFIX) and not is_bucket_key(k)})
        for kind in kinds:
            last = bucket_losses(passes[-1], kind)
            if last:
                lines.append((s, kind, bucket_losses(passes[0], kind), last, len(passes)))
    if not lines:
        return ""
    buckets = sorted({b for *_, last, _ in lines for b in last})
    head = "<tr><th class=l>stage</th><th class=l>kind</th><th>pooled</th>" + "".join(
        f"<th>{html_text(b)}</th>" for b in buckets) + "</tr>"
    body = []
    for s, kind, first, last, passes in lines:
        pooled = _val_passes(s)[-1].get(LOSS_PREFIX + kind)
        cells = "".join(_bucket_cell(first.get(b), last.get(b), passes) for b in buckets)
        body.append(f"<tr><td class=l>{html_text(s.spec.name)}</td><td class=l>{html_text(kind)}</td><td>{_num(pooled)}</td>{cells}</tr>")
    return ('<h2 id="buckets">Validation loss per aspect bucket</h2><p class=muted>The last validation pass of each '
            "stage, split by aspect bucket (n: held-out samples scored; the pooled loss is the n-weighted mean). "
            "Below each: the stage's first pass. —: the pass did not reach that bucket (<code>val_batches</code> "
            f"caps it) or the stage's data has none.</p><div class=wide><table>{head}{''.join(body)}</table></div>")


def _whole_html(stages: list[StageView]) -> str:
    return ('<h2 id="whole">Whole schedule</h2><p class=muted>Every stage\'s train loss on one axis of cumulative '
            "steps (each stage spans its planned iterations); dashed lines: hand-offs, where a stage starts from "
            "the one before. Losses of different models (TAE, video, audio) are not on the same scale; a jump at a "
            "hand-off to a new resolution or data mix is expected. Below: the learning rate.</p>"
            f'<img class=chart alt="whole schedule" src="{_whole_chart(stages)}">')


def _throughput_html(stages: list[StageView]) -> str:
    head = ("<tr><th class=l>stage</th><th>rows</th><th>samples seen</th><th>loop time</th><th>samples/s</th>"
            "<th>tokens/s</th><th>model TFLOP/s</th><th>MFU</th><th>data wait (mean)</th><th>data wait (max)</th><th>grad norm (mean)</th><th>grad norm (max)</th>"
            "<th class=l>note</th></tr>")
    body, bound = [], []
    for s in stages:
        if not s.train:
            body.append(f"<tr class=nodata><td class=l>{html_text(s.spec.name)}</td><td>0</td>"
                        "<td colspan=10>—</td><td class=l>no metric rows</td></tr>")
            continue
        mean, peak = _wait(s)
        grads = [g for g in (_f(r.get("grad_norm")) for r in s.train) if g is not None]
        input_bound = mean is not None and mean > INPUT_BOUND
        if input_bound:
            bound.append(s.spec.name)
        samples = s.last("samples")
        cells = [str(len(s.train)), f"{int(samples):,}" if samples is not None else "—", _duration(s.last("elapsed_s")),
                 _num(_rate(s), 3), _num(_mean_of(s, "tokens_per_s"), 3), _num(_mean_of(s, "tflops_per_s"), 3),
                 f"{100 * m:.1f}%" if (m := _mean_of(s, "mfu")) is not None else "—",
                 f"{100 * mean:.0f}%" if mean is not None else "—",
                 f"{100 * peak:.0f}%" if peak is not None else "—",
                 _num(sum(grads) / len(grads), 3) if grads else "—", _num(max(grads), 3) if grads else "—"]
        note = ("<td class='l warn'>input-bound: the loader, not the model, sets the pace</td>" if input_bound
                else "<td class=l></td>")
        body.append(f"<tr><td class=l>{html_text(s.spec.name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + note + "</tr>")
    summary = (f"<p class=note>Input-bound stage(s): {html_text(', '.join(bound))} (over {100 * INPUT_BOUND:.0f}% of the "
               "time waiting for data): more loader workers, fewer or smaller shards per read, or pre-decoded "
               "clips would speed them up.</p>") if bound else ""
    return ('<h2 id="throughput">Throughput</h2><p class=muted>samples/s: samples seen over time in the training '
            "loop (all workers); tokens/s: transformer sequence positions (latent patches, audio frames) per "
            "second; model TFLOP/s: 6 x trained parameters x tokens + attention, forward and backward (recomputed "
            "activations not counted); MFU: that over the devices' dense bf16 peak (GPU, bf16 only); data wait: share of each logging interval spent waiting for the next batch, "
            f"weighted by interval length.</p>{summary}"
            f'<img class=chart alt="throughput per stage" src="{_throughput_chart(stages)}"><table>{head}{"".join(body)}</table>')
