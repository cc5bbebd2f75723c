"""Numpy arrays carried in Arrow binary columns without a Python object per row: Spark moves
binary values as they are, so a per-document set of hashes or a vector rides along as bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def binary_from_buffers(byte_off: np.ndarray, data: np.ndarray) -> pa.Array:
    """A binary array whose value i is data[byte_off[i]:byte_off[i + 1]] (offsets fit int32)."""
    return pa.Array.from_buffers(pa.binary(), len(byte_off) - 1,
                                 [None, pa.py_buffer(np.asarray(byte_off).astype(np.int32)), pa.py_buffer(data)])


def binary_rows(X: np.ndarray) -> pa.Array:
    """One binary value per row of X (its float32 bytes)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    return binary_from_buffers(np.arange(len(X) + 1, dtype=np.int64) * (4 * X.shape[1]), X.reshape(-1).view(np.uint8))


def binary_values(col, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(element offsets int64[n+1], values) of a binary column holding arrays of `dtype`."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    odt = np.int64 if pa.types.is_large_binary(col.type) else np.int32
    bufs, n = col.buffers(), len(col)
    o = np.frombuffer(bufs[1], odt, count=n + 1, offset=col.offset * np.dtype(odt).itemsize).astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[o[0]:o[-1]]
    o -= o[0]
    vals = data.view(dtype)
    if not vals.flags.aligned:
        vals = vals.copy()
    return o // np.dtype(dtype).itemsize, vals


def ipc_buffer(table: pa.Table) -> pa.Buffer:
    """`table` as one Arrow IPC stream: a value Spark moves as plain bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def ipc_table(value) -> pa.Table:
    """The table of an IPC stream value (bytes or a pyarrow Buffer)."""
    return pa.ipc.open_stream(value if isinstance(value, pa.Buffer) else pa.py_buffer(value)).read_all()
