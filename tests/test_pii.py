"""PII redaction: each kind on its own, the Luhn check, the vectorised kernel against its
plain-Python twin, the stage's per-kind counts in the manifest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.kernels import pii
from thresher.schemas.errors import ConfigError

from conftest import DEMO

CASES = [
    ("write to jane.doe+lists@mail.example.org today", "write to <EMAIL> today", "email"),
    ("card 4111 1111 1111 1111 expires", "card <CREDIT_CARD> expires", "credit_card"),
    ("card 5500-0000-0000-0004.", "card <CREDIT_CARD>.", "credit_card"),
    ("amex 378282246310005", "amex <CREDIT_CARD>", "credit_card"),
    ("host 192.168.1.254 up", "host <IP_ADDRESS> up", "ipv4"),
    ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 and fe80::1ff:fe23:4567:890a",
     "v6 <IP_ADDRESS> and <IP_ADDRESS>", "ipv6"),
    ("call +1 (555) 123-4567 or 020 7946 0958", "call <PHONE> or <PHONE>", "phone"),
]


@pytest.mark.parametrize("text,want,kind", CASES)
def test_each_kind(text, want, kind):
    out, counts = pii.redact(pa.array([text]))
    assert out.to_pylist() == [want]
    assert {k: int(v[0]) for k, v in counts.items() if v[0]} == {kind: want.count("<")}


def test_luhn_and_non_pii():
    # 4111 1111 1111 1111 passes Luhn; changing its last digit fails it.
    assert pii.luhn_valid(pa.array(["4111111111111111", "4111111111111112", "79927398713", "0000000000000"])).tolist() == \
        [True, False, False, True]
    keep = ["no card 4111111111111112 here", "version 1.2.3 in 2024-01-15", "std::vector<int>", "", "ISBN 12345"]
    out, counts = pii.redact(pa.array(keep + [None], pa.string()))
    assert out.to_pylist() == keep + [None]
    assert sum(int(v.sum()) for v in counts.values()) == 0


def test_luhn_matches_reference():
    rng = np.random.default_rng(0)
    nums = ["".join(map(str, rng.integers(0, 10, size=int(rng.integers(1, 20))))) for _ in range(2000)]
    assert pii.luhn_valid(pa.array(nums)).tolist() == [pii.luhn_ref(x) for x in nums]


def test_kernel_matches_reference():
    texts = pq.read_table(DEMO, columns=["text"]).column("text").to_pylist()[:300] + [c[0] for c in CASES] + [
        "a@b.io, 10.0.0.1; 4111-1111-1111-1111 / +49 30 1234 5678 :: 1::2 ::ffff " * 3]
    out, counts = pii.redact(pa.array(texts))
    for i, t in enumerate(texts):
        ref, rc = pii.redact_ref(t)
        assert out[i].as_py() == ref, i
        assert {k: int(v[i]) for k, v in counts.items()} == rc, i


def test_stage_counts_in_manifest(run_curate, tmp_path):
    src = tmp_path / "in.parquet"
    texts = [c[0] for c in CASES] + ["nothing here"]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), src)
    m, out = run_curate({"input": [str(src)], "stages": ["ingest", "pii", "export"],
                         "pii": {"placeholders": {"email": "[email]"}}})
    st = m["stages"]["pii"]["stats"]
    assert st == {"redacted_email": 1, "redacted_credit_card": 3, "redacted_ipv6": 2, "redacted_ipv4": 1,
                  "redacted_phone": 2, "documents_redacted": 7}
    got = dict(zip(*pq.read_table(out / "dataset").select(["id", "text"]).to_pydict().values()))
    assert got["d0"] == "write to [email] today" and got["d7"] == "nothing here"


def test_bad_kind_is_one_line():
    from thresher.flows.config import load_config

    with pytest.raises(ConfigError, match=r"pii\.kinds.*unknown kind 'ssn'"):
        load_config(raw={"pii": {"kinds": ["email", "ssn"]}})
