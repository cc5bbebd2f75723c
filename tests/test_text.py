"""Normalisation and shingling (stages/text.py): the hashes stand for the readable shingles."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.stages.text import (NormaliseConfig, ShingleConfig, normalise, shingle_hashes, shingle_sets,
                                  shingle_strings, string_buffers, text_hash128)

from conftest import CUT

TEXTS = [
    "Ｆｕｌｌ-width  ＴＥＸＴ\u00a0and\tTabs\n\nnewlines ﬁ ligature",
    "Hello, World! Hello, world!",
    "",
    "word",
    "two words",
    "Ελληνικό κείμενο με αρκετές λέξεις για να φτιάξει ένα ή δύο πεντάγραμμα σήμερα",
    "日本語のテキストには空白がありません",
    "  leading and trailing spaces  ",
    "Здравствуй, мир! Это текст на русском языке.",
]


def test_normalise_default():
    out = normalise(pa.array(TEXTS + [None])).to_pylist()
    assert out[0] == "full-width text and tabs newlines fi ligature"
    assert out[1] == "hello, world! hello, world!"
    assert out[2] == ""
    assert out[7] == "leading and trailing spaces"
    assert out[-1] is None


def test_normalise_options():
    arr = pa.array(["A,  b.\u3000C!"])
    assert normalise(arr, NormaliseConfig(strip_punctuation=True)).to_pylist() == ["a b c"]
    assert normalise(arr, NormaliseConfig(lowercase=False, collapse_whitespace=False)).to_pylist() == ["A,  b. C!"]
    raw = NormaliseConfig(nfkc=False, lowercase=False, collapse_whitespace=False)
    assert normalise(arr, raw).to_pylist() == ["A,  b.\u3000C!"]


def test_normalise_rejects_unknown_key():
    with pytest.raises(Exception, match="strip_punct"):
        NormaliseConfig(strip_punct=True)


def test_string_buffers_of_a_slice():
    arr = pa.array(["abc", "de", None, "fghi"]).slice(1, 3)
    off, data = string_buffers(arr)
    assert off.tolist() == [0, 2, 2, 6]
    assert bytes(data) == b"defghi"


@pytest.mark.parametrize("kind,n", [("word", 5), ("word", 1), ("word", 3), ("char", 5), ("char", 2)])
@pytest.mark.parametrize("norm", [NormaliseConfig(), NormaliseConfig(collapse_whitespace=False, strip_punctuation=True)])
def test_hashes_stand_for_shingle_strings(kind, n, norm):
    sc = ShingleConfig(kind=kind, n=n)
    off, h = shingle_sets(pa.array(TEXTS), sc, norm)
    for i, t in enumerate(TEXTS):
        assert off[i + 1] - off[i] == len(shingle_strings(t, sc, norm)), (kind, n, t)
    # The same shingle hashes alike in every document; different shingles differently.
    strings = [shingle_strings(t, sc, norm) for t in TEXTS]
    assert len(set(h.tolist())) == len(set().union(*strings))
    # Repeats within a document collapse in the set but not in the raw hashes.
    raw_off, _ = shingle_hashes(pa.array(TEXTS), sc, norm)
    assert (np.diff(raw_off) >= np.diff(off)).all()


def test_short_and_empty_documents():
    off, h = shingle_sets(pa.array(["", "one", "one two", "   "]), ShingleConfig(n=5))
    assert np.diff(off).tolist() == [0, 1, 1, 0]
    # A one-word document and a two-word one starting with it do not share their only shingle.
    assert h[0] != h[1]


def test_jaccard_from_hashes_equals_jaccard_from_strings():
    from thresher.kernels.minhash import jaccard_pairs

    t = pq.read_table(CUT / "head1500.parquet", columns=["text"]).slice(0, 400).column("text").combine_chunks()
    a, b = t.slice(0, 200), t.slice(1, 200)  # neighbours by id: many related packages
    oa, va = shingle_sets(a)
    ob, vb = shingle_sets(b)
    off = np.concatenate([oa, oa[-1] + ob[1:]])
    got = jaccard_pairs(off, np.concatenate([va, vb]), np.arange(200), np.arange(200, 400))
    want = []
    for x, y in zip(a.to_pylist(), b.to_pylist()):
        sx, sy = shingle_strings(x), shingle_strings(y)
        want.append(len(sx & sy) / len(sx | sy) if sx | sy else 0.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert max(want) > 0.7  # the slice does hold near-duplicates


def test_text_hash128_groups_normalised_equals():
    h1, h2 = text_hash128(pa.array(["Hello  World", "hello world", "hello world!", "HELLO\u00a0WORLD"]))
    assert h1[0] == h1[1] == h1[3] and h2[0] == h2[1] == h2[3]
    assert h1[2] != h1[1] and h2[2] != h2[1]
    assert h1.dtype == np.int64


def test_word_shingles_skip_the_whitespace_collapse_without_changing_a_hash():
    """Word shingles split on every character the collapse would replace, so shingling the
    collapsed text and shingling without the collapse give the same hashes: every Unicode
    whitespace and separator, runs of them, the information separators U+001C-U+001F, and
    corpus texts."""
    import sys

    ws = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF and chr(c).isspace()]
    ws += ["\u200b", "\u2028\u2029", "\x0b\x85", "\u3000 \u3000"]
    texts = [f"one{w}two{w}{w}three four{w} five six{w}" for w in ws] + TEXTS
    texts += pq.read_table(CUT / "head1500.parquet", columns=["text"]).slice(0, 300).column("text").to_pylist()
    arr = pa.array(texts)
    for norm in (NormaliseConfig(), NormaliseConfig(strip_punctuation=True, lowercase=False)):
        for n in (1, 3, 5):
            sc = ShingleConfig(n=n)
            o1, h1 = shingle_hashes(arr, sc, norm)
            o2, h2 = shingle_hashes(normalise(arr, norm), sc, normalised=True)
            np.testing.assert_array_equal(o1, o2)
            np.testing.assert_array_equal(h1, h2)


def test_tokens_kernel_matches_arrow_split():
    """The word-splitting kernel against Arrow's utf8_split_whitespace: every whitespace
    character alone, in runs and at the ends, other multi-byte characters sharing their lead
    bytes, empty and null texts, and corpus texts (as byte spans of the same buffer)."""
    import sys

    from thresher.stages.text import _tokens, _tokens_arrow

    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF and chr(c).isspace()]
    chars += ["\u2001", "\u200b", "\u2030", "\u2060", "\u1681", "\u3001", "\u00a1", "\u0100", "é", "日本"]
    texts = [f"{w}a{w}{w}bc d{w}" for w in chars] + ["", None, "   ", "x", " x ", "\u3000\u3000"]
    texts += pq.read_table(CUT / "head1500.parquet", columns=["text"]).slice(0, 500).column("text").to_pylist()
    arr = pa.array(texts, pa.string())
    data, (starts, ends), doc_off = _tokens(arr)
    want = [_arrow_words(t) for t in texts]
    got = [[bytes(data[s:e]).decode() for s, e in zip(starts[doc_off[d]:doc_off[d + 1]], ends[doc_off[d]:doc_off[d + 1]])]
           for d in range(len(texts))]
    assert got == want
    ref_data, spans, ref_off = _tokens_arrow(arr)
    rs, re_ = spans if isinstance(spans, tuple) else (spans[:-1], spans[1:])
    np.testing.assert_array_equal(doc_off, ref_off)
    assert [bytes(ref_data[s:e]) for s, e in zip(rs, re_)] == [bytes(data[s:e]) for s, e in zip(starts, ends)]


def _arrow_words(t):
    """Arrow's own split of one text, empty words dropped (the reference the kernel follows)."""
    import pyarrow.compute as pc

    if t is None:
        return []
    return [w for w in pc.utf8_split_whitespace(pa.array([t])).to_pylist()[0] if w]
