"""Runs in DataTrove's own virtualenv (benchmarks/peers.py):
`python peer_datatrove.py PARQUET WORKDIR WORKERS`.

DataTrove's MinHash dedup as its documentation lays it out: four LocalPipelineExecutor steps
(signatures, buckets, clusters, filter), 16 buckets x 8 hashes, word 5-grams, WORKERS tasks
and workers (the input is first split into WORKERS Parquet files, outside the clock, as
DataTrove reads one file per task). Writes WORKDIR/clusters.parquet (id, cluster, removed)
and prints {"seconds": ...}: imports and all four steps.
"""

import gzip
import json
import sys
import time
from pathlib import Path


def main(path, work, workers):
    import pyarrow as pa
    import pyarrow.parquet as pq

    work, workers = Path(work), int(workers)
    inp = work / "input"
    inp.mkdir(parents=True, exist_ok=True)
    t = pq.read_table(path, columns=["id", "text"])
    step = -(-t.num_rows // workers)
    for k in range(workers):
        pq.write_table(t.slice(k * step, step), inp / f"part{k:03d}.parquet")
    del t

    t0 = time.perf_counter()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter)
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8)

    def reader():
        return ParquetReader(str(inp), text_key="text", id_key="id")

    s1 = LocalPipelineExecutor(pipeline=[reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)],
                               tasks=workers, workers=workers, logging_dir=str(work / "logs1"))
    s2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=str(work / "sigs"),
                                                             output_folder=str(work / "buckets"), config=cfg)],
                               tasks=cfg.num_buckets, workers=workers, logging_dir=str(work / "logs2"), depends=s1)
    s3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=str(work / "buckets"),
                                                             output_folder=str(work / "remove"), config=cfg,
                                                             save_cluster_id=True)],
                               tasks=1, logging_dir=str(work / "logs3"), depends=s2)
    s4 = LocalPipelineExecutor(pipeline=[reader(),
                                         MinhashDedupFilter(input_folder=str(work / "remove"), load_cluster_ids=True,
                                                            exclusion_writer=JsonlWriter(str(work / "removed"))),
                                         JsonlWriter(str(work / "kept"))],
                               tasks=workers, workers=workers, logging_dir=str(work / "logs4"), depends=s3)
    s4.run()
    seconds = time.perf_counter() - t0

    ids, cluster, removed = [], [], []
    for folder, gone in (("kept", False), ("removed", True)):
        for f in sorted((work / folder).glob("*.jsonl.gz")):
            with gzip.open(f, "rt") as fh:
                for line in fh:
                    d = json.loads(line)
                    ids.append(d["id"])
                    cluster.append(int(d.get("metadata", {}).get("minhash_cluster_id", -1)))
                    removed.append(gone)
    pq.write_table(pa.table({"id": ids, "cluster": pa.array(cluster, pa.int64()), "removed": removed}),
                   work / "clusters.parquet")
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
