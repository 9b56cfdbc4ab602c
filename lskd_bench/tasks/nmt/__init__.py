"""Machine translation tasks: IWSLT En->De / En->Ru (Transformer -> Transformer, BLEU) and an offline demo.

The shared runner trains them like every other task. What is specific lives here:

- a batch is a fairseq-style padded sample; ``forward`` returns the logits and targets of the non-pad
  target positions, so word-level KD and every logit method apply token by token;
- batches are length-bucketed with ``max_tokens`` (fairseq's batch_by_size) and shuffled per (seed, epoch);
- ``evaluate`` decodes the test split with beam search and scores it with sacreBLEU; the epoch reported
  (the selected epoch) is chosen on the validation split (``select_on``: validation BLEU with the same beam by
  default, or validation loss), never on test; the test hypotheses of the selected and last epochs are written beside
  result.json;
- ``teacher_targets`` translates the training sources with the teacher (sequence-level KD).

fairseq, sentencepiece and sacreBLEU come with ``pip install -e ".[nmt]"``; only
``fairseq_adapter`` imports fairseq.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ... import store
from ...errors import UsageError
from ...metrics import MetricSpec
from ...schema import TRAIN, Field, Section
from .. import TASKS
from ..base import DATA_ROOT_FLAGS, DataReport, Evaluation, Task, TaskData, autocast
from ..cache import KeyedCache, files_key
from ..loading import Batches
from . import fairseq_adapter
from .corpus import LAYOUTS, Corpus, corpus_files, detect_layout, read_corpus
from .fairseq_adapter import ARCHS, build_transformer, collate, generator, length_batches, make_dictionary
from .gettext_corpus import django_root, read_gettext_corpus
from .scoring import translation_scores
from .subword import SubwordModel, encoded, file_lock, subword_model

PAD, EOS = 1, 2


def _direction(v: str) -> str | None:
    parts = v.split("-")
    return (
        None if len(parts) == 2 and all(p.isalpha() for p in parts) and parts[0] != parts[1] else "must look like en-de"
    )


NMT_DATA = Section(
    {
        "root": Field(
            str,
            None,
            "IWSLT data directory (--data-root): the raw release or a plain layout",
            nullable=True,
            flags=DATA_ROOT_FLAGS,
        ),
        "direction": Field(
            str, "en-de", "source-target languages, e.g. en-de (or de-en for the reverse)", check=_direction
        ),
        "layout": Field(
            str,
            "auto",
            "raw (IWSLT release files), plain (train/valid/test.<lang>) or auto",
            choices=("auto", "raw", "plain"),
        ),
        "test_sets": Field(
            [str],
            [],
            "raw layout: use only the dev/tst files whose name contains one of these "
            "(default: all of them, as fairseq's prepare-iwslt14.sh)",
        ),
        "valid_every": Field(int, 23, "every N-th training pair is held out for validation (raw layout)", min=2),
        "max_len": Field(int, 175, "training pairs longer than this many words (either side) are dropped", min=1),
        "len_ratio": Field(
            float, 1.5, "training pairs whose word counts differ by more than this ratio are dropped", min=1.0
        ),
        "vocab_size": Field(
            int, 10000, "joint SentencePiece vocabulary size (at most; small corpora get fewer)", min=16
        ),
        "subword_model": Field(str, "unigram", "SentencePiece model type", choices=("unigram", "bpe")),
        "on_bad_sample": Field(
            str,
            "error",
            "a line that is not valid UTF-8: error (naming file and line) or skip the pair",
            choices=("error", "skip"),
            identity=False,
        ),
    }
)

GENERATION = Section(
    {
        "beam": Field(int, 5, "beam size", min=1, max=1024, identity=False),
        "lenpen": Field(float, 1.0, "length penalty", identity=False),
        "max_len_a": Field(float, 0.0, "max output length = a * source length + b", min=0.0, identity=False),
        "max_len_b": Field(int, 200, "max output length = a * source length + b", min=1, identity=False),
        "max_sentences": Field(int, 128, "sentences decoded at once", min=1, identity=False),
        "max_tokens": Field(
            int,
            None,
            "and at most this many source tokens a batch, counted as sentences x longest "
            "source (fairseq-generate's --max-tokens; null: max_sentences only)",
            min=1,
            nullable=True,
            identity=False,
        ),
        "limit": Field(
            int,
            None,
            "score only the first N test sentences (quick looks; null: all)",
            min=1,
            nullable=True,
            identity=False,
        ),
    },
    "beam search for evaluation and sequence-level KD",
)

NMT_TRAIN = TRAIN.extend(
    {
        "batch_size": Field(
            int,
            None,
            "at most this many sentence pairs per batch (null: only max_tokens bounds it)",
            min=1,
            nullable=True,
        ),
        "max_tokens": Field(int, 4096, "tokens per batch (fairseq's --max-tokens; the global batch under DDP)", min=16),
        "dropout": Field(float, 0.3, "dropout", min=0.0, max=1.0, max_exclusive=True),
        "attention_dropout": Field(float, 0.0, "attention dropout", min=0.0, max=1.0, max_exclusive=True),
        "activation_dropout": Field(
            float, 0.0, "dropout after the FFN activation", min=0.0, max=1.0, max_exclusive=True
        ),
        "share_decoder_input_output_embed": Field(bool, True, "tie the decoder's input and output embeddings"),
        "share_all_embeddings": Field(bool, False, "tie encoder and decoder embeddings too (joint vocabulary)"),
        "max_positions": Field(int, 1024, "longest sequence the positional embeddings cover", min=8),
        "select_on": Field(
            str,
            "valid_bleu",
            "how the reported (selected) epoch is chosen among the evaluated ones, on the "
            "validation split: valid_bleu (sacreBLEU of a beam search with the generation settings, the "
            "reported metric) or valid_loss (cross-entropy of the references, fairseq's checkpoint_best; "
            "no decoding, but label smoothing and KD temperature shift it apart from BLEU)",
            choices=("valid_bleu", "valid_loss"),
            identity=False,
        ),
        "pad_to_multiple": Field(
            int,
            1,
            "pad training batches' lengths up to a multiple of this, so that shapes repeat "
            "(for --compile / CUDA; the loss skips the padding, but dropout draws other masks)",
            min=1,
            identity=False,
        ),
    }
)


@dataclass
class Split:
    """A parallel split: token ids (with eos) and the original text of each side."""

    src: list[np.ndarray]
    tgt: list[np.ndarray]
    src_text: list[str]
    tgt_text: list[str]
    _lens: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.src)

    def lens(self) -> tuple[np.ndarray, np.ndarray]:
        if self._lens is None:
            self._lens = (
                np.array([len(s) for s in self.src], np.int64),
                np.array([len(t) for t in self.tgt], np.int64),
            )
        return self._lens

    def with_targets(self, tgt: list[np.ndarray], tgt_text: list[str]) -> Split:
        return Split(self.src, tgt, self.src_text, tgt_text)


def _move(obj: Any, device: torch.device) -> Any:
    """``obj``'s tensors on ``device``; to CUDA through pinned memory, from which the copy is asynchronous (the
    host does not wait for the device)."""
    if torch.is_tensor(obj):
        if device.type == "cuda":
            obj = obj.pin_memory()
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


def generation_batches(src_lens: np.ndarray, max_sentences: int, max_tokens: int | None) -> list[np.ndarray]:
    """Sentence indices sorted by source length (stable), cut into batches of at most ``max_sentences``
    sentences and, with ``max_tokens``, at most ``max_tokens`` tokens counted as sentences x longest source
    (fairseq-generate's rule). A sentence longer than the bound decodes alone."""
    order = np.argsort(src_lens, kind="stable")
    if max_tokens is None:
        return [order[i : i + max_sentences] for i in range(0, len(order), max_sentences)]
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        size, longest = end - start, int(src_lens[order[end - 1]])  # sorted: the last is the longest
        if end - start > 1 and (size > max_sentences or size * longest > max_tokens):
            batches.append(order[start : end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    return batches


class TranslationTask(Task):
    kind = "translation"
    metrics = (
        MetricSpec("bleu", "detokenised sacreBLEU"),
        MetricSpec("chrf", "chrF2", shown=False),
        MetricSpec("bleu_tok", "tokenised lower-cased BLEU", shown=False),
    )
    primary_metric = "bleu"
    supports_analysis = False
    data_schema = NMT_DATA
    train_schema = NMT_TRAIN
    extra_sections: ClassVar[dict[str, Section]] = {"generation": GENERATION}
    recipe = ""
    archs: tuple[str, ...] = ()

    def __init__(self) -> None:
        # the corpus check_layout read, handed once (then dropped: it is large) to the next corpus() call whose
        # data settings and corpus files (paths, sizes, mtimes) are the same: run checks, then trains from it
        self.checked_corpus: KeyedCache[Corpus] = KeyedCache()

    # -- config -------------------------------------------------------------------------------------
    def langs(self, cfg: dict[str, Any]) -> tuple[str, str]:
        src, tgt = cfg["data"]["direction"].split("-")
        return src, tgt

    def validate(self, cfg: dict[str, Any]) -> None:
        for role in ("teacher", "student"):
            arch = cfg[role]["arch"]
            if arch not in ARCHS:
                raise UsageError(f"{role} arch {arch!r} is not offered by task {self.name} (known: {', '.join(ARCHS)})")
        self.check_source(cfg)

    def cpu_reason(self, cfg: dict[str, Any]) -> str | None:
        archs = {cfg[r]["arch"] for r in ("teacher", "student")}
        if all(a in ARCHS and ARCHS[a].tiny for a in archs):
            return (
                f"{' and '.join(sorted(archs))} are too small to gain from a GPU (a step is a few hundred tiny "
                "kernel launches: one demo seed had not finished after 265 s on an H200; the whole demo grid "
                "takes ~475 s on 2 CPU cores); --device cuda overrides"
            )
        return None

    def check_source(self, cfg: dict[str, Any]) -> None:
        root = cfg["data"]["root"]
        if not root:
            raise UsageError(f"task {self.name} needs --data-root DIR; {LAYOUTS}")
        root = Path(root)
        if not root.is_dir():
            raise UsageError(f"data root {root} is not a directory; {LAYOUTS}")
        if cfg["data"]["layout"] == "auto":
            detect_layout(root, *self.langs(cfg))

    def corpus_key(self, cfg: dict[str, Any]) -> tuple:
        """What a corpus read with ``cfg`` depends on: the data settings and the files it may be read from (their
        paths, sizes and modification times)."""
        d = cfg["data"]
        files = corpus_files(Path(d["root"]), *self.langs(cfg)) if d["root"] else []
        return json.dumps(d, sort_keys=True, default=str), files_key(files)

    def corpus(self, cfg: dict[str, Any]) -> Corpus:
        cached = self.checked_corpus.take(self.corpus_key(cfg))
        if cached is not None:
            return cached  # just read by check_layout in this run: not read twice
        d = cfg["data"]
        src, tgt = self.langs(cfg)
        return read_corpus(
            Path(d["root"]),
            src,
            tgt,
            d["layout"],
            policy=d["on_bad_sample"],
            max_len=d["max_len"],
            len_ratio=d["len_ratio"],
            valid_every=d["valid_every"],
            test_sets=tuple(d["test_sets"]),
        )

    def check_layout(self, cfg: dict[str, Any]) -> None:
        """Read the corpus as training will (every layout and alignment error is found here); the next
        ``corpus()`` call of the same data settings and unchanged files reuses it (``checked_corpus``)."""
        self.check_source(cfg)
        key = self.corpus_key(cfg)
        self.checked_corpus.put(key, self.corpus(cfg))

    def check_data(self, cfg: dict[str, Any], progress: bool = True) -> DataReport:
        self.check_source(cfg)
        c = self.corpus(cfg)
        return DataReport(counts=c.counts(), notes=c.report)

    # -- data ---------------------------------------------------------------------------------------
    def load_data(self, cfg: dict[str, Any], cache_dir: Path | None = None) -> TaskData:
        corpus = self.corpus(cfg)
        d = cfg["data"]
        train_text = [s for s, _ in corpus.train] + [t for _, t in corpus.train]
        sw = subword_model(train_text, cache_dir, int(d["vocab_size"]), d["subword_model"])
        texts = {
            f"{split}_{side}": [p[i] for p in getattr(corpus, split)]
            for split in ("train", "valid", "test")
            for i, side in enumerate(("src", "tgt"))
        }
        ids = encoded(sw, self.name, texts)
        report = list(corpus.report)
        # evaluation cuts long sources to the models' longest input, as 'translate' does (a 1 MB line used to
        # go whole to the encoder); the valid split's references too (its teacher-forced loss)
        longest = min(int(cfg[role]["max_positions"]) for role in ("teacher", "student"))
        for key in ("valid_src", "valid_tgt", "test_src"):
            arrays = ids[key] = list(ids[key])
            cut = [i for i, a in enumerate(arrays) if len(a) > longest]
            for i in cut:
                arrays[i] = np.append(arrays[i][: longest - 1], arrays[i][-1])  # keep the eos
            if cut:
                name, side = key.split("_")
                note = (
                    f"{name}: {len(cut)} {'source' if side == 'src' else 'reference'} line(s) longer than "
                    f"{longest} sub-words cut to the models' longest input (e.g. line {cut[0] + 1})"
                )
                report.append(note)
                print(f"note: {note}", file=sys.stderr)

        def split(name: str) -> Split:
            return Split(ids[f"{name}_src"], ids[f"{name}_tgt"], texts[f"{name}_src"], texts[f"{name}_tgt"])

        dictionary = make_dictionary(sw.pieces())
        return TaskData(
            train=split("train"),
            val=split("test"),  # TaskData.val is the evaluated split (read as .test): translation's test set
            num_classes=len(dictionary),  # the output size (read as .num_outputs): the vocabulary
            class_names=[],
            extras={"valid": split("valid"), "dictionary": dictionary, "subwords": sw, "report": report},
        )

    def build_model(self, arch: str, data: TaskData, cfg: dict[str, Any], hp: dict[str, Any]) -> nn.Module:
        return build_transformer(arch, data.extras["dictionary"], hp)

    # -- the training loop's hooks ------------------------------------------------------------------
    def train_batches(
        self,
        data: TaskData,
        role_cfg: dict[str, Any],
        cfg: dict[str, Any],
        *,
        seed: int,
        epoch: int,
        shard: tuple[int, int] = (0, 1),
        start: int = 0,
        pin_memory: bool = False,
        skipped: list[str] | None = None,
    ) -> Batches:
        """Length-bucketed batches of ``max_tokens``, in an order drawn from
        (seed, epoch): a random permutation, stably sorted by source then target length, cut into batches,
        the batches shuffled. With DDP the batches stay one process's (``max_tokens`` is the global batch's) and
        each process takes its contiguous share of each batch's sentences, so the processes' target rows gathered
        in rank order are one process's (``runners.distributed``)."""
        split: Split = data.train
        src_lens, tgt_lens = split.lens()
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(len(split))
        order = perm[np.lexsort((tgt_lens[perm], src_lens[perm]))]
        batches = length_batches(src_lens, tgt_lens, int(role_cfg["max_tokens"]), role_cfg["batch_size"], order)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        rank, world = shard
        if world > 1:  # in collate's order (longest source first), so that the shares in rank order are the batch
            fewest = min(len(b) for b in batches)
            if fewest < world:  # every rank decides alike: none waits for a rank that has nothing to step on
                raise UsageError(
                    f"a batch of {fewest} sentence(s) cannot be shared by {world} processes (each needs one): "
                    "raise max_tokens or batch_size, or train with fewer processes"
                )
            batches = [np.array_split(b[np.argsort(-src_lens[b], kind="stable")], world)[rank] for b in batches]
        batches = batches[start:]
        multiple = int(role_cfg["pad_to_multiple"])
        return Batches(len(batches), lambda: (self.collate(split, b, multiple) for b in batches))

    def collate(self, split: Split, idx, pad_to_multiple: int = 1) -> dict:
        samples = [
            {
                "id": int(i),
                "source": torch.from_numpy(split.src[i].astype(np.int64)),
                "target": torch.from_numpy(split.tgt[i].astype(np.int64)),
            }
            for i in idx
        ]
        batch = collate(samples, PAD, EOS, pad_to_multiple)
        # the flat positions of the non-pad targets, found here on the host: forward() gathers them without
        # the device-to-host sync a boolean mask costs
        batch["target_index"] = batch["target"].reshape(-1).ne(PAD).nonzero().squeeze(1)
        return batch

    def to_device(self, batch: Any, device: torch.device, cfg: dict[str, Any]) -> Any:
        return _move(batch, device)

    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        net = batch["net_input"]
        # alignment_layer=-1: no layer returns its encoder-attention weights (fairseq returns the last layer's by
        # default, which forces the explicit attention path); every attention runs as PyTorch SDPA
        logits, _ = model(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"], alignment_layer=-1)
        target = batch["target"]
        index = batch.get("target_index")
        if index is None:
            keep = target.ne(PAD)
            return logits[keep], target[keep]
        return logits.reshape(-1, logits.shape[-1]).index_select(0, index), target.reshape(-1).index_select(0, index)

    # -- decoding -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def translate(
        self,
        model: nn.Module,
        data: TaskData,
        split: Split,
        cfg: dict[str, Any],
        device: torch.device,
        limit: int | None = None,
        progress: bool = False,
    ) -> list[list[int]]:
        """Beam-search token ids (no eos) for the first ``limit`` sentences of ``split``, in order."""
        g = cfg["generation"]
        model.eval()
        gen = generator(model, data.extras["dictionary"], g["beam"], g["lenpen"], g["max_len_a"], g["max_len_b"])
        n = len(split) if limit is None else min(limit, len(split))
        out: list[list[int] | None] = [None] * n
        batches = generation_batches(split.lens()[0][:n], int(g["max_sentences"]), g["max_tokens"])
        for idx in tqdm(batches, desc="beam search", unit="batch", leave=False, disable=not progress):
            sample = _move(self.collate(split, idx), device)
            with autocast(device, cfg):
                hyps = fairseq_adapter.generate(gen, sample)  # looked up at call time (tests replace it)
            for sid, hyp in zip(sample["id"].tolist(), hyps):
                out[sid] = hyp
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device) -> dict[str, float]:
        hyps, refs = self._test_hypotheses(model, data, cfg, device)
        metrics, _ = translation_scores(hyps, refs, self.langs(cfg)[1])
        return metrics

    def _test_hypotheses(
        self, model: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device
    ) -> tuple[list[str], list[str]]:
        """Detokenised beam-search translations of the test split (``generation.limit`` first ones) and
        their references, in test order."""
        test: Split = data.test
        ids = self.translate(model, data, test, cfg, device, cfg["generation"]["limit"])
        sw = data.extras["subwords"]
        return [sw.decode(h) for h in ids], test.tgt_text[: len(ids)]

    def assess(
        self, model: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device, hp: dict[str, Any]
    ) -> Evaluation:
        """Test metrics, the validation score the epoch is selected on, and the test files: hypotheses
        (``test.hyp.{last,selected}.<tgt>``), references (``test.ref.<tgt>``) and sources (``test.src.<src>``),
        one sentence a line in test order, so that ``sacrebleu test.ref.de -i test.hyp.selected.de``
        reproduces the stored score."""
        src, tgt = self.langs(cfg)
        hyps, refs = self._test_hypotheses(model, data, cfg, device)
        metrics, _ = translation_scores(hyps, refs, tgt)
        valid: Split = data.extras["valid"]
        if hp["select_on"] == "valid_bleu":
            sw = data.extras["subwords"]
            vh = [sw.decode(h) for h in self.translate(model, data, valid, cfg, device)]
            score = translation_scores(vh, valid.tgt_text, tgt)[0]["bleu"]
        else:
            score = self.valid_loss(model, valid, hp, cfg, device)
        outputs = {
            f"test.hyp.{{which}}.{tgt}": hyps,
            f"test.ref.{tgt}": refs,
            f"test.src.{src}": data.val.src_text[: len(hyps)],
        }
        return Evaluation(metrics, selection=score, outputs=outputs)

    @torch.no_grad()  # not inference mode: fairseq caches the decoder's future mask, which training reuses
    def valid_loss(
        self, model: nn.Module, split: Split, hp: dict[str, Any], cfg: dict[str, Any], device: torch.device
    ) -> float:
        """Mean cross-entropy (nats per target token, eos included, no label smoothing) of the references of
        ``split`` under teacher forcing: the same measure for every cell whatever its training loss."""
        model.eval()
        src_lens, tgt_lens = split.lens()
        longest = np.maximum(src_lens, tgt_lens)
        order = np.argsort(longest, kind="stable")
        cap = int(hp["max_tokens"])
        total, count, batch = 0.0, 0, []
        for k, i in enumerate(order):
            batch.append(i)
            nxt = order[k + 1] if k + 1 < len(order) else None
            if nxt is None or (len(batch) + 1) * int(longest[nxt]) > cap:
                sample = _move(self.collate(split, np.array(batch)), device)
                with autocast(device, cfg):
                    logits, target = self.forward(model, sample)
                total += float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
                count += int(target.numel())
                batch = []
        return total / max(count, 1)

    def selection(self, cfg: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
        how = hp["select_on"]
        return {
            "split": "valid",
            "metric": how,
            "mode": "min" if how == "valid_loss" else "max",
            "note": "valid_loss: mean cross-entropy (nats/token) of the validation references; valid_bleu: "
            "detokenised sacreBLEU of the validation split with the generation settings",
        }

    def export_artifacts(self, data: TaskData, cfg: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
        """The SentencePiece model beside the weights (``lskd-bench translate`` needs nothing else), and the
        test files."""
        sw = data.extras["subwords"]
        store.atomic_write(Path(cell_dir) / "spm.model", lambda f: f.write(sw.path.read_bytes()))
        src, tgt = self.langs(cfg)
        return {
            "subword_model": "spm.model",
            "hypotheses": {w: f"test.hyp.{w}.{tgt}" for w in ("selected", "last")},
            "references": f"test.ref.{tgt}",
            "sources": f"test.src.{src}",
        }

    def inference_data(self, cell_dir: Path, result: dict[str, Any]) -> TaskData:
        """The sub-word model and dictionary of a finished cell, without its corpus (``lskd-bench translate``)."""
        name = (result.get("files") or {}).get("subword_model")
        path = Path(cell_dir) / name if name else None
        if path is None or not path.is_file():  # a cell finished before spm.model was copied beside it
            found = sorted(Path(cell_dir).parent.glob("cache/spm-*/spm.model"))
            if len(found) != 1:
                raise UsageError(
                    f"{cell_dir}: no spm.model beside the weights, and {len(found)} sub-word models in "
                    f"{Path(cell_dir).parent / 'cache'}: cannot tell which one the cell used"
                )
            path = found[0]
        sw = SubwordModel(path)
        dictionary = make_dictionary(sw.pieces())
        return TaskData(
            train=None,
            val=None,
            num_classes=len(dictionary),
            class_names=[],
            extras={"dictionary": dictionary, "subwords": sw},
        )

    def metric_info(self, cfg: dict[str, Any]) -> dict[str, Any]:
        _, sig = translation_scores(["a"], ["a"], self.langs(cfg)[1])
        return {"signatures": sig, "split": "test", "generation": cfg["generation"]}

    def teacher_targets(
        self, teacher: nn.Module, data: TaskData, cfg: dict[str, Any], device: torch.device, cache: Path
    ) -> TaskData:
        """The training split with the teacher's beam-search translations as targets (Kim & Rush, 2016),
        computed once per teacher and generation settings, cached under the teacher's cell directory."""
        g = {k: cfg["generation"][k] for k in ("beam", "lenpen", "max_len_a", "max_len_b")}
        key = hashlib.sha256(repr((sorted(g.items()), len(data.train))).encode()).hexdigest()[:12]
        path = Path(cache) / f"targets-{key}.npz"
        with file_lock(Path(cache) / f".targets-{key}.lock"):
            if path.is_file():
                with np.load(path) as z:
                    tgt = np.split(z["ids"], np.cumsum(z["lens"])[:-1])
            else:
                hyps = self.translate(teacher, data, data.train, cfg, device, progress=True)
                tgt = [np.array([*h, EOS], dtype=np.int32) for h in hyps]
                lens = np.array([len(t) for t in tgt], np.int64)
                store.atomic_write(path, lambda f: np.savez(f, ids=np.concatenate(tgt), lens=lens))
        sw = data.extras["subwords"]
        train = data.train.with_targets(list(tgt), [sw.decode(t.tolist()) for t in tgt])
        return TaskData(
            train=train, val=data.val, num_classes=data.num_classes, class_names=data.class_names, extras=data.extras
        )


@TASKS.register("iwslt_ende")
class IWSLTEnDe(TranslationTask):
    name = "iwslt_ende"
    description = (
        "IWSLT En->De (raw release or plain layout), transformer_iwslt_de_en -> transformer_iwslt_de_en_small, BLEU"
    )
    recipe = "iwslt"


@TASKS.register("iwslt_enru")
class IWSLTEnRu(TranslationTask):
    name = "iwslt_enru"
    description = (
        "IWSLT En->Ru (raw release or plain layout), transformer_iwslt_de_en -> transformer_iwslt_de_en_small, BLEU"
    )
    recipe = "iwslt"

    def default_config(self) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.setdefault("data", {})["direction"] = "en-ru"
        return cfg


class GettextDemo(TranslationTask):
    """Offline demo on Django's translation catalogues (see ``gettext_corpus``)."""

    recipe = "nmt_demo"
    target = ""

    def check_source(self, cfg: dict[str, Any]) -> None:
        if cfg["data"]["root"]:
            raise UsageError(f"task {self.name} reads Django's bundled catalogues and takes no --data-root")
        src, tgt = self.langs(cfg)
        if src != "en" or tgt != self.target:
            raise UsageError(f"task {self.name} translates en-{self.target} only (data.direction)")
        django_root()

    def corpus(self, cfg: dict[str, Any]) -> Corpus:
        return read_gettext_corpus(self.target)

    def default_config(self) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.setdefault("data", {})["direction"] = f"en-{self.target}"
        return cfg


@TASKS.register("demo_ende")
class DemoEnDe(GettextDemo):
    name = "demo_ende"
    description = (
        "NMT demo, offline: ~640 real En->De UI strings from Django's catalogues (not a benchmark), "
        "transformer_tiny -> transformer_micro, ~7.5 min on 2 CPU cores"
    )
    target = "de"


@TASKS.register("demo_enru")
class DemoEnRu(GettextDemo):
    name = "demo_enru"
    description = (
        "NMT demo, offline: ~650 real En->Ru UI strings from Django's catalogues (not a benchmark), "
        "transformer_tiny -> transformer_micro"
    )
    target = "ru"
