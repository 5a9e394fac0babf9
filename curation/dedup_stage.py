"""Deduplication where the rows lie (#14 item 2): exact, near and semantic levels as Ray shuffles.

``table_stages.DedupStage`` reads every ok score row into the driver. Beyond
``runtime.driver_max_rows`` the dedup stage runs as passes over the score table instead; the
driver holds counts, object references and the semantic level's centroids, never a row:

1. survey: the ok rows' count, whether any has a ``dedup.quality_score`` (else clips rank by
   sharpness), whether every clip has frame hashes (near level) and one embedding size (semantic);
2. exact: map tasks hash-partition (signature, key, quality, duration) by signature; each reduce
   groups its signatures and keeps each group's best (``groups.keep_best``);
3. near, on the clips exact kept: a count of unique frame hashes fixes the band layout
   (``near.band_layout``); then per band, map tasks emit each frame's band-rotated hash, bucketed by
   its band value; each reduce sorts its buckets as ``near.candidate_pairs`` sorts the whole index
   (the hash, then the clip's key, then the frame's rank in its clip: the global entry order) and
   pairs entries up to ``window`` apart, checks them and confirms pairs by sequence agreement;
4. semantic, on the clips near kept: spherical k-means fitted in one task (every row in key order
   up to ``FIT_SAMPLE_MAX``, else a hash sample), each clip sent to its ``assign_top`` nearest
   partitions, one reduce per group of partitions computing the blocked cosine pairs;
5. per level, one task gathers the confirmed pairs with their endpoints' attributes, takes the
   connected components and keeps each group's best: its decisions stay in the object store, and
   the next level's maps drop the clips they name;
6. write: the workers join every score row with the decisions and write the dedup table's parts.

Pairs and their endpoints grow with the duplicates, not with the clips; a level's components task
holds them. Up to ``FIT_SAMPLE_MAX`` clips the decisions are ``DedupStage``'s (a test compares them).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reelflow.curation import ray_tables
from reelflow.curation.dedup.groups import components, keep_best
from reelflow.curation.dedup.near import NearConfig, _rotl, agreement, band_layout, unique_frames
from reelflow.curation.dedup.semantic import (
    SemanticConfig,
    l2_normalize,
    nearest_centroids,
    partition_pairs,
    spherical_kmeans,
)
from reelflow.curation.dedup.signatures import hamming
from reelflow.curation.policy import Policy
from reelflow.curation.ray_tables import TableRef
from reelflow.curation.records import REJECTED, STAGE_SCHEMAS
from reelflow.curation.stage_store import StageStore
from reelflow.curation.table_stages import FALLBACK_QUALITY, dedup_config, dedup_reason

INPUT = "score"
FIT_SAMPLE_MAX = 200_000  # rows the semantic level's k-means sees (one task: rows x dims x 4 bytes)
ROWS_PER_MAP = 200_000  # score rows a map task reads
ROWS_PER_REDUCE = 1_000_000  # entries (signatures, frame hashes, partition memberships) per reduce
MAX_PARTITIONS = 256

Width = Callable[[int], int]  # rows of a shuffle -> its reduce partitions
DECISIONS = pa.schema([("key", pa.string()), ("level", pa.string()), ("duplicate_of", pa.string()),
                       ("similarity", pa.float64())])


@dataclass(frozen=True)
class Survey:
    n: int  # ok score rows
    quality: str  # the column that ranks a group's members
    frames: int  # frame hashes per clip (0: the near level has no input)
    dims: int  # embedding size (0: the semantic level has no input)


@dataclass
class Level:
    """One level's decisions, left in the object store for the next level's maps and the writers."""

    refs: list  # ObjectRefs of DECISIONS tables
    dropped: int


# -- reading ---------------------------------------------------------------------------------------
_dropped_sets: dict[str, frozenset] = {}


def _dropped_set(refs: list) -> frozenset:
    """The keys earlier levels dropped, built once per worker process and set of levels."""
    key = ",".join(r.hex() for r in refs)
    if key not in _dropped_sets:
        _dropped_sets.clear()
        keys: set[str] = set()
        for t in ray.get(refs):
            keys.update(t["key"].to_pylist())
        _dropped_sets[key] = frozenset(keys)
    return _dropped_sets[key]


def _read(table: TableRef, uris: list[str], columns: list[str], dropped: list) -> pa.Table:
    """The ok rows of ``uris`` (score parts) that no earlier level dropped, ``columns`` of them."""
    store = table.store()
    need = sorted({"item_id", "status", *columns})
    parts = [store.read_part(INPUT, u, need) for u in uris]
    t = pa.concat_tables(parts) if parts else STAGE_SCHEMAS[INPUT].empty_table().select(need)
    t = t.filter(pc.equal(t["status"], "ok"))
    if dropped:
        gone = _dropped_set(dropped)
        t = t.filter(pa.array([k not in gone for k in t["item_id"].to_pylist()], pa.bool_()))
    return t.select(columns)


def _floats(col) -> np.ndarray:
    """A float column as float64 with nulls as NaN (``DedupStage``'s ``_num``)."""
    return np.asarray(pc.fill_null(col.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False), np.float64)


def _list_matrix(col, dtype) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = np.asarray(pc.list_flatten(col).to_numpy(zero_copy_only=False), dtype)
    return flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 0)


def _split(t: pa.Table, part: np.ndarray, n: int) -> tuple:
    """``t``'s rows as ``n`` tables by ``part`` (a Ray task's ``num_returns``-shaped result)."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(n + 1))
    t = t.take(pa.array(order))
    out = [t.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(n)]
    return out[0] if n == 1 else tuple(out)


def _crc(values: list[str], n: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(v.encode()) % n for v in values), np.int64, count=len(values))


# -- survey ----------------------------------------------------------------------------------------
@ray.remote(num_cpus=1)
def _survey_task(table: TableRef, uris: list[str], quality: str) -> dict:
    t = _read(table, uris, [quality, "phashes", "clip_embedding"], [])
    q = _floats(t[quality])
    ph_len = pc.fill_null(pc.list_value_length(t["phashes"]), 0)
    emb = t["clip_embedding"]
    emb_len = pc.list_value_length(emb)
    return {"n": t.num_rows, "quality": int((~np.isnan(q)).sum()),
            "ph_empty": int(pc.sum(pc.equal(ph_len, 0)).as_py() or 0),
            "ph_min": pc.min(ph_len).as_py(), "ph_max": pc.max(ph_len).as_py(),
            "emb_nulls": emb.null_count, "emb_min": pc.min(emb_len).as_py(), "emb_max": pc.max(emb_len).as_py()}


def survey(table: TableRef, groups: list[list[str]], quality_score: str) -> Survey:
    got = ray.get([_survey_task.remote(table, g, quality_score) for g in groups])
    n = sum(g["n"] for g in got)
    got = [g for g in got if g["n"]]
    quality = quality_score if any(g["quality"] for g in got) else FALLBACK_QUALITY
    frames = 0
    if got and not any(g["ph_empty"] for g in got):  # DedupStage: every clip has frame hashes
        lo, hi = min(g["ph_min"] for g in got), max(g["ph_max"] for g in got)
        if lo != hi:
            raise ValueError(f"dedup: clips have {lo} to {hi} frame hashes; the score stage samples one count")
        frames = lo
    dims = 0
    if got and not any(g["emb_nulls"] for g in got):  # one embedding size on every clip
        lo, hi = min(g["emb_min"] for g in got), max(g["emb_max"] for g in got)
        dims = lo if lo == hi else 0
    return Survey(n, quality, frames, dims)


# -- exact -----------------------------------------------------------------------------------------
@ray.remote(num_cpus=1)
def _exact_map(table: TableRef, uris: list[str], quality: str, n: int):
    t = _read(table, uris, ["item_id", "content_signature", quality, "duration_s"], [])
    t = t.filter(pc.fill_null(pc.greater(pc.utf8_length(t["content_signature"]), 0), False))
    t = pa.table({"sig": t["content_signature"], "key": t["item_id"], "q": _floats(t[quality]),
                  "d": _floats(t["duration_s"])})
    return _split(t, _crc(t["sig"].to_pylist(), n), n)


@ray.remote(num_cpus=1, num_returns=2)
def _exact_reduce(*tables: pa.Table):
    t = pa.concat_tables(tables)
    if not t.num_rows:
        return DECISIONS.empty_table(), 0
    _, labels = np.unique(np.asarray(t["sig"].to_pylist(), dtype=str), return_inverse=True)
    keys = np.asarray(t["key"].to_pylist(), dtype=str)
    kept = keep_best(labels, t["q"].to_numpy(), t["d"].to_numpy(), keys)
    drop = kept != np.arange(t.num_rows)
    out = pa.table({"key": keys[drop], "level": ["exact"] * int(drop.sum()), "duplicate_of": keys[kept[drop]],
                    "similarity": np.ones(int(drop.sum()))}, schema=DECISIONS)
    return out, out.num_rows


def exact_level(table: TableRef, groups: list[list[str]], s: Survey, width: Width) -> Level:
    p = width(s.n)
    maps = [_exact_map.options(num_returns=p).remote(table, g, s.quality, p) for g in groups]
    maps = [[m] if p == 1 else list(m) for m in maps]
    reduces = [_exact_reduce.remote(*[m[i] for m in maps]) for i in range(p)]
    return Level([r[0] for r in reduces], sum(ray.get([r[1] for r in reduces])))


# -- near ------------------------------------------------------------------------------------------
@ray.remote(num_cpus=1)
def _count_frames(table: TableRef, uris: list[str], dropped: list) -> tuple[int, int]:
    t = _read(table, uris, ["phashes"], dropped)
    ph = _list_matrix(t["phashes"], np.uint64)
    return t.num_rows, (int(unique_frames(ph)[0].size) if t.num_rows else 0)


@ray.remote(num_cpus=1)
def _near_map(table: TableRef, uris: list[str], dropped: list, quality: str, start: int, width: int,
              idx_bits: int, n: int):
    t = _read(table, uris, ["item_id", "phashes", quality, "duration_s"], dropped)
    ph = _list_matrix(t["phashes"], np.uint64)
    flat, row, rank = unique_frames(ph) if t.num_rows else (np.zeros(0, np.uint64),) + (np.zeros(0, np.int64),) * 2
    masked = _rotl(flat, 64 - start - width) & ~np.uint64((1 << idx_bits) - 1)
    bucket = masked >> np.uint64(64 - width)
    out = pa.table({"m": masked, "rank": rank.astype(np.int16), "hash": flat,
                    "key": t["item_id"].take(pa.array(row)), "q": _floats(t[quality])[row],
                    "d": _floats(t["duration_s"])[row], "ph": t["phashes"].take(pa.array(row))})
    return _split(out, (bucket % np.uint64(n)).astype(np.int64), n)


@ray.remote(num_cpus=1, num_returns=2)
def _near_reduce(cfg: NearConfig, width: int, *tables: pa.Table):
    """Confirmed pairs of this partition's buckets, and their endpoints (``_components``' input)."""
    t = pa.concat_tables(tables)
    if t.num_rows < 2:
        return _pairs_table([], [], []), _nodes_table(t.slice(0, 0), "ph")
    keys = np.asarray(t["key"].to_pylist(), dtype=str)
    m, rank, h = t["m"].to_numpy(), t["rank"].to_numpy(), t["hash"].to_numpy()
    order = np.lexsort((rank, keys, m))  # the global index's order: hash, then clip (key order), then rank
    bucket = m[order] >> np.uint64(64 - width)
    ulabel, clip = np.unique(keys, return_inverse=True)
    found = []
    for o in range(1, cfg.window + 1):
        pos = np.flatnonzero(bucket[:-o] == bucket[o:])
        if pos.size == 0:
            break
        p, q = order[pos], order[pos + o]
        a, b = clip[p], clip[q]
        ok = (a != b) & (hamming(h[p], h[q]) <= cfg.max_hamming)
        a, b = a[ok], b[ok]
        found.append(np.minimum(a, b) * len(ulabel) + np.maximum(a, b))
    code = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    a, b = code // len(ulabel), code % len(ulabel)
    first = np.unique(clip, return_index=True)[1]  # a row of each clip: its attributes
    ph = _list_matrix(t["ph"].take(pa.array(first)), np.uint64)
    agr = agreement(ph[a], ph[b], cfg.max_hamming, cfg.max_shift) if a.size else np.zeros(0)
    ok = agr >= cfg.min_agreement
    a, b, agr = a[ok], b[ok], agr[ok]
    ends = np.unique(np.concatenate([a, b]))
    return _pairs_table(ulabel[a], ulabel[b], agr), _nodes_table(t.take(pa.array(first[ends])), "ph")


def near_level(table: TableRef, groups: list[list[str]], s: Survey, cfg: NearConfig, dropped: list,
               width: Width) -> Level:
    counted = ray.get([_count_frames.remote(table, g, dropped) for g in groups])
    alive, entries = sum(c[0] for c in counted), sum(c[1] for c in counted)
    if alive < 2:
        return Level([], 0)
    idx_bits = max(1, (entries - 1).bit_length())
    p = width(entries)
    pairs, nodes = [], []
    for start, bits in band_layout(entries, cfg):
        if bits + idx_bits > 64:
            raise ValueError(f"band of {bits} bits + {idx_bits} index bits do not fit in 64")
        maps = [_near_map.options(num_returns=p).remote(table, g, dropped, s.quality, start, bits, idx_bits, p)
                for g in groups]
        maps = [[m] if p == 1 else list(m) for m in maps]
        for i in range(p):
            pr, nd = _near_reduce.remote(cfg, bits, *[m[i] for m in maps])
            pairs.append(pr)
            nodes.append(nd)
        del maps
    return _components("near", cfg, pairs, nodes)


# -- semantic --------------------------------------------------------------------------------------
def _sample(t: pa.Table, rate: float) -> pa.Table:
    if rate >= 1.0:
        return t
    cut = int(rate * 2**32)
    return t.filter(pa.array([zlib.crc32(k.encode()) < cut for k in t["item_id"].to_pylist()], pa.bool_()))


@ray.remote(num_cpus=1)
def _sample_map(table: TableRef, uris: list[str], dropped: list, rate: float) -> pa.Table:
    return _sample(_read(table, uris, ["item_id", "clip_embedding"], dropped), rate)


@ray.remote(num_cpus=1)
def _fit_task(k: int, cfg: SemanticConfig, *tables: pa.Table) -> np.ndarray:
    t = pa.concat_tables([x for x in tables if x.num_rows]).sort_by("item_id")
    emb = l2_normalize(_list_matrix(t["clip_embedding"], np.float32))
    return spherical_kmeans(emb, k, cfg.kmeans_iters, cfg.seed, cfg.kmeans_points_per_centroid)


@ray.remote(num_cpus=1)
def _count_alive(table: TableRef, uris: list[str], dropped: list) -> int:
    return _read(table, uris, ["item_id"], dropped).num_rows


@ray.remote(num_cpus=1)
def _semantic_map(table: TableRef, uris: list[str], dropped: list, quality: str, centroids, top: int, n: int):
    t = _read(table, uris, ["item_id", "clip_embedding", quality, "duration_s"], dropped)
    if centroids is None:  # one partition
        label = np.zeros((t.num_rows, 1), np.int64)
    else:
        label = nearest_centroids(l2_normalize(_list_matrix(t["clip_embedding"], np.float32)), centroids, top)
    row = np.repeat(np.arange(t.num_rows, dtype=np.int64), label.shape[1])
    label = label.reshape(-1)
    out = pa.table({"label": label, "key": t["item_id"].take(pa.array(row)), "q": _floats(t[quality])[row],
                    "d": _floats(t["duration_s"])[row], "emb": t["clip_embedding"].take(pa.array(row))})
    return _split(out, label % n, n)


@ray.remote(num_cpus=1, num_returns=2)
def _semantic_reduce(cfg: SemanticConfig, *tables: pa.Table):
    t = pa.concat_tables(tables)
    if t.num_rows < 2:
        return _pairs_table([], [], []), _nodes_table(t.slice(0, 0), "emb")
    t = t.sort_by([("label", "ascending"), ("key", "ascending")])  # rows of a partition in key order
    keys = np.asarray(t["key"].to_pylist(), dtype=str)
    emb = l2_normalize(_list_matrix(t["emb"], np.float32))
    labels = t["label"].to_numpy()
    cuts = np.flatnonzero(np.diff(labels)) + 1
    ai, bi = [], []
    for rows in np.split(np.arange(t.num_rows), cuts):
        if rows.size >= 2:
            i, j, _ = partition_pairs(emb, rows, cfg.threshold, cfg.block)
            ai.append(i)
            bi.append(j)
    a = np.concatenate(ai) if ai else np.zeros(0, np.int64)
    b = np.concatenate(bi) if bi else np.zeros(0, np.int64)
    ends = np.unique(np.concatenate([a, b]))
    return _pairs_table(keys[a], keys[b], np.ones(a.size)), _nodes_table(t.take(pa.array(ends)), "emb")


def semantic_level(table: TableRef, groups: list[list[str]], s: Survey, cfg: SemanticConfig, dropped: list,
                   width: Width) -> Level:
    alive = sum(ray.get([_count_alive.remote(table, g, dropped) for g in groups]))
    if alive < 2:
        return Level([], 0)
    k = cfg.n_clusters if cfg.n_clusters is not None else round(math.sqrt(alive))
    k = max(1, min(int(k), cfg.max_clusters, alive))
    centroids, top = None, 1
    if not (k == 1 or (cfg.n_clusters is None and alive < cfg.single_partition_below)):
        rate = min(1.0, FIT_SAMPLE_MAX / alive)
        centroids = _fit_task.remote(k, cfg, *[_sample_map.remote(table, g, dropped, rate) for g in groups])
        top = max(1, min(cfg.assign_top, k))
    p = width(alive * top) if centroids is not None else 1
    maps = [_semantic_map.options(num_returns=p).remote(table, g, dropped, s.quality, centroids, top, p)
            for g in groups]
    maps = [[m] if p == 1 else list(m) for m in maps]
    got = [_semantic_reduce.remote(cfg, *[m[i] for m in maps]) for i in range(p)]
    return _components("semantic", cfg, [g[0] for g in got], [g[1] for g in got])


# -- components: one level's groups and what each keeps --------------------------------------------
def _pairs_table(a, b, s) -> pa.Table:
    return pa.table({"a": pa.array(list(a), pa.string()), "b": pa.array(list(b), pa.string()),
                     "s": pa.array(np.asarray(s, np.float64), pa.float64())})


def _nodes_table(t: pa.Table, vector: str) -> pa.Table:
    return t.select(["key", "q", "d", vector]).rename_columns(["key", "q", "d", "vec"])


@ray.remote(num_cpus=1)
def _components_task(level: str, cfg, pairs: list, nodes: list) -> tuple[pa.Table, int]:
    pairs = pa.concat_tables(ray.get(pairs))
    if not pairs.num_rows:
        return DECISIONS.empty_table(), 0
    nodes = pa.concat_tables(ray.get(nodes))
    keys, first = np.unique(np.asarray(nodes["key"].to_pylist(), dtype=str), return_index=True)
    nodes = nodes.take(pa.array(first))
    a = np.searchsorted(keys, np.asarray(pairs["a"].to_pylist(), dtype=str))
    b = np.searchsorted(keys, np.asarray(pairs["b"].to_pylist(), dtype=str))
    labels = components(keys.size, a, b)
    kept = keep_best(labels, nodes["q"].to_numpy(), nodes["d"].to_numpy(), keys)
    drop = np.flatnonzero(kept != np.arange(keys.size))
    to = kept[drop]
    if level == "near":
        ph = _list_matrix(nodes["vec"], np.uint64)
        sim = agreement(ph[drop], ph[to], cfg.max_hamming, cfg.max_shift) if drop.size else np.zeros(0)
    else:
        emb = _list_matrix(nodes["vec"], np.float32)
        sim = np.einsum("ij,ij->i", l2_normalize(emb[drop]), l2_normalize(emb[to])) if drop.size else np.zeros(0)
    out = pa.table({"key": keys[drop], "level": [level] * drop.size, "duplicate_of": keys[to],
                    "similarity": np.asarray(sim, np.float64)}, schema=DECISIONS)
    return out, out.num_rows


def _components(level: str, cfg, pairs: list, nodes: list) -> Level:
    ref, n = _components_task.options(num_returns=2).remote(level, cfg, pairs, nodes)
    return Level([ref], ray.get(n))


# -- write -----------------------------------------------------------------------------------------
_decision_maps: dict[str, dict] = {}


def _decision_map(refs: list) -> dict:
    key = ",".join(r.hex() for r in refs)
    if key not in _decision_maps:
        _decision_maps.clear()
        got: dict = {}
        for t in ray.get(refs):
            for k, lv, to, s in zip(*(t[c].to_pylist() for c in DECISIONS.names)):
                got[k] = (lv, to, s)
        _decision_maps[key] = got
    return _decision_maps[key]


def _write_rows(batch: pa.Table, decisions: list) -> pa.Table:
    found = _decision_map(decisions) if decisions else {}
    got = [found.get(k) for k in batch["item_id"].to_pylist()]
    status = [REJECTED if d else s for d, s in zip(got, batch["status"].to_pylist())]
    reason = [dedup_reason(*d) if d else r for d, r in zip(got, batch["reason"].to_pylist())]
    t = batch.set_column(batch.schema.get_field_index("stage"), "stage", pa.array(["dedup"] * batch.num_rows))
    t = t.set_column(t.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    t = t.set_column(t.schema.get_field_index("reason"), "reason", pa.array(reason, pa.string()))
    t = t.append_column("duplicate_of", pa.array([d[1] if d else None for d in got], pa.string()))
    t = t.append_column("dedup_level", pa.array([d[0] if d else None for d in got], pa.string()))
    t = t.append_column("dedup_similarity", pa.array([float(d[2]) if d else None for d in got], pa.float64()))
    return t.select(STAGE_SCHEMAS["dedup"].names).cast(STAGE_SCHEMAS["dedup"])


# -- the stage ---------------------------------------------------------------------------------------
def shuffle_width(entries: int) -> int:
    """Reduce partitions for a shuffle of ``entries`` rows."""
    return max(1, min(MAX_PARTITIONS, math.ceil(entries / ROWS_PER_REDUCE)))


def run_distributed(policy: Policy, store: StageStore, progress: Callable[[int, int], None] | None = None,
                    partitions: int | None = None) -> tuple[int, int]:
    """(ok inputs, of which skipped as already deduplicated); see the module doc. ``partitions``
    fixes every shuffle's width (tests; default: from the row counts)."""
    table = TableRef(store.output, store.storage.s3)
    parts = store.parts(INPUT)
    per_map = max(1, ROWS_PER_MAP // max(1, policy.runtime.part_rows))
    groups = [parts[i:i + per_map] for i in range(0, len(parts), per_map)]
    quality = policy.dedup.quality_score
    s = survey(table, groups, quality if quality in STAGE_SCHEMAS[INPUT].names else FALLBACK_QUALITY)
    if store.finished("dedup", INPUT) == s.n:
        return s.n, s.n
    store.clear("dedup")
    if progress:
        progress(0, s.n)
    levels: list[Level] = []
    cfg, dcfg = policy.dedup, dedup_config(policy)
    width: Width = shuffle_width if partitions is None else (lambda entries: partitions)
    if cfg.enabled and s.n >= 2:
        if dcfg.exact.enabled:
            levels.append(exact_level(table, groups, s, width))
        if dcfg.near.enabled and s.frames:
            levels.append(near_level(table, groups, s, dcfg.near, [r for lv in levels for r in lv.refs], width))
        if dcfg.semantic.enabled and s.dims:
            levels.append(semantic_level(table, groups, s, dcfg.semantic, [r for lv in levels for r in lv.refs], width))
    decisions = [r for lv in levels for r in lv.refs]
    ds = ray_tables.read_table(store, INPUT, ok_only=True)
    if ds is not None and s.n:
        ds = ds.map_batches(_write_rows, fn_kwargs={"decisions": decisions}, batch_format="pyarrow", batch_size=None)
        written = ray_tables.write_parts(ds, store, "dedup", "item_id", policy.runtime.part_rows,
                                         (lambda d: progress(d, s.n)) if progress else None)
        if written.inputs != s.n:
            raise RuntimeError(f"dedup: wrote {written.inputs} rows for {s.n} clips; a write task failed")
    store.mark_finished("dedup", INPUT, s.n)
    return s.n, 0
