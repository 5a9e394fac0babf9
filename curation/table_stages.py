"""Stages over the whole table rather than one clip at a time: deduplication, concept balancing
and sharding.

A duplicate or a cluster size is a property of the set, so these stages read every clip that
passed the stage before, decide, and write their table in one go. They are deterministic (same
input rows -> same output), so a resume simply recomputes an incomplete table; the heavy parts
(the k-means and the pairwise comparisons) are numpy/faiss, and semantic dedup spreads its
partitions over Ray from ``dedup.ray_min_items`` clips.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

from reelflow.curation.policy import Policy
from reelflow.curation.records import OK, REJECTED
from reelflow.curation.stage_unit import Stage


class TableStage(Stage):
    """A stage whose rows depend on the whole input table: it reads every row that passed its
    input stage, decides, and writes its table in one go (all or nothing: a table that does not
    cover exactly the current inputs is recomputed, deterministically)."""

    shape = "table"

    @abstractmethod
    def run(self, rows: list[dict]) -> list[dict]:
        """Output rows for all the input rows that passed the previous stage."""


def _embeddings(rows: list[dict], column: str) -> np.ndarray | None:
    """(n, d) float32 of a list column, or None unless every row has a vector of one size."""
    vecs = [r.get(column) for r in rows]
    if not rows or any(v is None for v in vecs) or len({len(v) for v in vecs}) != 1:
        return None
    return np.asarray(vecs, np.float32)


class DedupStage(TableStage):
    """Exact, near and semantic duplicates among the clips the quality rules kept.

    Each duplicate becomes ``rejected`` with ``duplicate_of`` = the clip its group keeps (the
    best by ``dedup.quality_score``, then the longest, then the smallest key) and a reason like
    ``dedup: near duplicate of <key> (frame agreement 0.88)``.
    """

    name = "dedup"
    input_stage = "score"

    def run(self, rows: list[dict]) -> list[dict]:
        from reelflow.curation.dedup import run_dedup
        from reelflow.curation.dedup.semantic import ray_map_partitions

        cfg = self.policy.dedup
        out = [{**r, "stage": self.name, "duplicate_of": None, "dedup_level": None, "dedup_similarity": None}
               for r in rows]
        if not cfg.enabled or len(rows) < 2:
            return out
        quality = [_num(r.get(cfg.quality_score)) for r in rows]
        if all(math.isnan(q) for q in quality):  # e.g. no aesthetics weights: rank by sharpness
            quality = [_num(r.get(FALLBACK_QUALITY)) for r in rows]
        phashes = np.asarray([r["phashes"] for r in rows], np.uint64) if all(r.get("phashes") for r in rows) else None
        emb = _embeddings(rows, "clip_embedding")
        mapper = ray_map_partitions if emb is not None and len(rows) >= cfg.ray_min_items else None
        decisions = run_dedup(
            keys=[r["item_id"] for r in rows], quality=quality, duration=[_num(r.get("duration_s")) for r in rows],
            signatures=[r.get("content_signature") for r in rows], phashes=phashes, embeddings=emb,
            cfg=dedup_config(self.policy), map_partitions=mapper,
        )
        by_key = {d.key: d for d in decisions}
        for r in out:
            d = by_key.get(r["item_id"])
            if d is None:
                continue
            r.update(status=REJECTED, reason=dedup_reason(d.level, d.duplicate_of, d.similarity),
                     duplicate_of=d.duplicate_of, dedup_level=d.level, dedup_similarity=float(d.similarity))
        return out

    def own_expectations(self, expected_inputs: set[str]) -> list:
        import great_expectations.expectations as gxe

        from reelflow.curation.gates import OK_ROWS, where

        rejected = where('status=="rejected"')
        # A duplicate names the clip kept in its place, which is one of this stage's own inputs.
        return [
            gxe.ExpectColumnValuesToNotBeNull(column="duplicate_of", **rejected),
            gxe.ExpectColumnValuesToBeInSet(column="duplicate_of", value_set=sorted(expected_inputs) or [""], **rejected),
            gxe.ExpectColumnValuesToBeNull(column="duplicate_of", **where(OK_ROWS)),
            gxe.ExpectColumnValuesToBeInSet(column="dedup_level", value_set=["exact", "near", "semantic"], **rejected),
            gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok", "rejected"]),
        ]


FALLBACK_QUALITY = "sharpness"  # ranks duplicates when no clip has a dedup.quality_score
_UNIT = {"exact": "identical decoded content", "near": "frame agreement", "semantic": "cosine"}


def dedup_reason(level: str, duplicate_of: str, similarity: float) -> str:
    detail = _UNIT[level] if level == "exact" else f"{_UNIT[level]} {similarity:.3f}"
    return f"dedup: {level} duplicate of {duplicate_of} ({detail})"


def dedup_config(policy: Policy):
    """The dedup levels' settings from the policy (``curation.dedup.DedupConfig``)."""
    from reelflow.curation.dedup import DedupConfig
    from reelflow.curation.dedup.exact import ExactConfig
    from reelflow.curation.dedup.near import NearConfig
    from reelflow.curation.dedup.semantic import SemanticConfig

    cfg = policy.dedup
    return DedupConfig(
        exact=ExactConfig(enabled=cfg.exact),
        near=NearConfig(enabled=cfg.near.enabled, max_hamming=cfg.near.max_hamming, min_agreement=cfg.near.min_agreement),
        semantic=SemanticConfig(enabled=cfg.semantic.enabled, threshold=cfg.semantic.threshold),
    )


class BalanceStage(TableStage):
    """Concept balancing: k-means over each clip's video-text embedding, sampling weight
    proportional to 1/sqrt(cluster size) (Movie Gen), normalised to mean 1.

    The embedding is the open_clip image embedding concatenated with the MiniLM caption embedding
    (each L2-normalised) when both exist, else whichever every clip has. Nothing is dropped: the
    weights go to ``index.parquet`` and each sample's ``.json`` for the training loader.
    """

    name = "balance"
    input_stage = "caption"

    def run(self, rows: list[dict]) -> list[dict]:
        from reelflow.curation.balance import BalanceConfig, sampling_weights

        cfg = self.policy.balance
        out = [{**r, "stage": self.name, "status": OK, "reason": None} for r in rows]
        parts = [e for e in (_embeddings(rows, "clip_embedding"), _embeddings(rows, "caption_embedding")) if e is not None]
        if not cfg.enabled or not rows or not parts:
            for r in out:
                r.update(cluster_id=None, cluster_size=None, sampling_weight=1.0)
            return out
        emb = np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True).clip(1e-12) for p in parts], axis=1)
        ids, weights = sampling_weights(emb, BalanceConfig(n_clusters=cfg.clusters, merge_threshold=cfg.merge_threshold,
                                                           seed=cfg.seed))
        sizes = np.bincount(ids)
        for r, c, w in zip(out, ids.tolist(), weights.tolist()):
            r.update(cluster_id=int(c), cluster_size=int(sizes[c]), sampling_weight=float(w))
        return out

    def own_expectations(self, expected_inputs: set[str]) -> list:
        import great_expectations.expectations as gxe

        ex = [
            gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"]),
            gxe.ExpectColumnValuesToBeBetween(column="sampling_weight", min_value=0, strict_min=True),
            gxe.ExpectColumnValuesToNotBeNull(column="sampling_weight"),
            gxe.ExpectColumnValuesToBeBetween(column="cluster_size", min_value=1),
        ]
        if expected_inputs:  # 1/sqrt(size) weights are normalised to mean 1 over the kept clips
            ex.append(gxe.ExpectColumnMeanToBeBetween(column="sampling_weight", min_value=0.999, max_value=1.001))
        return ex


class ShardStage(Stage):
    """The accepted clips written as WebDataset shards by aspect x duration bucket
    (``shard.plan_shards``). Membership depends on the whole set, so it is a table stage; its rows
    are the shards' samples, which the Ray adapter has the workers write (``pipeline.run_shard_stage``)."""

    name = "shard"
    shape = "table"
    input_stage = "balance"

    def own_expectations(self, expected_inputs: set[str]) -> list:
        import great_expectations.expectations as gxe

        from reelflow.curation.gates import SHARD_PATH_REGEX, scored_expectations

        return [
            *scored_expectations(self.policy),
            gxe.ExpectColumnValuesToBeInSet(column="status", value_set=["ok"]),
            gxe.ExpectColumnValuesToMatchRegex(column="shard", regex=SHARD_PATH_REGEX),
            gxe.ExpectColumnValuesToNotBeNull(column="bucket"),
            gxe.ExpectColumnValuesToNotBeNull(column="caption"),
        ]


def _num(v) -> float:
    return float("nan") if v is None else float(v)

