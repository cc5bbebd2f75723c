"""embed: tokenise a window of documents, sort by length, cut padded-token-budget batches, run
the model and pool chunk vectors."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import numpy as np

from thresher.schemas.errors import StageError

if TYPE_CHECKING:
    from thresher.stages.embed import Config

# Length bucketing: padding allowed per batch (fraction of its real tokens), and the batch size
# below which a batch is never cut for padding (tiny batches cost more than their padding).
PAD_SLACK = 0.15
MIN_BATCH = 8
# Texts are cut to this many characters per kept token before tokenising, so a megabyte document
# costs no more than a page. A WordPiece token never spans more than 100 characters of a word, so
# only text with huge runs of whitespace or symbols could lose kept tokens; cut texts count as
# truncated.
CHARS_PER_TOKEN = 100


class Encoder:
    """Tokenise, length-bucket, run the model and pool chunks, for one window of documents."""

    def __init__(self, model, cfg: Config, device: str, precision: str, runner=None):
        import torch

        self.torch = torch
        self.model = model
        # An exported model (onnx, openvino) called on numpy batches; None: the torch model.
        self.runner = runner
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.tok = model.tokenizer
        if self.tok is None:
            raise StageError("embed.model: the model has no text tokenizer")
        model_max = int(model.max_seq_length or 512)
        first = model[0] if len(model) else None
        # A longer limit than the model's default is allowed up to its position embeddings.
        positions = getattr(getattr(getattr(first, "auto_model", None), "config", None), "max_position_embeddings", None)
        self.max_len = min(cfg.max_seq_length, int(positions or model_max)) if cfg.max_seq_length else model_max
        self.lower = bool(getattr(first, "do_lower_case", False))
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.left_pad = getattr(self.tok, "padding_side", "right") == "left"
        self.type_ids = "token_type_ids" in getattr(self.tok, "model_input_names", ())
        self.dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                       else model.get_sentence_embedding_dimension())
        chunks = 1 if cfg.long_docs == "truncate" else cfg.max_chunks
        self.clip = max(self.max_len * chunks * CHARS_PER_TOKEN, 4096)
        self.stats = self.empty_stats()

    @staticmethod
    def empty_stats() -> dict:
        return {"docs": 0, "long_docs": 0, "truncated": 0, "clipped": 0, "chunks": 0, "tokens": 0,
                "padded_tokens": 0, "batches": 0, "split_batches": 0, "empty_texts": 0, "sanitised": 0,
                "tokenize_s": 0.0, "model_s": 0.0}

    def autocast(self):
        if self.runner is not None:
            return contextlib.nullcontext()
        if self.precision == "bf16":
            return self.torch.autocast(self.device, dtype=self.torch.bfloat16)
        if self.precision == "fp16":
            return self.torch.autocast(self.device, dtype=self.torch.float16)
        return contextlib.nullcontext()

    def _tokenise(self, texts: list[str]):
        kw = dict(truncation=True, max_length=self.max_len, return_overflowing_tokens=True, stride=0,
                  padding=False, return_attention_mask=False, return_token_type_ids=False)
        try:
            enc = self.tok(texts, **kw)
            return enc["input_ids"], enc["overflow_to_sample_mapping"]
        except Exception:
            pass
        # One text broke the tokenizer: go text by text so only that text is cleaned.
        seqs, owner = [], []
        for i, t in enumerate(texts):
            try:
                enc = self.tok([t], **kw)
            except Exception:
                self.stats["sanitised"] += 1
                enc = self.tok([_sanitise(t)], **kw)
            seqs.extend(enc["input_ids"])
            owner.extend([i] * len(enc["input_ids"]))
        return seqs, owner

    def encode(self, texts: list[str], ids: list[str]) -> np.ndarray:
        n = len(texts)
        st = self.stats
        t0 = time.perf_counter()
        clean = []
        clipped = np.zeros(n, dtype=bool)
        for i, t in enumerate(texts):
            if t is None or not t.strip():
                st["empty_texts"] += 1
                t = t or ""
            if len(t) > self.clip:
                clipped[i] = True
                t = t[: self.clip]
            clean.append(t.lower() if self.lower else t)
        seqs, owner = self._tokenise(clean)
        owner = np.asarray(owner, dtype=np.int64)
        # Chunks of one document are consecutive; the first is the truncated document.
        first = np.ones(len(owner), dtype=bool)
        first[1:] = owner[1:] != owner[:-1]
        per_doc = np.bincount(owner, minlength=n)
        st["long_docs"] += int(((per_doc > 1) | clipped).sum())
        st["clipped"] += int(clipped.sum())
        # Text is lost when it is cut (truncate) or runs past the last chunk kept (chunk).
        limit = 1 if self.cfg.long_docs == "truncate" else self.cfg.max_chunks
        st["truncated"] += int(((per_doc > limit) | clipped).sum())
        if self.cfg.long_docs == "truncate":
            keep = np.flatnonzero(first)
        else:
            rank = np.arange(len(owner)) - np.maximum.accumulate(np.where(first, np.arange(len(owner)), 0))
            keep = np.flatnonzero(rank < self.cfg.max_chunks)
        seqs = [seqs[i] for i in keep]
        owner = owner[keep]
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        st["tokenize_s"] += time.perf_counter() - t0
        st["docs"] += n
        st["chunks"] += len(seqs)
        st["tokens"] += int(lens.sum())

        vecs = np.empty((len(seqs), self.dim), dtype=np.float32)
        order = np.argsort(lens, kind="stable")
        with self.torch.inference_mode(), self.autocast():
            # One autocast region for the whole window keeps the low-precision weight copies.
            for sel in self._batches(order, lens):
                self._run(sel, seqs, lens, vecs, ids, owner)
        if self.cfg.long_docs == "truncate":
            out = vecs
        else:
            w = lens.astype(np.float32)[:, None]
            out = np.zeros((n, self.dim), dtype=np.float32)
            np.add.at(out, owner, vecs * w)
            out /= np.bincount(owner, weights=lens, minlength=n).astype(np.float32)[:, None]
        if self.cfg.normalize:
            norm = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norm > 0, norm, 1.0)
        return out

    def _batches(self, order: np.ndarray, lens: np.ndarray):
        budget, cap = self.cfg.batch_tokens, self.cfg.max_batch_size
        slack = 1.0 + PAD_SLACK
        i, m = 0, len(order)
        while i < m:
            j = i + 1
            real = int(lens[order[i]])
            # Sorted ascending, so the batch's padded width is the length of its last member. A
            # batch also ends where the next sequence would make padding exceed PAD_SLACK of the
            # real tokens (small windows have sparse lengths), unless the batch is still tiny.
            while j < m and j - i < cap:
                L = int(lens[order[j]])
                if (j - i + 1) * L > budget:
                    break
                if j - i >= MIN_BATCH and (j - i + 1) * L > slack * (real + L):
                    break
                real += L
                j += 1
            yield order[i:j]
            i = j

    def _run(self, sel: np.ndarray, seqs, lens, vecs, ids, owner) -> None:
        torch = self.torch
        width = int(lens[sel].max())
        x = np.full((len(sel), width), self.pad_id, dtype=np.int64)
        am = np.zeros((len(sel), width), dtype=np.int64)
        for k, s in enumerate(sel):
            L = lens[s]
            if self.left_pad:
                x[k, width - L:] = seqs[s]
                am[k, width - L:] = 1
            else:
                x[k, :L] = seqs[s]
                am[k, :L] = 1
        t0 = time.perf_counter()
        try:
            if self.runner is not None:
                vecs[sel] = self.runner(x, am, np.zeros_like(x))
            else:
                feats = {"input_ids": torch.from_numpy(x).to(self.device),
                         "attention_mask": torch.from_numpy(am).to(self.device), "modality": "text"}
                if self.type_ids:
                    feats["token_type_ids"] = torch.zeros_like(feats["input_ids"])
                emb = self.model.forward(feats)["sentence_embedding"]
                vecs[sel] = emb.float().cpu().numpy()
        except (RuntimeError, MemoryError) as exc:
            # Out of memory on a wide batch: halve it; only a single sequence may fail the task.
            if len(sel) == 1:
                raise StageError(f"embed: document '{ids[owner[sel[0]]]}' ({int(lens[sel[0]])} tokens) failed in the model: "
                                 f"{str(exc).splitlines()[0][:160]}") from None
            self.stats["split_batches"] += 1
            half = len(sel) // 2
            self.stats["model_s"] += time.perf_counter() - t0
            self._run(sel[:half], seqs, lens, vecs, ids, owner)
            self._run(sel[half:], seqs, lens, vecs, ids, owner)
            return
        self.stats["model_s"] += time.perf_counter() - t0
        self.stats["batches"] += 1
        self.stats["padded_tokens"] += len(sel) * width


def _sanitise(text: str) -> str:
    import unicodedata

    text = text.encode("utf-8", "replace").decode("utf-8")
    return "".join(c for c in text if unicodedata.category(c)[0] != "C" or c in "\n\t")

