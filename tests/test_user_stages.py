"""User-defined stages loaded from a temporary package (by `module:Attr` and by entry point),
their removals in the accounting, and one-line errors for filters that misbehave."""

from __future__ import annotations

import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.schemas.errors import ConfigError, StageError

FILTERS = '''
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field
from thresher.stages.base import StageConfig


class ToxicWords:
    class Config(StageConfig):
        words: list[str] = Field(default_factory=list)

    def __init__(self, cfg):
        self.words = cfg.words

    def __call__(self, batch):
        low = pc.utf8_lower(batch.column("text"))
        bad = np.zeros(batch.num_rows, dtype=bool)
        for w in self.words:
            bad |= pc.match_substring(low, w).to_numpy(zero_copy_only=False)
        return pa.array(~bad)


def shouting(batch):
    return pc.utf8_is_upper(batch.column("text"))


def n_chars(batch):
    return pc.utf8_length(batch.column("text"))


def short_by(batch, cfg):
    return pc.less_equal(pc.utf8_length(batch.column("text")), cfg.limit)


class _Cfg(StageConfig):
    limit: int = 30


short_by.Config = _Cfg


def boom(batch):
    raise ValueError("no dictionary loaded")


def too_short(batch):
    return pa.array([True] * (batch.num_rows + 1))


def wrong_type(batch):
    return {"keep": True}
'''


@pytest.fixture
def pkg(tmp_path, monkeypatch):
    root = tmp_path / "site"
    (root / "my_pkg").mkdir(parents=True)
    (root / "my_pkg" / "__init__.py").write_text("")
    (root / "my_pkg" / "filters.py").write_text(textwrap.dedent(FILTERS))
    # An installed distribution registering an entry point in the group thresher.stages.
    dist = root / "my_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[thresher.stages]\nno_shouting = my_pkg.filters:shouting\n")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for m in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
        del sys.modules[m]


def docs(tmp_path):
    texts = {"a": "a calm sentence about packages", "b": "THIS IS LOUD", "c": "contains a badword here",
             "d": "short one", "e": "another calm and long sentence about software"}
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(texts), "text": list(texts.values())}), src)
    return src


def test_stages_from_a_package_and_an_entry_point(pkg, run_curate, tmp_path):
    m, out = run_curate({
        "input": [str(docs(tmp_path))],
        "stages": ["ingest", "my_pkg.filters:ToxicWords", "no_shouting", "my_pkg.filters:n_chars",
                   "my_pkg.filters:short_by", "export"],
        "toxic_words": {"words": ["badword"]}, "short_by": {"limit": 35},
    })
    st = m["stages"]
    assert st["toxic_words"]["removed"] == {"toxic_words": 1}
    # True keeps: the entry point's filter (utf8_is_upper) keeps only the upper-case text left.
    assert st["no_shouting"]["removed"] == {"no_shouting": 3}
    assert st["n_chars"]["removed"] == {} and st["short_by"]["removed"] == {}
    got = pq.read_table(out / "dataset").to_pydict()
    assert got["id"] == ["b"] and got["n_chars"] == [len("THIS IS LOUD")]
    assert m["accounting"]["closes"]
    assert m["config"]["stages"] == ["ingest", "toxic_words", "no_shouting", "n_chars", "short_by", "export"]


@pytest.mark.parametrize("attr,msg", [
    ("boom", r"boom: the filter raised ValueError: no dictionary loaded"),
    ("too_short", r"too_short: the filter returned 6 values for a batch of 5 documents"),
    ("wrong_type", r"wrong_type: the filter returned dict; expected a boolean array"),
])
def test_bad_filters_are_one_line_and_leave_nothing(pkg, run_curate, tmp_path, attr, msg):
    with pytest.raises(StageError, match=msg) as ei:
        run_curate({"input": [str(docs(tmp_path))], "stages": ["ingest", f"my_pkg.filters:{attr}", "export"]})
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "run" / "dataset").exists()


def test_bad_references_and_sections(pkg):
    from thresher.flows.config import load_config

    with pytest.raises(ConfigError, match=r"stages\[1\]: cannot import 'no_pkg.filters'"):
        load_config(raw={"stages": ["ingest", "no_pkg.filters:X"]})
    with pytest.raises(ConfigError, match=r"stages\[1\]: module 'my_pkg.filters' has no 'Nope'"):
        load_config(raw={"stages": ["ingest", "my_pkg.filters:Nope"]})
    with pytest.raises(ConfigError, match=r"toxic_words\.wrods: unknown key; did you mean words"):
        load_config(raw={"stages": ["ingest", "my_pkg.filters:ToxicWords"], "toxic_words": {"wrods": []}})
    with pytest.raises(ConfigError, match=r"stages\[1\]: unknown stage 'no_such_stage'"):
        load_config(raw={"stages": ["ingest", "no_such_stage"]})


def test_shipped_example_config_loads_and_filters():
    from thresher.configs.example_filters import ToxicWords, mean_word_length
    from thresher.flows.config import load_config

    cfg = load_config("user_filters")
    assert cfg.stages == ["ingest", "toxic_words", "mean_word_length", "export"]
    batch = pa.record_batch([pa.array(["a", "b", "c"]), pa.array(["free software", "a NonFree blob", ""])], names=["id", "text"])
    assert ToxicWords(cfg.toxic_words)(batch).to_pylist() == [True, False, True]
    assert mean_word_length(batch).to_pylist()[:2] == [6.0, 4.0]
