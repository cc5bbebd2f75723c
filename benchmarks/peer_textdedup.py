"""Runs in text-dedup's own virtualenv (Python >= 3.12; benchmarks/peers.py):
`python peer_textdedup.py PARQUET WORKDIR WORKERS`.

text-dedup 0.4.1's MinHash (its optimiser's bands x rows at 0.7 with its default weights, 128
permutations, 5-grams, false positives checked by exact Jaccard, WORKERS processes). Writes
WORKDIR/labels.npy (each row's cluster, -1 none) and prints {"seconds": ...}.
"""

import json
import pickle
import sys
import time
from pathlib import Path


def main(path, work, workers):
    t0 = time.perf_counter()
    import numpy as np
    from pydantic_settings import CliApp
    from text_dedup.config.base import Config
    from text_dedup.minhash import main as run

    work = Path(work)
    args = {
        "input": {"input_type": "local_files", "file_type": "parquet",
                  "read_arguments": {"path": "parquet", "data_files": str(path), "split": "train"}},
        "algorithm": {"algorithm_name": "minhash", "text_column": "text", "num_perm": 128, "threshold": 0.7,
                      "ngram_size": 5, "check_false_positive": True, "num_proc": int(workers)},
        "output": {"output_dir": str(work / "out"), "save_clusters": True},
        "debug": {},
    }
    cfg = CliApp.run(Config, cli_args=[x for k, v in args.items() for x in (f"--{k}", json.dumps(v))])
    run(cfg)
    seconds = time.perf_counter() - t0
    with open(work / "out" / "clusters.pickle", "rb") as f:
        clusters = pickle.load(f)
    import pyarrow.parquet as pq

    n = pq.ParquetFile(path).metadata.num_rows
    labels = np.full(n, -1, np.int64)
    for i, c in clusters.items():
        labels[int(i)] = int(c)
    np.save(work / "labels.npy", labels)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
