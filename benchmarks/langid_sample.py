"""A labelled multilingual sample from Debian's package-description translations (DDTP).

Debian publishes each package description in the languages translators wrote it in
(`Translation-<lang>` indexes of bookworm main). The label of a text is the language of the
index it came from. A translated description identical to the English one of the same
Description-md5 is left out (untranslated text under a translated header), and so are texts
under 8 words, and duplicates within a language.

Fetch the indexes without touching the system's apt state:
    apt-get -o Dir::State::Lists=DIR/lists -o Dir::Cache=DIR/cache \
        -o Acquire::Languages=en,de,fr,... \
        -o Acquire::IndexTargets::deb::Packages::DefaultEnabled=false update
then `python -m benchmarks.langid_sample DIR/lists OUT.parquet --per-lang 300`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def parse(text: str, lang: str) -> dict[str, str]:
    """Description-md5 -> title line + long description (DDTP's ' .' paragraph marks as blank lines)."""
    out: dict[str, str] = {}
    for block in text.split("\n\n"):
        md5 = re.search(r"^Description-md5: (\S+)", block, re.M)
        m = re.search(rf"^Description-{re.escape(lang)}: (.*)$", block, re.M)
        if not md5 or not m:
            continue
        body = block[m.end():].split("\n")
        lines = [m.group(1).strip()]
        for ln in body:
            if not ln.startswith(" "):
                break
            ln = ln[1:]
            lines.append("" if ln.strip() == "." else ln.rstrip())
        out[md5.group(1)] = "\n".join(lines).strip()
    return out


def read_index(path: Path) -> str:
    return subprocess.run(["lz4cat", str(path)], check=True, capture_output=True).stdout.decode("utf-8", "replace")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("lists")
    ap.add_argument("out")
    ap.add_argument("--per-lang", type=int, default=300)
    ap.add_argument("--min-words", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    files = sorted(Path(a.lists).glob("*_bookworm_main_i18n_Translation-*.lz4"))
    texts = {}
    for f in files:
        lang = f.name.split("Translation-")[1][: -len(".lz4")].replace("%5f", "_")
        texts[lang] = parse(read_index(f), lang)
    english = texts.get("en", {})
    rows = {"id": [], "lang": [], "text": []}
    for lang, docs in sorted(texts.items()):
        iso = lang.split("_")[0]
        seen = set()
        cand = []
        for md5, t in docs.items():
            if lang != "en" and english.get(md5) == t:
                continue
            if len(t.split()) < a.min_words and iso not in ("ja", "zh", "ko"):
                continue
            if iso in ("ja", "zh") and len(t) < 3 * a.min_words:
                continue
            if t in seen:
                continue
            seen.add(t)
            cand.append((hashlib.sha1(f"{a.seed}:{md5}".encode()).hexdigest(), md5, t))
        cand.sort()
        for _, md5, t in cand[: a.per_lang]:
            rows["id"].append(f"{iso}/{md5[:12]}")
            rows["lang"].append(iso)
            rows["text"].append(t)
        print(f"{iso}: {min(len(cand), a.per_lang)} of {len(cand)}", file=sys.stderr)
    pq.write_table(pa.table(rows), a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
