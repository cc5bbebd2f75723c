"""The published rule sets: one test per rule with documents just on each side of the paper's
threshold (each rule judged alone: the set's other rules are turned off), the vectorised
signals against their plain-Python twins, the stage on Spark, and bad configs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.kernels import text_rules as tr
from thresher.schemas.errors import ConfigError
from thresher.stages import heuristics as h

from conftest import DEMO

SYL = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze", "bo", "da", "fi", "gu", "ha", "je", "ly", "mo", "ne", "pi"]


def vocab(n: int, syllables: int = 3) -> list[str]:
    """n distinct words of 2*syllables letters (no stop words, no repeats)."""
    return ["".join(p) for p in itertools.islice(itertools.product(SYL, repeat=syllables), n)]


def filler(chars: int) -> list[str]:
    """Distinct words holding exactly `chars` letters."""
    words = vocab(chars // 6 + 1)
    out = words[: chars // 6]
    if chars % 6:
        out.append(words[-1][: chars % 6])
    return out


def verdict(rule_set: str, rule: str, texts: list[str], **extra):
    """Reasons with only `rule_set:rule` switched on."""
    off = {r: None for r in h.RULES[rule_set] if r != rule}
    cfg = h.Config(rule_sets=[rule_set], **{rule_set: {"thresholds": off, **extra}})
    fn, _ = h.make_filter(cfg)
    v = fn(pa.record_batch([pa.array([str(i) for i in range(len(texts))]), pa.array(texts)], names=["id", "text"]))
    return list(v.reason), v


def flips(rule_set: str, rule: str, keep: str, drop: str, **extra):
    reasons, _ = verdict(rule_set, rule, [keep, drop], **extra)
    assert reasons == [None, f"{rule_set}:{rule}"], reasons


def sig(fn, text, **kw):
    return {k: float(np.asarray(v)[0]) for k, v in fn(pa.array([text]), **kw).items()}


# ---------------------------------------------------------------------------------- gopher
# Rae et al. 2021, appendix A.1.1: "remove any document that does not contain between 50 and
# 100,000 words".
def test_gopher_word_count():
    base = ["the", "of"]
    flips("gopher", "min_words", " ".join(base + vocab(48)), " ".join(base + vocab(47)))
    big = vocab(100_001, syllables=4)
    flips("gopher", "max_words", " ".join(big[:100_000]), " ".join(big))


# "... or whose mean word length is outside the range of 3 to 10 characters".
def test_gopher_mean_word_length():
    three = [s + c for s in SYL for c in "bdfgk"][:50]
    assert sig(tr.gopher_signals, " ".join(three))["mean_word_length"] == 3.0
    flips("gopher", "min_mean_word_length", " ".join(three), " ".join(three[:-1] + ["ok"]))  # 149/50 = 2.98
    ten = vocab(50, syllables=5)
    assert sig(tr.gopher_signals, " ".join(ten))["mean_word_length"] == 10.0
    flips("gopher", "max_mean_word_length", " ".join(ten), " ".join(ten[:-1] + [ten[-1] + "x"]))  # 10.02


# "... a symbol-to-word ratio greater than 0.1 for either the hash symbol or the ellipsis".
def test_gopher_symbol_ratios():
    w = vocab(50)
    with_hash = lambda k: " ".join(["#" + x for x in w[:k]] + w[k:])  # noqa: E731
    assert sig(tr.gopher_signals, with_hash(5))["hash_word_ratio"] == 0.1
    flips("gopher", "hash_ratio", with_hash(5), with_hash(6))
    with_ell = lambda k: " ".join(w[:1] + [x + "..." for x in w[1:k + 1]] + w[k + 1:])  # noqa: E731
    assert sig(tr.gopher_signals, with_ell(5))["ellipsis_word_ratio"] == 0.1
    flips("gopher", "ellipsis_ratio", with_ell(5), with_ell(6))
    # "…" counts as an ellipsis too.
    flips("gopher", "ellipsis_ratio", with_ell(5), with_ell(5).replace(w[10], w[10] + "…"))


# "... more than 90% of lines starting with a bullet point, or more than 30% ending with an
# ellipsis".
def test_gopher_bullet_and_ellipsis_lines():
    w = vocab(300)
    bullets = lambda k: "\n".join(("•" if i < k else "") + " ".join(w[3 * i:3 * i + 3]) for i in range(100))  # noqa: E731
    assert sig(tr.gopher_signals, bullets(90))["bullet_line_fraction"] == 0.9
    flips("gopher", "bullet_lines", bullets(90), bullets(91))
    ell = lambda k: "\n".join(" ".join(w[3 * i:3 * i + 3]) + ("..." if i < k else ".") for i in range(100))  # noqa: E731
    assert sig(tr.gopher_signals, ell(30))["ellipsis_line_fraction"] == 0.3
    flips("gopher", "ellipsis_lines", ell(30), ell(31))


# "... fewer than 80% of words in a document contain at least one alphabetic character".
def test_gopher_alpha_words():
    w = vocab(50)
    doc = lambda k: " ".join([str(1000 + i) for i in range(k)] + w[k:])  # noqa: E731
    assert sig(tr.gopher_signals, doc(10))["alpha_word_fraction"] == 0.8
    flips("gopher", "alpha_words", doc(10), doc(11))


# "... does not contain at least two of the following English words: the, be, to, of, and,
# that, have, and with" (occurrences, case and end punctuation ignored).
def test_gopher_stop_words():
    w = vocab(50)
    flips("gopher", "stop_words", " ".join(["The", "with,"] + w), " ".join(["The"] + w))
    assert sig(tr.gopher_signals, " ".join(["is", "a", "for"] + w))["stop_word_count"] == 0  # only Gopher's 8 count


# Table A1: duplicate line fraction 0.30, duplicate paragraph fraction 0.30.
def test_gopher_duplicate_line_and_paragraph_fractions():
    u = vocab(20)
    doc = lambda rep: "\n".join(u[:6] + ["same"] * (rep + 1))  # noqa: E731
    assert sig(tr.gopher_signals, doc(3))["dup_line_fraction"] == 0.3  # 3 of 10 lines repeat
    flips("gopher", "dup_lines", doc(3), doc(4))  # 4 of 11
    para = lambda rep: "\n\n".join(u[:6] + ["same"] * (rep + 1))  # noqa: E731
    assert sig(tr.gopher_signals, para(3))["dup_para_fraction"] == 0.3
    flips("gopher", "dup_paragraphs", para(3), para(4))


# Table A1: duplicate line character fraction 0.20, duplicate paragraph character fraction 0.20.
def test_gopher_duplicate_char_fractions():
    b = "y" * 10
    line = lambda u: "x" * u + "\n" + b + "\n" + b  # noqa: E731  # 10 / (u + 22)
    assert sig(tr.gopher_signals, line(28))["dup_line_char_fraction"] == 0.2
    flips("gopher", "dup_line_chars", line(28), line(27))
    para = lambda u: "x" * u + "\n\n" + b + "\n\n" + b  # noqa: E731  # 10 / (u + 24)
    assert sig(tr.gopher_signals, para(26))["dup_para_char_fraction"] == 0.2
    flips("gopher", "dup_paragraph_chars", para(26), para(25))


# Table A1: top 2-, 3-, 4-gram character fractions 0.20, 0.18, 0.16.
@pytest.mark.parametrize("n,thr,gram", [(2, 0.20, "aa bb"), (3, 0.18, "aaa bbb ccc"), (4, 0.16, "aa bb cc dd")])
def test_gopher_top_ngram(n, thr, gram):
    g = gram.split()
    L = sum(map(len, g))
    w_at = round(2 * L / thr)  # word characters at which the top n-gram holds exactly thr
    doc = lambda w: " ".join(g + g + filler(w - 2 * L))  # noqa: E731
    assert sig(tr.gopher_signals, doc(w_at))[f"top_{n}gram_char_fraction"] == thr
    flips("gopher", f"top_{n}gram", doc(w_at), doc(w_at - 1))


# Table A1: duplicate n-gram character fractions 0.15, 0.14, 0.13, 0.12, 0.11, 0.10 for n = 5..10.
@pytest.mark.parametrize("n,thr", [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_gopher_duplicate_ngram(n, thr):
    L = round(thr * 100)
    lens = [L // n + (1 if i < L % n else 0) for i in range(n)]
    g = [chr(ord("a") + i) * k for i, k in enumerate(lens)]
    doc = lambda w: " ".join(g + g + filler(w - 2 * L))  # noqa: E731  # the second copy is covered: L / w
    assert sig(tr.gopher_signals, doc(100))[f"dup_{n}gram_char_fraction"] == thr
    flips("gopher", f"dup_{n}gram", doc(100), doc(99))


# ---------------------------------------------------------------------------------- c4
S = "One two three four."


# Raffel et al. 2020, section 2.2: "We only retained lines that ended in a terminal punctuation
# mark (i.e. a period, exclamation mark, question mark, or end quotation mark)", "only retained
# lines that contained at least 3 words", "removed any line with the word Javascript".
def test_c4_line_rules_rewrite_text():
    text = "\n".join([
        "Kept line one here.", "no terminal punctuation here", "Two words.", "Three words here!",
        "Please enable JavaScript in your browser.", 'He said "so it goes"', "Is it a question?", "",
    ])
    out, new, dropped = tr.c4_signals(pa.array([text]))
    assert new.to_pylist() == ["Kept line one here.\nThree words here!\nHe said \"so it goes\"\nIs it a question?"]
    assert {k: int(v[0]) for k, v in dropped.items()} == {"terminal_punct": 1, "words_per_line": 1, "javascript": 1}


# "We discarded any page with fewer than 5 sentences".
def test_c4_min_sentences():
    five = "A b c d. E f g h! I j k l? M n o p. Q r s t."
    four = "A b c d. E f g h! I j k l? M n o p."
    assert sig(lambda t: tr.c4_signals(t)[0], five)["sentences"] == 5
    flips("c4", "min_sentences", five, four)
    # Sentences on dropped lines do not count.
    flips("c4", "min_sentences", five, four + "\nQ r. S t. U v w")


# "we removed any page where the phrase 'lorem ipsum' appeared"; "we removed any pages that
# contained a curly bracket".
def test_c4_lorem_ipsum_and_curly_bracket():
    base = " ".join([S] * 5)
    flips("c4", "lorem_ipsum", base + " Lorem dolor.", base + " Lorem Ipsum dolor.")
    flips("c4", "curly_bracket", base + " (a) [b].", base + " int main() {.")


# "We removed any page that contained any word on the List of Dirty, Naughty, Obscene or
# Otherwise Bad Words": only with a list the user supplies.
def test_c4_bad_words(tmp_path):
    base = " ".join([S] * 5)
    flips("c4", "bad_words", base + " Darnit.", base + " Darn it.", bad_words=["darn"])
    f = tmp_path / "words.txt"
    f.write_text("heck\n\n")
    flips("c4", "bad_words", base + " Hecks.", base + " What the heck.", bad_words_file=str(f))
    reasons, _ = verdict("c4", "bad_words", [base + " Darn it."])
    assert reasons == [None]  # no list: the rule is off


# ---------------------------------------------------------------------------------- fineweb
_W = vocab(600)
LONG = [" ".join(_W[i:i + 6]) for i in range(0, 600, 6)]  # 100 distinct lines of 41 chars


# Penedo et al. 2024, section 3.3: "Remove documents where the fraction of lines ending with
# punctuation <= 0.12".
def test_fineweb_line_punct_ratio():
    doc = lambda k: "\n".join(ln + ("." if i < k else "") for i, ln in enumerate(LONG))  # noqa: E731
    assert sig(tr.fineweb_signals, doc(12))["line_punct_ratio"] == 0.12
    flips("fineweb", "line_punct_ratio", doc(13), doc(12))


# "Remove documents where the fraction of characters in duplicated lines >= 0.1".
def test_fineweb_dup_line_chars():
    b = "y" * 10
    doc = lambda u: "x" * u + "\n" + b + "\n" + b  # noqa: E731  # 10 / (u + 20), newlines not counted
    assert sig(tr.fineweb_signals, doc(80))["dup_line_char_fraction"] == 0.1
    flips("fineweb", "dup_line_chars", doc(81), doc(80))


# "Remove documents where the fraction of lines shorter than 30 characters >= 0.67".
def test_fineweb_short_lines():
    doc = lambda k: "\n".join(ln[:29] if i < k else ln[:30] for i, ln in enumerate(LONG))  # noqa: E731
    assert sig(tr.fineweb_signals, doc(67))["short_line_fraction"] == 0.67
    flips("fineweb", "short_lines", doc(66), doc(67))


# ---------------------------------------------------------------------------------- twins
EDGE = [
    "", "   ", "a", "the cat...\nthe cat...\n\n# head\n• item…\n- item\n\nthe cat...",
    "Ünïcödé wörds… ## ### 123 «quoted» “words”.\nJavaScript here.\nLorem ipsum { dolor }.",
    "Line one.\nline two!\n\n\nline one.\nLine one.\nshort\n" + "x " * 300,
]


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * max(1.0, abs(b))


def test_signals_match_reference():
    texts = pq.read_table(DEMO, columns=["text"]).column("text").to_pylist()[:300] + EDGE
    arr = pa.array(texts)
    g = tr.gopher_signals(arr)
    f = tr.fineweb_signals(arr)
    c, new, dropped = tr.c4_signals(arr, bad_words=["cat", "data"])
    newl = new.to_pylist()
    for i, t in enumerate(texts):
        for name, v in tr.gopher_ref(t).items():
            assert _same(float(g[name][i]), float(v)), ("gopher", name, i)
        for name, v in tr.fineweb_ref(t).items():
            assert _same(float(f[name][i]), float(v)), ("fineweb", name, i)
        rc, rnew, rdropped = tr.c4_ref(t, bad_words=["cat", "data"])
        assert newl[i] == rnew, i
        for name, v in rc.items():
            assert int(c[name][i]) == v, ("c4", name, i)
        for name, v in rdropped.items():
            assert int(dropped[name][i]) == v, ("c4 lines", name, i)


# ---------------------------------------------------------------------------------- stage
def test_stage_on_spark(spark, run_curate, tmp_path):
    good = " ".join(["the", "of"] + vocab(60)) + "."
    texts = {"good": good, "short": "the of kalomi.", "nostop": " ".join(vocab(60)) + ".",
             "c4": good + "\nno punctuation line here"}
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(texts), "text": list(texts.values())}), src)
    m, out = run_curate({"input": [str(src)], "stages": ["ingest", "heuristics", "export"],
                         "heuristics": {"rule_sets": ["c4", "gopher"], "c4": {"thresholds": {"min_sentences": 1}}}})
    st = m["stages"]["heuristics"]
    assert st["removed"] == {"gopher:min_words": 1, "gopher:stop_words": 1}
    assert st["stats"]["c4_lines_dropped_terminal_punct"] == 1
    kept = pq.read_table(out / "dataset").to_pydict()
    assert dict(zip(kept["id"], kept["text"])) == {"good": good, "c4": good}


def test_bad_config_is_one_line():
    from thresher.flows.config import load_config

    with pytest.raises(ConfigError, match=r"heuristics\.rule_sets.*unknown rule set 'gopehr'.*did you mean gopher"):
        load_config(raw={"stages": ["ingest", "heuristics"], "heuristics": {"rule_sets": ["gopehr"]}})
    with pytest.raises(ConfigError, match=r"heuristics\.gopher\.thresholds.*unknown gopher rule 'stopwords'.*stop_words"):
        load_config(raw={"heuristics": {"gopher": {"thresholds": {"stopwords": 3}}}})
    with pytest.raises(ConfigError, match=r"bad_words_file.*nope\.txt not found"):
        load_config(raw={"heuristics": {"c4": {"bad_words_file": "/nope.txt"}}})


def test_pretrain_config_chains_the_filters():
    from thresher.flows.config import load_config

    cfg = load_config("pretrain")
    assert cfg.stages[:4] == ["ingest", "language", "heuristics", "pii"]
    assert {"tokens", "embed", "cluster", "sample"} <= set(cfg.stages)
    assert cfg.heuristics.rule_sets == ["gopher"] and cfg.sample.unit == "tokens" and cfg.sample.tokens_per_word is None
