"""Validation loss per aspect bucket: the sums a validation pass keeps, how they are reduced across
workers, and the metric-row columns they become.

Batches hold one aspect bucket each (training/data.py), and the buckets differ in shape (16x9 vs
9x16 latents, different position tables), so a model can learn one bucket and not another while the
pooled validation loss hides it. A pass therefore keeps a loss sum and a sample count per bucket
beside the total.

Columns (flat, so ``metrics.jsonl`` rows and ``metrics.parquet`` stay one scalar per cell):

* ``val_loss_<kind>``            the pooled loss of a kind (image / video), as before;
* ``val_loss_<kind>/<bucket>``   that kind's loss over the bucket's samples, e.g. ``val_loss_video/16x9``;
* ``val_count_<kind>/<bucket>``  how many samples it is over (its weight: a loss over 1 sample is noise).

The count-weighted mean of a kind's bucket losses is its pooled loss. A bucket the pass did not
reach (``val_batches`` caps it) has no column in that row. Kept free of torch so the report and the
CLI can read the names without importing the training stack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

LOSS_PREFIX = "val_loss_"
COUNT_PREFIX = "val_count_"
SEP = "/"  # between a kind's column and its bucket; aspect buckets look like 16x9, never hold a '/'


def loss_key(kind: str) -> str:
    return f"{LOSS_PREFIX}{kind}"


def bucket_loss_key(kind: str, bucket: str) -> str:
    return f"{LOSS_PREFIX}{kind}{SEP}{bucket}"


def bucket_count_key(kind: str, bucket: str) -> str:
    return f"{COUNT_PREFIX}{kind}{SEP}{bucket}"


def is_bucket_key(key: str) -> bool:
    """A per-bucket column (loss or count), as opposed to a kind's pooled ``val_loss_<kind>``."""
    return SEP in key and (key.startswith(LOSS_PREFIX) or key.startswith(COUNT_PREFIX))


def parse_bucket_key(key: str) -> tuple[str, str] | None:
    """(kind, bucket) of a ``val_loss_<kind>/<bucket>`` column; None for any other column."""
    if not (key.startswith(LOSS_PREFIX) and SEP in key):
        return None
    kind, _, bucket = key[len(LOSS_PREFIX):].partition(SEP)
    return (kind, bucket) if kind and bucket else None


@dataclass
class ValSums:
    """Loss sums and sample counts of one kind's validation pass, pooled and per bucket.

    ``buckets`` must be the same sorted list on every worker: ``reduce`` sends one vector whose
    layout it fixes, and every worker must take part in that one collective. So it comes from what
    all workers know alike (the index and the stage's spec), never from the batches one worker
    happened to get (with several workers a bucket may reach only some of them, or none)."""

    buckets: list[str]
    total: float = 0.0
    count: int = 0
    bucket_sums: dict[str, float] = field(default_factory=dict)
    bucket_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"buckets must be sorted and unique (the reduction's layout): {self.buckets}")
        for b in self.buckets:
            self.bucket_sums.setdefault(b, 0.0)
            self.bucket_counts.setdefault(b, 0)

    def add(self, bucket: str, mean_loss: float, n: int) -> None:
        """A batch of ``n`` samples of ``bucket`` whose mean loss is ``mean_loss``."""
        if bucket not in self.bucket_sums:
            # Cannot happen when buckets come from the same plan as the batches; were it to, the
            # vector would no longer match the other workers' one, so stop here rather than hang.
            raise ValueError(f"validation batch of bucket {bucket!r}, not among the planned buckets {self.buckets}")
        self.total += mean_loss * n
        self.count += n
        self.bucket_sums[bucket] += mean_loss * n
        self.bucket_counts[bucket] += n

    def vector(self) -> list[float]:
        """[total, count, sum per bucket..., count per bucket...] in ``buckets`` order."""
        return ([self.total, float(self.count)] + [self.bucket_sums[b] for b in self.buckets]
                + [float(self.bucket_counts[b]) for b in self.buckets])

    @classmethod
    def from_vector(cls, buckets: list[str], values: list[float]) -> ValSums:
        n = len(buckets)
        if len(values) != 2 + 2 * n:
            raise ValueError(f"expected {2 + 2 * n} values for {n} bucket(s), got {len(values)}")
        return cls(list(buckets), float(values[0]), int(round(values[1])),
                   {b: float(values[2 + i]) for i, b in enumerate(buckets)},
                   {b: int(round(values[2 + n + i])) for i, b in enumerate(buckets)})

    def reduce(self, all_reduce: Callable[[list[float]], list[float]]) -> ValSums:
        """Summed over workers with one collective (``all_reduce`` sums a list of floats across
        them; the identity with one worker)."""
        return ValSums.from_vector(self.buckets, all_reduce(self.vector()))

    def row(self, kind: str) -> dict[str, float | int]:
        """The pass's columns for ``kind``: nothing when no sample was scored (as before: no val
        loss of that kind), buckets without samples left out."""
        if not self.count:
            return {}
        out: dict[str, float | int] = {loss_key(kind): self.total / self.count}
        for b in self.buckets:
            if self.bucket_counts[b]:
                out[bucket_loss_key(kind, b)] = self.bucket_sums[b] / self.bucket_counts[b]
                out[bucket_count_key(kind, b)] = self.bucket_counts[b]
        return out


def bucket_losses(row: Mapping[str, object], kind: str) -> dict[str, tuple[float, int | None]]:
    """{bucket: (loss, count)} of ``kind`` in a metric row: finite losses, with their sample count
    (None where the row carries losses only, as a stage outcome's ``val`` does)."""
    out: dict[str, tuple[float, int | None]] = {}
    for key, value in row.items():
        parsed = parse_bucket_key(key)
        if parsed is None or parsed[0] != kind:
            continue
        loss, count = _finite(value), _finite(row.get(bucket_count_key(kind, parsed[1])))
        if loss is not None and (count is None or count > 0):
            out[parsed[1]] = (loss, None if count is None else int(count))
    return out


def _finite(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def format_val(val: Mapping[str, object], digits: int = 4) -> str:
    """``video 0.1234 (16x9 0.1200, 9x16 0.1300)``: each kind's pooled loss with its buckets in
    brackets, for log lines and stage tables (one bucket list per kind stays readable where one
    column per bucket would not)."""
    parts = []
    for key in sorted(k for k in val if k.startswith(LOSS_PREFIX) and not is_bucket_key(k)):
        value = val[key]
        if value is None:
            continue
        kind = key[len(LOSS_PREFIX):]
        text = f"{kind} {float(value):.{digits}f}"  # type: ignore[arg-type]
        buckets = bucket_losses(val, kind)
        if buckets:
            text += " (" + ", ".join(f"{b} {loss:.{digits}f}" for b, (loss, _) in sorted(buckets.items())) + ")"
        parts.append(text)
    return ", ".join(parts)
