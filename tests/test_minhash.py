"""MinHash kernels against their numpy twins (bit for bit) and against datasketch (statistically)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher.kernels import minhash as K
from thresher.stages.text import _tokens, normalise, shingle_hashes, shingle_sets

from conftest import CUT


@pytest.fixture(scope="module")
def sample():
    t = pq.read_table(CUT / "head1500.parquet")
    return t.column("text").combine_chunks()


def _random_segments(rng, n_docs=300, max_len=90):
    lens = rng.integers(0, max_len, n_docs)
    lens[::17] = 0  # empty documents among the rest
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    vals = rng.integers(0, 2**64, off[-1], dtype=np.uint64, endpoint=False)
    k = len(vals) // 4
    vals[rng.integers(0, len(vals), k)] = vals[rng.integers(0, len(vals), k)]  # repeats in and across documents
    return off, vals


def test_hash_spans_twin(sample):
    data, spans, _ = _tokens(normalise(sample))
    starts, ends = spans if isinstance(spans, tuple) else (spans[:-1], spans[1:])
    for seed in (np.uint64(0), np.uint64(7), np.uint64(2**63 + 5)):
        np.testing.assert_array_equal(K.hash_spans(data, starts, ends, seed), K.hash_spans_ref(data, starts, ends, seed))


@pytest.mark.parametrize("n", [1, 3, 5, 9])
def test_ngram_hashes_twin(n):
    rng = np.random.default_rng(n)
    off, toks = _random_segments(rng, max_len=12)
    o1, h1 = K.ngram_hashes(toks, off, n, 3)
    o2, h2 = K.ngram_hashes_ref(toks, off, n, 3)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(h1, h2)


def test_sort_unique_twin():
    off, vals = _random_segments(np.random.default_rng(1))
    o1, v1 = K.sort_unique(off, vals)
    o2, v2 = K.sort_unique_ref(off, vals)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(v1, v2)
    for d in range(len(off) - 1):
        assert v1[o1[d]:o1[d + 1]].tolist() == sorted(set(vals[off[d]:off[d + 1]].tolist()))


@pytest.mark.parametrize("num_perm", [1, 128, 200])
def test_minhash_signatures_twin(num_perm, sample):
    off, h = shingle_sets(sample.slice(0, 400))
    a, b = K.permutations(num_perm, 11)
    sig = K.minhash_signatures(off, h, a, b)
    np.testing.assert_array_equal(sig, K.minhash_signatures_ref(off, h, a, b))
    empty = np.diff(off) == 0
    assert (sig[empty] == K.EMPTY).all()
    # Order and repeats of shingles do not change a signature.
    off2, h2 = shingle_hashes(sample.slice(0, 400))
    np.testing.assert_array_equal(K.minhash_signatures(off2, h2, a, b), sig)
    # Every set length 0..9 (the kernel takes shingles four at a time, then the rest one by one).
    off3, h3 = _random_segments(np.random.default_rng(num_perm), n_docs=200, max_len=10)
    np.testing.assert_array_equal(K.minhash_signatures(off3, h3, a, b), K.minhash_signatures_ref(off3, h3, a, b))


def test_band_hashes_twin():
    rng = np.random.default_rng(2)
    sig = rng.integers(0, 2**32, (500, 128), dtype=np.uint32)
    for bands, rows in [(14, 9), (20, 6), (1, 128)]:
        np.testing.assert_array_equal(K.band_hashes(sig, bands, rows, 5), K.band_hashes_ref(sig, bands, rows, 5))
    bh = K.band_hashes(sig, 14, 9, 5)
    same = sig.copy()
    same[:, 9:] = rng.integers(0, 2**32, (500, 119), dtype=np.uint32)  # only band 0 agrees
    bh2 = K.band_hashes(same, 14, 9, 5)
    assert (bh[:, 0] == bh2[:, 0]).all() and (bh[:, 1:] != bh2[:, 1:]).all()
    # The same rows in another band give another hash (bands are keyed by their index).
    rep = np.tile(sig[:, :9], (1, 2))
    h = K.band_hashes(rep, 2, 9, 5)
    assert (h[:, 0] != h[:, 1]).all()


def test_jaccard_twin():
    rng = np.random.default_rng(3)
    off_a, va = K.sort_unique(*_random_segments(rng, 200, 30))
    # B shares about half of A's values.
    keep = rng.random(len(va)) < 0.5
    vb = np.where(keep, va, rng.integers(0, 2**64, len(va), dtype=np.uint64, endpoint=False))
    off_b, vb = K.sort_unique(off_a, vb)
    # A's sets then B's in one table, as the stage compares them; pair k is (A_k, B_k).
    off = np.concatenate([off_a, off_a[-1] + off_b[1:]])
    vals = np.concatenate([va, vb])
    n = len(off_a) - 1
    ia = np.arange(n)
    ib = ia + n
    j1 = K.jaccard_pairs(off, vals, ia, ib)
    np.testing.assert_array_equal(j1, K.jaccard_pairs_ref(off, vals, ia, ib))
    assert 0.2 < j1[np.diff(off_a) > 10].mean() < 0.5
    # Any index order, repeats and a set with itself (1, or 0 when empty).
    ix = rng.integers(0, 2 * n, 500)
    iy = np.where(rng.random(500) < 0.1, ix, rng.integers(0, 2 * n, 500))
    np.testing.assert_array_equal(K.jaccard_pairs(off, vals, ix, iy), K.jaccard_pairs_ref(off, vals, ix, iy))


def test_permutations_come_from_the_seed():
    a1, b1 = K.permutations(64, 1)
    a2, b2 = K.permutations(64, 1)
    a3, _ = K.permutations(64, 2)
    assert (a1 == a2).all() and (b1 == b2).all() and not (a1 == a3).all()
    assert (a1 & np.uint64(1)).all()


def test_estimates_agree_with_datasketch(sample):
    """On related document pairs, both estimators scatter around the exact Jaccard with
    MinHash's own standard error sqrt(J(1-J)/num_perm), and neither is biased."""
    from datasketch import MinHash

    num_perm = 128
    texts = sample.slice(0, 600)
    off, h = shingle_sets(texts)
    sig = K.minhash_signatures(off, h, *K.permutations(num_perm, 0))

    def ds(i):
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([x.tobytes() for x in h[off[i]:off[i + 1]]])
        return m

    pairs = [(i, i + 1) for i in range(0, 599) if off[i + 1] > off[i] and off[i + 2] > off[i + 1]]
    ours, theirs, truth = [], [], []
    for i, j in pairs:
        a, b = set(h[off[i]:off[i + 1]].tolist()), set(h[off[j]:off[j + 1]].tolist())
        truth.append(len(a & b) / len(a | b))
        ours.append(float(K.signature_agreement(sig[i:i + 1], sig[j:j + 1])[0]))
        theirs.append(ds(i).jaccard(ds(j)))
    truth, ours, theirs = map(np.array, (truth, ours, theirs))
    related = truth > 0.2
    assert related.sum() > 50
    se = np.sqrt(truth * (1 - truth) / num_perm) + 1e-9
    z_ours = (ours - truth)[related] / se[related]
    z_theirs = (theirs - truth)[related] / se[related]
    # Same spread as datasketch's, and within 4 standard errors everywhere.
    assert np.abs(z_ours).max() < 4.5
    assert 0.7 < np.std(z_ours) / np.std(z_theirs) < 1.4
    assert abs(np.mean(z_ours)) < 0.35
    some = (truth > 0) & (truth < 1)
    assert np.abs((ours - truth)[some] / se[some]).max() < 4.5
    assert (ours[truth == 0] == 0).all() and (ours[truth == 1] == 1).all()


def test_min_roots_twin():
    """Union-find against min-label propagation: random graphs, isolated nodes, self loops,
    repeated edges and a long chain entered from its far end."""
    rng = np.random.default_rng(11)
    for trial in range(30):
        n = int(rng.integers(1, 400))
        m = int(rng.integers(0, 2 * n))
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        if trial % 5 == 0:  # chain n-1 -> ... -> 0, listed from the top
            a = np.concatenate([a, np.arange(n - 1, 0, -1)])
            b = np.concatenate([b, np.arange(n - 2, -1, -1)])
        got = K.min_roots(a, b, n)
        np.testing.assert_array_equal(got, K.min_roots_ref(a, b, n))
        assert (got <= np.arange(n)).all() and (got[got] == got).all()
