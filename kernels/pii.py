"""PII redaction over an Arrow batch: e-mail addresses, credit-card numbers (Luhn-checked), IPv6
and IPv4 addresses and phone numbers replaced by placeholders, counted per kind.

Every kind is one RE2 pattern applied to the whole batch with pyarrow.compute (count, then
replace); no Python runs per document. Credit cards need a checksum no regex can express: each
candidate (13-19 digits, single spaces or dashes between them) is first wrapped in sentinels by
one regex replace, the batch is split on them, the Luhn check runs in numpy over the candidate
pieces only, the valid ones become the placeholder and the pieces are joined back per document.
`redact_ref` is the plain-Python twin (Python's `re`; the patterns use ASCII classes so both
engines read them alike).

Kinds run in KINDS order, so a card number is never half-taken by the phone pattern and an
address's digits never by the IP patterns. Known limits: dotted version strings with four
parts that are each <= 255 read as IPv4 addresses; hex words joined by "::" can read as IPv6;
a digit run that fails the Luhn check can still match the phone pattern in part.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("email", "credit_card", "ipv6", "ipv4", "phone")
PLACEHOLDERS = {"email": "<EMAIL>", "credit_card": "<CREDIT_CARD>", "ipv6": "<IP_ADDRESS>",
                "ipv4": "<IP_ADDRESS>", "phone": "<PHONE>"}

_H = "[0-9A-Fa-f]{1,4}"
_OCT = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
PATTERNS = {
    "email": r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
    "credit_card": r"\b[0-9](?:[ \-]?[0-9]){12,18}\b",
    "ipv6": (r"(?:\b(?:" + _H + r":){7}" + _H + r"\b"
             r"|\b(?:" + _H + r":){1,6}(?::" + _H + r"){1,6}\b"
             r"|\b(?:" + _H + r":){1,7}:"
             r"|::(?:" + _H + r":){0,6}" + _H + r"\b)"),
    "ipv4": r"\b" + _OCT + r"(?:\." + _OCT + r"){3}\b",
    # Numbers in groups with separators: an optional +CC, then "(area) 123-4567" or three groups
    # ("020 7946 0958", "555-123-4567"); a bare digit run is never a phone number.
    "phone": (r"(?:\+[0-9]{1,3}[ .\-]?)?(?:\([0-9]{1,4}\)[ .\-]?[0-9]{3,4}[ .\-][0-9]{3,4}"
              r"|\b[0-9]{2,4}[ .\-][0-9]{3,4}[ .\-][0-9]{3,4})\b"),
}
_SENT = "\ue000"  # a private-use character marks card candidates while they are checked


def luhn_valid(digits: pa.Array) -> np.ndarray:
    """Luhn check of every string of ASCII digits in `digits`, in numpy."""
    if isinstance(digits, pa.ChunkedArray):
        digits = digits.combine_chunks()
    n = len(digits)
    if n == 0:
        return np.zeros(0, dtype=bool)
    bufs = digits.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=digits.offset * 4).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
    lens = off[1:] - off[:-1]
    width = int(lens.max()) if n else 0
    k = np.arange(width)[None, :]                    # position from the right
    inside = k < lens[:, None]
    idx = np.where(inside, off[1:, None] - 1 - k, 0)
    d = np.where(inside, data[idx].astype(np.int64) - 48, 0)
    dbl = d * 2
    d = np.where(k % 2 == 1, np.where(dbl > 9, dbl - 9, dbl), d)
    return (d.sum(1) % 10 == 0) & (lens >= 13)


def _cards(texts: pa.Array, placeholder: str) -> tuple[pa.Array, np.ndarray]:
    n = len(texts)
    marked = pc.replace_substring_regex(texts, "(" + PATTERNS["credit_card"] + ")", _SENT + r"\1" + _SENT)
    parts = pc.split_pattern(marked, _SENT)
    flat = pc.list_flatten(parts)
    parent = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = parts.offsets.to_numpy()[:-1].astype(np.int64) - int(parts.offsets[0].as_py())
    pos = np.arange(len(flat)) - starts[parent]
    cand = np.flatnonzero(pos % 2 == 1)              # between two sentinels
    valid = np.zeros(len(flat), dtype=bool)
    if len(cand):
        digits = pc.replace_substring_regex(flat.take(pa.array(cand)), "[^0-9]", "")
        valid[cand] = luhn_valid(digits)
    flat = pc.if_else(pa.array(valid), pa.scalar(placeholder), flat)
    offsets = parts.offsets
    if parts.offset or int(offsets[0].as_py()):
        offsets = pc.subtract(offsets, offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, flat), "")
    return joined, np.bincount(parent[valid], minlength=n).astype(np.int64)


def redact(texts, kinds=KINDS, placeholders=None) -> tuple[pa.Array, dict[str, np.ndarray]]:
    """(redacted texts, count per document of each kind)."""
    ph = {**PLACEHOLDERS, **(placeholders or {})}
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = texts.cast(pa.string())
    nulls = texts.is_null()
    texts = pc.fill_null(texts, "")
    counts: dict[str, np.ndarray] = {}
    for kind in KINDS:
        if kind not in kinds:
            continue
        if kind == "credit_card":
            texts, counts[kind] = _cards(texts, ph[kind])
            continue
        counts[kind] = pc.count_substring_regex(texts, PATTERNS[kind]).to_numpy(zero_copy_only=False).astype(np.int64)
        if counts[kind].any():
            texts = pc.replace_substring_regex(texts, PATTERNS[kind], ph[kind].replace("\\", "\\\\"))
    return pc.if_else(nulls, pa.nulls(len(texts), pa.string()), texts), counts


def luhn_ref(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return len(digits) >= 13 and total % 10 == 0


def redact_ref(text: str, kinds=KINDS, placeholders=None) -> tuple[str, dict[str, int]]:
    ph = {**PLACEHOLDERS, **(placeholders or {})}
    counts = {}
    for kind in KINDS:
        if kind not in kinds:
            continue
        pat = re.compile(PATTERNS[kind], re.ASCII)
        if kind == "credit_card":
            hits = 0

            def sub(m):
                nonlocal hits
                if luhn_ref(re.sub("[^0-9]", "", m.group(0))):
                    hits += 1
                    return ph[kind]
                return m.group(0)

            text = pat.sub(sub, text)
            counts[kind] = hits
        else:
            counts[kind] = len(pat.findall(text))
            text = pat.sub(lambda m: ph[kind], text)
    return text, counts
