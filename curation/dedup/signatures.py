"""Per-clip signatures for deduplication, computed from the shared analysis frames.

Input everywhere: ``frames``, a ``(T, H, W, 3)`` uint8 RGB array as produced by
``curation.scoring.frames.decode_for_analysis(path, short_side=256, fps=8).frames``.

``content_signature``
    Hex string (32 hex digits, a 128-bit blake2b digest) of the *decoded picture content*: every
    frame reduced to a small grayscale thumbnail and coarsely quantised. Two files that decode to
    the same pictures (a remux into another container, a copy under another name, the same
    bitstream with different metadata) get the same signature; the file bytes never enter it.
``frame_phashes``
    ``(n,)`` uint64: the 64-bit perceptual hash (DCT pHash, ``imagehash.phash``, hash_size 8) of
    ``n`` frames spread evenly over the clip. Distance between two hashes = Hamming distance in
    bits, 0..64; re-encodes and rescales typically stay within a few bits, unrelated pictures sit
    near 32.

Bit packing of a pHash: imagehash returns an 8x8 boolean matrix (row = vertical DCT frequency,
column = horizontal). It is flattened row-major and the first element becomes the most
significant bit, so ``int(str(imagehash.phash(img)), 16) == packed`` - the same number as
imagehash's own hex string.
"""

from __future__ import annotations

import hashlib

import cv2
import imagehash
import numpy as np
from PIL import Image

THUMB_SIZE = 16  # thumbnail side for the content signature: enough to tell clips apart
QUANT_SHIFT = 4  # keep the top 4 bits of each luma value: absorbs decoder rounding (+-1 level)


def _check(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"expected non-empty (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")


def content_signature(frames: np.ndarray) -> str:
    """blake2b-128 hex digest of the frames' quantised 16x16 grayscale thumbnails (and their count)."""
    _check(frames)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.int64(frames.shape[0]).tobytes())
    for f in frames:
        gray = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
        # INTER_AREA averages whole pixel blocks: stable under decoder noise, unlike point sampling.
        thumb = cv2.resize(gray, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
        h.update((thumb >> QUANT_SHIFT).tobytes())
    return h.hexdigest()


def sample_indices(t: int, n: int) -> np.ndarray:
    """``n`` frame indices spread evenly over ``t`` frames, first and last included (repeats when t < n)."""
    return np.linspace(0, t - 1, n).round().astype(np.int64)


def pack_phash(h: imagehash.ImageHash) -> np.uint64:
    """An imagehash 64-bit hash as a uint64, first matrix element = most significant bit."""
    bits = np.asarray(h.hash, dtype=bool).reshape(-1)
    if bits.size != 64:
        raise ValueError(f"expected a 64-bit hash, got {bits.size} bits")
    return np.packbits(bits).view(">u8")[0].astype(np.uint64)


def frame_phashes(frames: np.ndarray, n: int = 8) -> np.ndarray:
    """``(n,)`` uint64 pHashes of ``n`` evenly spaced frames (see the module docstring for the packing)."""
    _check(frames)
    if n < 1:
        raise ValueError("n must be >= 1")
    idx = sample_indices(frames.shape[0], n)
    return np.array([pack_phash(imagehash.phash(Image.fromarray(frames[i]))) for i in idx], dtype=np.uint64)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance (bits) between uint64 arrays (broadcasting)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: a popcount instruction
        return np.bitwise_count(x).astype(np.int64)
    x = np.ascontiguousarray(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)
