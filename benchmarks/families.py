"""Corpora with large drifting families of near-duplicates, made from real documents, and their
exact ground truth.

`python -m benchmarks.families [--docs 21000] [--out PATH] [--fixture]`

A family starts from one real document (a Debian package description, or, for other scripts,
a run of translated messages from the gettext catalogs under /usr/share/locale: Cyrillic,
Arabic, Chinese and Japanese) and grows by edits: each new member copies an earlier member
(its parent) and replaces, deletes or inserts words until its word-5-gram Jaccard with the
parent lies in [0.70, 0.86], under the stage's shingle definition (NFKC, lowercase, whitespace
words, word 5-grams). Every step stays a near-duplicate of its parent while the family drifts:
a grandchild is usually below 0.7 with its grandparent, so the family is connected only
through chains of edits.

Shapes: `chain` (the parent is the latest member), `tree` (any earlier member), `bush` (one of
the latest eight). Sizes from 10 to 2,000 members, log-uniform, with one family of each of
2,000, 1,000 and 500. Chinese and Japanese texts have no spaces inside a sentence, so there a
whitespace "word" is a whole message: edits replace, drop or insert messages.

The rest of the corpus is unrelated real Debian descriptions (with the corpus's own natural
near-duplicates). Truth: `truth_pairs` -- the exact set-similarity join (SetSimilaritySearch
all_pairs) over the stage's own shingles (`thresher.stages.text.shingle_strings`).
"""

from __future__ import annotations

import argparse
import gettext
import math
import random
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.data import REPO, corpus
from benchmarks.replicate import made_once

DEFAULT_OUT = Path("/tmp/thresher-bench/families.parquet")
FIXTURE = REPO / "tests" / "data" / "families_small.parquet"
LOCALES = {"ru": "cyrillic", "ar": "arabic", "zh_CN": "cjk", "ja": "cjk"}
LO, HI = 0.70, 0.86  # Jaccard of each member with its parent
SHAPES = ("chain", "tree", "bush")


def _words(text: str) -> list[str]:
    # The stage's definition, without Arrow: generation only needs it to steer the edits; the
    # truth is computed with the stage's own shingle_strings.
    return unicodedata.normalize("NFKC", text).lower().split()


def _grams(w: list[str], n: int = 5) -> set:
    if len(w) < n:
        return {tuple(w)} if w else set()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ------------------------------------------------------------------------------------ sources
def debian_roots(min_words: int = 40) -> tuple[list[str], list[str]]:
    """(texts with at least `min_words` words, every text) of the shared Debian corpus."""
    texts = corpus().column("text").to_pylist()
    return [t for t in texts if len(t.split()) >= min_words], texts


def catalog_roots(locale: str, words: int = 80, root: Path = Path("/usr/share/locale")) -> list[str]:
    """Documents of about `words` whitespace tokens, each a run of consecutive translated
    messages from one gettext catalog of `locale` (CJK: one message per line, spaces removed)."""
    cjk = LOCALES[locale] == "cjk"
    docs = []
    for mo in sorted((root / locale / "LC_MESSAGES").glob("*.mo")):
        try:
            with open(mo, "rb") as f:
                cat = gettext.GNUTranslations(f)._catalog
        except Exception:
            continue
        msgs = []
        for k in sorted(cat, key=str):
            v = cat[k]
            if not isinstance(v, str) or len(v) < 8 or "%" in v or "\x00" in v:
                continue
            v = " ".join(v.split())
            msgs.append(v.replace(" ", "") if cjk else v)
        cur, n = [], 0
        for m in msgs:
            cur.append(m)
            n += 1 if cjk else len(m.split())
            if n >= (words // 4 if cjk else words):
                docs.append(("\n" if cjk else " ").join(cur))
                cur, n = [], 0
    return docs


# ------------------------------------------------------------------------------------ edits
def _edit(rng: random.Random, words: list[str], vocab: list[str], k: int) -> list[str]:
    w = list(words)
    for _ in range(k):
        op, i = rng.random(), rng.randrange(len(w))
        if op < 0.5:
            w[i] = rng.choice(vocab)
        elif op < 0.75 and len(w) > 6:
            del w[i]
        else:
            w.insert(i, rng.choice(vocab))
    return w


def child(rng: random.Random, parent: list[str], vocab: list[str]) -> list[str] | None:
    """An edit of `parent` whose Jaccard with it is in [LO, HI], or None."""
    pg = _grams(parent)
    # Each edit touches up to five 5-grams: aim near the middle of [LO, HI].
    k = max(1, round(len(pg) * 0.035 * rng.uniform(0.6, 1.6)))
    for _ in range(12):
        w = _edit(rng, parent, vocab, k)
        j = jaccard(pg, _grams(w))
        if LO <= j <= HI:
            return w
        k = max(1, k - 1 if j < LO else k + 1)
    return None


def family(rng: random.Random, root: str, size: int, shape: str, vocab: list[str], sep: str) -> list[str]:
    members = [_words(root)]
    misses = 0
    while len(members) < size and misses < 4 * size:
        if shape == "chain":
            p = members[-1]
        elif shape == "tree":
            p = members[rng.randrange(len(members))]
        else:
            p = members[max(0, len(members) - 1 - rng.randrange(8))]
        c = child(rng, p, vocab)
        if c is None:
            misses += 1
            continue
        members.append(c)
    return [root] + [sep.join(m) for m in members[1:]]


def sizes(rng: random.Random, budget: int, lo: int = 10, hi: int = 2000, fixed=(2000, 1000, 500)) -> list[int]:
    out = [s for s in fixed if s <= budget]
    left = budget - sum(out)
    while left >= lo:
        s = min(left, int(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
        out.append(s)
        left -= s
    return out


def make(docs: int = 21_000, seed: int = 0, family_share: float = 0.6, script_share: float = 0.15,
         max_family: int = 2000, fixed=(2000, 1000, 500)) -> pa.Table:
    """The corpus: (id, text, family, shape, script). `family` is empty for background documents."""
    rng = random.Random(seed)
    roots, all_texts = debian_roots()
    rng.shuffle(roots)
    latin_vocab = sorted({w for t in roots[:3000] for w in _words(t)})
    rows = []  # (family, shape, script, text)
    n_scripts = int(docs * script_share)
    n_latin = int(docs * family_share) - n_scripts
    for i, s in enumerate(sizes(rng, n_latin, hi=max_family, fixed=fixed)):
        shape = SHAPES[i % 3]
        for t in family(rng, roots[i], s, shape, latin_vocab, " "):
            rows.append((f"lat{i:03d}", shape, "latin", t))
    per_locale = n_scripts // len(LOCALES)
    for loc in LOCALES:
        src = catalog_roots(loc)
        if not src:
            print(f"families: no gettext catalogs for {loc} under /usr/share/locale; its families are left out")
            continue
        rng.shuffle(src)
        vocab = sorted({w for t in src[:400] for w in _words(t)})
        sep = "\n" if LOCALES[loc] == "cjk" else " "
        for i, s in enumerate(sizes(rng, per_locale, hi=min(max_family, 400), fixed=())):
            shape = SHAPES[i % 3]
            for t in family(rng, src[i % len(src)], s, shape, vocab, sep):
                rows.append((f"{loc}{i:03d}", shape, LOCALES[loc], t))
    used = set(roots[:len(rows)])
    background = [t for t in all_texts if t not in used]
    rng.shuffle(background)
    for t in background[:max(0, docs - len(rows))]:
        rows.append(("", "", "latin", t))
    order = list(range(len(rows)))
    rng.shuffle(order)  # ids say nothing about families or their order of growth
    return pa.table({
        "id": [f"f{k:06d}" for k in range(len(rows))],
        "text": [rows[o][3] for o in order],
        "family": [rows[o][0] for o in order],
        "shape": [rows[o][1] for o in order],
        "script": [rows[o][2] for o in order],
    })


def truth_pairs(texts: list[str], threshold: float = 0.7) -> set[tuple[int, int]]:
    """Every pair of positions whose exact word-5-gram Jaccard is >= threshold (the stage's shingles)."""
    from SetSimilaritySearch import all_pairs

    from thresher.stages.text import normalise

    sets = []
    for t in normalise(pa.array(texts, pa.string())).to_pylist():
        w = (t or "").split()
        sets.append({" ".join(w[i:i + 5]) for i in range(len(w) - 4)} if len(w) >= 5 else ({" ".join(w)} if w else set()))
    idx = [i for i, s in enumerate(sets) if s]
    return {(min(idx[x], idx[y]), max(idx[x], idx[y]))
            for x, y, _ in all_pairs([sets[i] for i in idx], similarity_func_name="jaccard",
                                     similarity_threshold=threshold)}


def components(n: int, pairs) -> np.ndarray:
    """Smallest member of each position's component under `pairs`."""
    from thresher.kernels.minhash import min_roots

    p = np.array(sorted(pairs), np.int64).reshape(-1, 2)
    return min_roots(p[:, 0], p[:, 1], n)


def family_corpus(docs: int = 21_000, out: Path = DEFAULT_OUT, seed: int = 0) -> Path:
    """The family corpus file, made once and reused."""
    return made_once(out, f"d{docs}s{seed}", lambda: make(docs, seed))


def make_fixture(out: Path = FIXTURE, seed: int = 1) -> pa.Table:
    """The test fixture: 2,000 documents, families of 10 to 300 in four scripts."""
    t = make(2000, seed, family_share=0.7, script_share=0.25, max_family=300, fixed=(300,)).select(
        ["id", "text", "family", "script"])
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, out, compression="zstd", compression_level=19)
    return t


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=21_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--fixture", action="store_true", help=f"write the test fixture {FIXTURE}")
    a = ap.parse_args()
    if a.fixture:
        t = make_fixture()
        print(f"{FIXTURE}: {t.num_rows} rows, {FIXTURE.stat().st_size / 1e3:.0f} KB")
    else:
        p = family_corpus(a.docs, a.out, a.seed)
        t = pq.read_table(p)
        fam = [f for f in t.column("family").to_pylist() if f]
        print(f"{p}: {t.num_rows} rows, {len(set(fam))} families holding {len(fam)} documents")
