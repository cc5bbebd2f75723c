"""Signing: one pass over the texts -- normalise, shingle, MinHash, band -- shared by both paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from thresher.stages.arrow_bytes import binary_from_buffers

if TYPE_CHECKING:
    from thresher.stages.fuzzy_dedup import Config

# Per-document table made in one pass over the texts: `s` is the sorted shingle-hash set as
# uint64 bytes (verify) or the uint32 signature (no verify), `bk` the LSH bucket keys.
SIGNED = "id string, _length int, s binary, bk array<bigint>"
# ... and the survivor rule's score passed through (sign_batches with quality=True).
SIGNED_Q = SIGNED + ", _quality double"
_MAX_BINARY = 2**31 - 1  # bytes of one Arrow binary column (int32 offsets)


def row_chunks(byte_off: np.ndarray):
    """Row ranges whose bytes fit one binary column (a batch of huge documents is split)."""
    lo, n = 0, len(byte_off) - 1
    while lo < n:
        hi = int(np.searchsorted(byte_off, byte_off[lo] + _MAX_BINARY, side="right")) - 1
        if hi <= lo:
            from thresher.schemas.errors import StageError

            raise StageError("fuzzy_dedup: one document has more than 2 GiB of shingle hashes")
        hi = min(hi, n)
        yield lo, hi
        lo = hi


def sign(text, cfg: Config, a, b, bands: int, rows: int):
    """One Arrow batch of texts -> (has: rows with shingles, off, h: the shingle sets (verify)
    or hashes of every row, sig, bk: signatures and bucket keys of the rows in `has`)."""
    from thresher.kernels.minhash import band_hashes, minhash_signatures, seed64
    from thresher.stages.text import shingle_hashes, shingle_sets

    # A multiset has the signature of its set, so signatures come from the sets when the sets
    # are kept anyway.
    off, h = (shingle_sets if cfg.verify else shingle_hashes)(text, cfg.shingle, cfg.normalise)
    has = np.flatnonzero(np.diff(off) > 0)
    if len(has) == 0:
        return has, off, h, None, None
    sig = minhash_signatures(off, h, a, b)[has]
    return has, off, h, sig, band_hashes(sig, bands, rows, seed64(int(cfg.seed or 0)))


def sign_batches(cfg: Config, bands: int, rows: int, quality: bool = False):
    """mapInArrow function: (id, text) -> one row per document that has shingles: (id, its
    length in characters, `s`, its `bands` bucket keys), SIGNED; with `quality`, (id, text,
    _quality) -> SIGNED_Q. Normalising, shingling, signatures and band hashes all happen here,
    once per document."""
    num_perm, seed, verify = cfg.num_perm, int(cfg.seed or 0), cfg.verify

    def fn(batches):
        import pyarrow.compute as pc

        from thresher.kernels.minhash import permutations
        from thresher.kernels.threads import limit_task_threads

        limit_task_threads()
        a, b = permutations(num_perm, seed)
        for batch in batches:
            text = batch.column(1)
            has, off, h, sig, bk = sign(text, cfg, a, b, bands, rows)
            if len(has) == 0:
                continue
            if verify:
                # Documents without shingles hold no values, so the kept sets stay contiguous.
                byte_off = np.append(off[has], off[-1]) * 8
                data = h.view(np.uint8)
            else:
                byte_off = np.arange(len(has) + 1, dtype=np.int64) * (num_perm * 4)
                data = sig.reshape(-1).view(np.uint8)
            ids = batch.column(0).take(pa.array(has))
            length = pc.fill_null(pc.utf8_length(text), 0).take(pa.array(has)).cast(pa.int32())
            q = batch.column(2).take(pa.array(has)).cast(pa.float64()) if quality else None
            for lo, hi in row_chunks(byte_off):
                s = binary_from_buffers(byte_off[lo:hi + 1] - byte_off[lo], data[byte_off[lo]:byte_off[hi]])
                keys = pa.ListArray.from_arrays(pa.array(np.arange(hi - lo + 1, dtype=np.int32) * bands),
                                                pa.array(bk[lo:hi].reshape(-1)))
                cols = [ids.slice(lo, hi - lo), length.slice(lo, hi - lo), s, keys]
                yield pa.RecordBatch.from_arrays(cols + ([q.slice(lo, hi - lo)] if quality else []),
                                                 names=["id", "_length", "s", "bk"] + (["_quality"] if quality else []))

    return fn
