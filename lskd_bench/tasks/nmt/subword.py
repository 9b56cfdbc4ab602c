"""Joint SentencePiece sub-words, trained once per corpus and cached by content hash.

The model and the encoded corpus live under ``<run dir>/<task>/cache/spm-<hash>/``: every cell of a grid
(and every process or machine sharing the run directory) reuses them. The hash covers the training text
and the SentencePiece settings, so another corpus or vocabulary size gets its own model. Building is
guarded by a file lock, so concurrent processes build it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ... import store
from ...errors import UsageError

# fairseq's special-symbol layout, so that SentencePiece ids are dictionary indices
SPECIAL = {"bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3}


def _spm():
    try:
        import sentencepiece as spm  # optional [nmt] extra: imported on first use
    except ImportError:
        raise UsageError('the translation tasks need sentencepiece: pip install -e ".[nmt]"') from None
    return spm


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def corpus_key(texts: list[str], vocab_size: int, model_type: str) -> str:
    spm = _spm()
    h = hashlib.sha256()
    h.update(f"{vocab_size}|{model_type}|{spm.__version__}|".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


class SubwordModel:
    def __init__(self, model_file: Path):
        self.path = Path(model_file)
        self.sp = _spm().SentencePieceProcessor(model_file=str(model_file))

    def pieces(self) -> list[str]:
        return [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text followed by eos (fairseq's sentence layout)."""
        eos = SPECIAL["eos_id"]
        return [np.array([*ids, eos], dtype=np.int32) for ids in self.sp.encode(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if i >= SPECIAL["unk_id"]])  # bos, pad and eos dropped


def subword_model(train_texts: list[str], cache_dir: Path | None, vocab_size: int, model_type: str) -> SubwordModel:
    """Train (or reuse) the joint model on ``train_texts`` (source and target sentences of the train split)."""
    spm = _spm()
    key = corpus_key(train_texts, vocab_size, model_type)
    if cache_dir is None:  # no run directory (a test, check-data): a private temporary cache
        cache_dir = Path(tempfile.gettempdir()) / f"lskd-bench-spm-{os.getuid()}"
    d = Path(cache_dir) / f"spm-{key}"
    model = d / "spm.model"
    with file_lock(d.parent / f".spm-{key}.lock"):
        if not model.is_file():
            buf = io.BytesIO()
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(train_texts),
                model_writer=buf,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                hard_vocab_limit=False,
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                num_threads=min(16, os.cpu_count() or 1),
                minloglevel=2,
                **SPECIAL,
            )
            store.atomic_write(model, lambda f: f.write(buf.getvalue()))
    return SubwordModel(model)


def encoded(model: SubwordModel, name: str, texts_by_split: dict[str, list[str]]) -> dict[str, list[np.ndarray]]:
    """Encode every split once and cache the ids beside the model (keyed by the split texts)."""
    h = hashlib.sha256()
    for split in sorted(texts_by_split):
        h.update(split.encode())
        for t in texts_by_split[split]:
            h.update(t.encode())
            h.update(b"\n")
    path = model.path.parent / f"encoded-{name}-{h.hexdigest()[:16]}.npz"
    with file_lock(model.path.parent / f".{path.name}.lock"):
        if path.is_file():
            with np.load(path) as z:
                return {
                    split: np.split(z[f"{split}_ids"], np.cumsum(z[f"{split}_lens"])[:-1]) for split in texts_by_split
                }
        out = {split: model.encode(texts) for split, texts in texts_by_split.items()}
        arrays = {}
        for split, seqs in out.items():
            arrays[f"{split}_ids"] = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
            arrays[f"{split}_lens"] = np.array([len(s) for s in seqs], dtype=np.int64)
        store.atomic_write(path, lambda f: np.savez(f, **arrays))
    return out
