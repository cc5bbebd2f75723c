"""embed: inference backends besides torch: ONNX Runtime (fp32, dynamically quantised int8) and
OpenVINO (fp32, bf16), built offline from the packaged model and picked on the driver.

sentence-transformers' own `backend="onnx"/"openvino"` needs optimum-onnx / optimum-intel, and
neither installs beside sentence-transformers 6 here (optimum-onnx 0.1 pins transformers < 4.58,
optimum-intel pulls a CUDA torch). So the export is done here with what those wrap: the whole
sentence-transformers forward (transformer, pooling, normalise) traced by `torch.onnx.export`,
then `onnxruntime.quantization.quantize_dynamic` for int8, and OpenVINO reading the same ONNX file.

An exported model is built once per (source model, kind, library versions) into the cache folder
(THRESHER_CACHE_DIR, else ~/.cache/thresher), in a temporary folder renamed into place, so a
reader sees a whole export or none and two builders never mix files. Its sha256 (in export.json)
enters the embed cache key. The first build also embeds a fixed set of check texts with the
candidate and with torch fp32 and stores the minimum cosine; `auto` uses it as the quality gate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thresher.schemas.errors import ConfigError, StageError

log = logging.getLogger("thresher.embed")

BACKENDS = ("auto", "torch", "onnx", "openvino")
# Precisions each backend runs (auto resolves to one of them).
PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
# Quality bounds against torch fp32 (min cosine over the check texts): the default path must not
# move vectors more than float rounding; int8 is allowed a looser bound, and only when asked.
BOUND = {"fp32": 0.999, "bf16": 0.999, "fp16": 0.999, "int8": 0.99}
# Bump when the export recipe changes, so older exports are not reused.
EXPORT_VERSION = 1
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def cache_root() -> Path:
    root = os.environ.get("THRESHER_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "thresher").expanduser().absolute()


def int8_isa(flags: frozenset[str] | None = None) -> str:
    """The quantisation recipe for this CPU: avx512_vnni (u8 x s8 products without saturation),
    else avx512 or avx2, whose u8 x s8 instruction (vpmaddubsw) saturates in int16: there the
    weights are kept to 7 bits (reduce_range), as ONNX Runtime's quantisation guide advises.
    THRESHER_EMBED_ISA overrides it (to measure one recipe on another CPU)."""
    forced = os.environ.get("THRESHER_EMBED_ISA")
    if forced:
        if forced not in ("avx2", "avx512", "avx512_vnni"):
            raise ConfigError(f"THRESHER_EMBED_ISA: '{forced}' is not one of avx2, avx512, avx512_vnni")
        return forced
    from thresher.kernels.backend import cpu_flags

    f = cpu_flags() if flags is None else flags
    if "avx512_vnni" in f or "avx_vnni" in f:
        return "avx512_vnni" if "avx512f" in f else "avx2"
    if "avx512f" in f and "avx512bw" in f:
        return "avx512"
    return "avx2"


# ---------------------------------------------------------------------------------- exports
def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _build_once(final: Path, build) -> dict:
    """Build into a temporary sibling folder and rename it to `final`; reuse `final` if present."""
    done = final / "export.json"
    if done.exists():
        return json.loads(done.read_text())
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        meta = build(tmp)
        (tmp / "export.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same export first: its files are as good as ours.
            if not done.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return json.loads(done.read_text())


class _Forward:
    """The sentence-transformers forward as a module over plain tensors (what ONNX traces)."""

    def __new__(cls, model):
        import torch

        class Forward(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                feats = {"input_ids": input_ids, "attention_mask": attention_mask,
                         "token_type_ids": token_type_ids}
                return self.m.forward(feats)["sentence_embedding"]

        return Forward(model).eval()


def export_onnx(model_path: Path, model_fp: str) -> tuple[Path, dict]:
    """The fp32 ONNX export of the model (folder, export.json)."""
    v = _versions()
    final = cache_root() / "embed-models" / f"{model_fp[:16]}-onnx-fp32-e{EXPORT_VERSION}-t{v['torch'].split('+')[0]}"

    def build(tmp: Path) -> dict:
        import torch

        from thresher.stages.embed.model import load_model

        model, _ = load_model(str(model_path), "cpu")
        t0 = time.perf_counter()
        # Shapes and padding differ from the traced example on purpose: the export must not
        # bake in a batch size, a length or an all-ones mask.
        x = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 1037, 3231, 102]])
        am = (x != 0).long()
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(_Forward(model), (x, am, torch.zeros_like(x)), str(tmp / "model.onnx"),
                              input_names=list(INPUT_NAMES), output_names=["sentence_embedding"],
                              dynamic_axes={**{k: {0: "batch", 1: "seq"} for k in INPUT_NAMES},
                                            "sentence_embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        return {"kind": "onnx-fp32", "source_model": str(model_path), "source_fingerprint": model_fp,
                "versions": v, "export_version": EXPORT_VERSION, "sha256": _sha256(tmp / "model.onnx"),
                "build_s": round(time.perf_counter() - t0, 2)}

    return final, _build_once(final, build)


def _ffn_down_projections(onnx_path: Path) -> list[str]:
    """MatMul nodes of the feed-forward down projections (BERT naming: layer.N/output/dense). Their
    input is the GELU output, whose outliers a per-batch u8 scale cannot hold: quantised, they cost
    all-MiniLM-L6-v2 min cosine 0.989 on the check texts; kept fp32, 0.996 (a third of the
    linear FLOPs stay fp32)."""
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in g.node if n.op_type == "MatMul" and "/output/dense/" in n.name and "/attention/" not in n.name]


def export_int8(model_path: Path, model_fp: str, isa: str) -> tuple[Path, dict]:
    """Dynamically quantised int8 ONNX (MatMul weights int8, activations u8 per batch) for `isa`."""
    src, src_meta = export_onnx(model_path, model_fp)
    final = src.parent / f"{src.name}-int8-{isa}"

    def build(tmp: Path) -> dict:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        t0 = time.perf_counter()
        keep = _ffn_down_projections(src / "model.onnx")
        quantize_dynamic(str(src / "model.onnx"), str(tmp / "model.onnx"), op_types_to_quantize=["MatMul"],
                         per_channel=True, reduce_range=(isa != "avx512_vnni"), weight_type=QuantType.QInt8,
                         nodes_to_exclude=keep)
        return {"kind": f"onnx-int8-{isa}", "source_model": str(model_path), "source_fingerprint": model_fp,
                "fp32_sha256": src_meta["sha256"], "versions": src_meta["versions"], "isa": isa,
                "fp32_matmuls": keep,
                "export_version": EXPORT_VERSION, "sha256": _sha256(tmp / "model.onnx"),
                "build_s": round(time.perf_counter() - t0, 2)}

    return final, _build_once(final, build)


# ---------------------------------------------------------------------------------- runners
class OnnxRunner:
    def __init__(self, folder: str, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(Path(folder) / "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]

    def __call__(self, ids: np.ndarray, am: np.ndarray, tt: np.ndarray) -> np.ndarray:
        feed = dict(zip(INPUT_NAMES, (ids, am, tt)))
        return self.sess.run(None, {k: feed[k] for k in self.names})[0]


class OpenvinoRunner:
    def __init__(self, folder: str, threads: int, precision: str):
        import openvino as ov

        core = ov.Core()
        # The precision hint is always set: OpenVINO's default on CPUs with bf16 units is bf16.
        conf = {"INFERENCE_NUM_THREADS": max(1, threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        model = core.read_model(str(Path(folder) / "model.onnx"))
        self.compiled = core.compile_model(model, "CPU", conf)
        self.names = [p.get_any_name() for p in self.compiled.inputs]

    def __call__(self, ids: np.ndarray, am: np.ndarray, tt: np.ndarray) -> np.ndarray:
        feed = dict(zip(INPUT_NAMES, (ids, am, tt)))
        return np.asarray(self.compiled({k: feed[k] for k in self.names})[0])


_RUNNERS: dict[tuple, object] = {}


def load_runner(backend: str, precision: str, folder: str, threads: int):
    """The worker's runner for an exported model: built on first use, then reused."""
    key = (backend, precision, folder, threads)
    r = _RUNNERS.get(key)
    if r is None:
        try:
            r = OnnxRunner(folder, threads) if backend == "onnx" else OpenvinoRunner(folder, threads, precision)
        except Exception as exc:
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise StageError(f"embed.backend: cannot load the {backend} export {folder}: {first[:200]}") from None
        _RUNNERS[key] = r
    return r


# ---------------------------------------------------------------------------------- the pick
@dataclass(frozen=True)
class Plan:
    backend: str          # torch | onnx | openvino
    precision: str        # fp32 | bf16 | fp16 | int8
    why: str
    artifact: str = ""    # exported model folder (not torch)
    fingerprint: str = ""  # sha256 of the exported model file (not torch)

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"


def check_texts() -> list[str]:
    """Fixed texts for the quality gate: every 40th description of the shipped demo data (about a
    hundred, short to a few hundred tokens)."""
    import pyarrow.parquet as pq

    path = Path(__file__).resolve().parent.parent.parent / "configs" / "data" / "debian_demo.parquet"
    t = pq.read_table(path, columns=["id", "text"]).sort_by("id")
    return [str(x) for x in t.column("text").to_pylist()[::40]]


def _embed_check(model, runner, texts: list[str], max_len: int) -> np.ndarray:
    """Sentence vectors of `texts` through `runner` (None: torch fp32), in length-sorted batches."""
    import torch

    enc = model.tokenizer(texts, truncation=True, max_length=max_len)
    seqs = enc["input_ids"]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    for i in range(0, len(order), 16):
        sel = order[i:i + 16]
        w = max(len(seqs[s]) for s in sel)
        x = np.zeros((len(sel), w), dtype=np.int64)
        am = np.zeros_like(x)
        for k, s in enumerate(sel):
            x[k, :len(seqs[s])] = seqs[s]
            am[k, :len(seqs[s])] = 1
        if runner is None:
            with torch.inference_mode():
                t = {"input_ids": torch.from_numpy(x), "attention_mask": torch.from_numpy(am),
                     "token_type_ids": torch.zeros_like(torch.from_numpy(x))}
                out[sel] = model.forward(t)["sentence_embedding"].float().numpy()
        else:
            out[sel] = runner(x, am, np.zeros_like(x))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def quality_check(model_path: Path, plan: Plan) -> float:
    """Min cosine of the plan's vectors to torch fp32 on the check texts; stored beside the
    export (computed once per export and precision)."""
    folder = Path(plan.artifact)
    store = folder / f"check-{plan.backend}-{plan.precision}.json"
    if store.exists():
        return float(json.loads(store.read_text())["min_cos"])
    from thresher.kernels.threads import task_threads
    from thresher.stages.embed.model import load_model

    model, _ = load_model(str(model_path), "cpu")
    texts = check_texts()
    max_len = int(model.max_seq_length or 256)
    ref = _embed_check(model, None, texts, max_len)
    got = _embed_check(model, load_runner(plan.backend, plan.precision, plan.artifact, task_threads()),
                       texts, max_len)
    cos = float((ref * got).sum(1).min())
    tmp = store.with_name(f".{store.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"min_cos": cos, "texts": len(texts)}))
    os.replace(tmp, store)
    return cos


def plan_for(backend: str, precision: str, model_path: Path, model_fp: str) -> Plan:
    """An explicit backend and precision (auto precision: fp32 for onnx and openvino)."""
    prec = "fp32" if precision == "auto" else precision
    if prec not in PRECISIONS[backend]:
        raise ConfigError(f"embed.precision: {backend} runs {', '.join(PRECISIONS[backend])}, not {precision}")
    try:
        if backend == "onnx" and prec == "int8":
            isa = int8_isa()
            folder, meta = export_int8(model_path, model_fp, isa)
            why = f"configured; quantised for {isa}"
        else:
            folder, meta = export_onnx(model_path, model_fp)
            why = "configured"
    except ImportError as exc:
        raise ConfigError(f"embed.backend: {backend} needs the package {exc.name} (pip install onnx onnxruntime openvino)") from None
    return Plan(backend, prec, why, str(folder), meta["sha256"])


# Preference order for `auto`, fastest first, as measured by benchmarks/bench_embed.py (README,
# Embeddings). Only candidates held to the fp32 bound: int8 is picked only when asked. OpenVINO
# bf16 held min cosine 0.99997 to torch fp32 on 600 corpus documents (Zen 4, AVX512-BF16), so it
# leads where the CPU has bf16 dot products; the quality gate still checks it on every CPU.
AUTO_ORDER = (("onnx", "fp32"), ("openvino", "fp32"))
AUTO_ORDER_BF16 = (("openvino", "bf16"),) + AUTO_ORDER


def auto_order() -> tuple[tuple[str, str], ...]:
    from thresher.kernels.backend import cpu_bf16

    return AUTO_ORDER_BF16 if cpu_bf16() else AUTO_ORDER


def pick_auto(precision: str, device: str, model_path: Path, model_fp: str) -> Plan:
    """backend: auto. On CUDA or with a torch-only precision: torch. Otherwise the first of
    AUTO_ORDER (the int8 export when precision is int8) whose vectors hold the bound against torch
    fp32 on the check texts; torch fp32 when none does or none is installed. A configured precision
    keeps to candidates of that precision (fp32 never becomes bf16)."""
    if device == "cuda" or precision in ("bf16", "fp16"):
        return Plan("torch", "", "auto: torch runs CUDA and bf16/fp16 autocast")
    order = (("onnx", "int8"),) if precision == "int8" else auto_order()
    if precision != "auto":
        order = tuple(c for c in order if c[1] == precision)
    tried = []
    for backend, prec in order:
        try:
            plan = plan_for(backend, prec, model_path, model_fp)
            cos = quality_check(model_path, plan)
        except (ConfigError, StageError) as exc:
            tried.append(f"{backend} {prec}: {exc}")
            continue
        if cos >= BOUND[prec]:
            why = (f"auto: {backend} {prec}, the fastest measured path that holds min cosine {cos:.5f} >= "
                   f"{BOUND[prec]} to torch fp32 on the check texts" + (f" ({plan.why})" if "isa" in plan.why else ""))
            return Plan(backend, prec, why, plan.artifact, plan.fingerprint)
        tried.append(f"{backend} {prec}: min cosine {cos:.5f} < {BOUND[prec]}")
    return Plan("torch", "fp32", "auto: torch fp32 (" + "; ".join(tried) + ")")


def resolve_plan(backend: str, precision: str, device: str, model_path: Path, model_fp: str) -> Plan:
    """The driver's pick, logged by the caller. A torch plan leaves precision to resolve_precision."""
    if backend not in BACKENDS:
        raise ConfigError(f"embed.backend: '{backend}' is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return pick_auto(precision, device, model_path, model_fp)
    if backend == "torch":
        if precision == "int8":
            raise ConfigError("embed.precision: int8 runs on the onnx backend (embed.backend: onnx or auto)")
        return Plan("torch", "", "configured")
    if device == "cuda":
        raise ConfigError(f"embed.backend: {backend} runs on CPU here; use torch for embed.device: cuda")
    return plan_for(backend, precision, model_path, model_fp)
