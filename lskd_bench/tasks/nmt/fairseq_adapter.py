"""Everything lskd-bench takes from fairseq, in one place: the rest of the code never imports fairseq.

fairseq (``fairseq-fixed`` 0.12.3.1 on PyPI, a fork of fairseq 0.12 that installs on Python 3.11) is used
as a library for what it is good at: the registered Transformer architectures, the dictionary, length-
bucketed ``max_tokens`` batching and ``SequenceGenerator`` beam search with incremental decoding.
lskd-bench's runner owns the training loop. fairseq's own checkpoint loading is not used (it fails under
torch >= 2.6, ``weights_only``): models are saved and loaded as plain state dicts like every other model.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ...errors import UsageError

logging.getLogger("fairseq").setLevel(logging.WARNING)  # fairseq logs INFO lines at import
# fairseq 0.12 passes a bool key-padding mask with a float attention mask; torch warns on every step
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)  # at fairseq import


def _fairseq():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import fairseq
        from fairseq.models.transformer import transformer_legacy  # noqa: F401  (registers the archs)
    except ImportError as exc:
        raise UsageError(f'the translation tasks need fairseq: pip install -e ".[nmt]" ({exc})') from None
    finally:
        # fairseq's text_to_speech task calls logging.basicConfig(level=DEBUG) at import: every library's debug
        # lines (torch.compile's file locks, ...) would reach stderr; the root logger is put back as it was
        root.setLevel(level)
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
    import fairseq.data  # optional [nmt] extra, heavy

    return fairseq


@dataclass(frozen=True)
class ArchSpec:
    fairseq_arch: str
    overrides: dict
    note: str
    tiny: bool = False  # launch-bound on a GPU: device auto trains it on the CPU


# lskd-bench arch name -> a registered fairseq architecture and overrides of its defaults
ARCHS: dict[str, ArchSpec] = {
    "transformer_iwslt_de_en": ArchSpec(
        "transformer_iwslt_de_en",
        {},
        "fairseq's IWSLT Transformer: 6+6 layers, 512-d, FFN 1024, 4 heads (the paper's teacher)",
    ),
    "transformer_iwslt_de_en_small": ArchSpec(
        "transformer_iwslt_de_en",
        {"encoder_embed_dim": 256, "decoder_embed_dim": 256, "encoder_layers": 2, "decoder_layers": 2},
        "multilingual-kd-pytorch's transformer_iwslt_de_en_small: 2+2 layers, 256-d, FFN 1024, 4 heads",
    ),
    "transformer_tiny": ArchSpec(
        "transformer_iwslt_de_en",
        {
            "encoder_embed_dim": 128,
            "decoder_embed_dim": 128,
            "encoder_ffn_embed_dim": 256,
            "decoder_ffn_embed_dim": 256,
            "encoder_layers": 2,
            "decoder_layers": 2,
        },
        "2+2 layers, 128-d, FFN 256, 4 heads (the CPU demo's teacher)",
        tiny=True,
    ),
    "transformer_micro": ArchSpec(
        "transformer_iwslt_de_en",
        {
            "encoder_embed_dim": 64,
            "decoder_embed_dim": 64,
            "encoder_ffn_embed_dim": 128,
            "decoder_ffn_embed_dim": 128,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
        },
        "1+1 layer, 64-d, FFN 128, 2 heads (the CPU demo's student)",
        tiny=True,
    ),
}


def make_dictionary(pieces: Sequence[str]):
    """A fairseq Dictionary whose indices equal the SentencePiece ids: the model is trained with
    bos=0, pad=1, eos=2, unk=3, fairseq's own special-symbol layout, and ``pieces[4:]`` follow in order."""
    fs = _fairseq()
    d = fs.data.Dictionary()  # <s>=0, <pad>=1, </s>=2, <unk>=3
    for p in pieces[4:]:
        d.add_symbol(p, n=1, overwrite=True)
    if len(d) != len(pieces):
        raise ValueError(f"dictionary has {len(d)} symbols for {len(pieces)} sub-words (duplicate pieces?)")
    return d


def build_transformer(arch: str, dictionary, hp: dict[str, Any]) -> torch.nn.Module:
    fs = _fairseq()
    from fairseq.models import ARCH_CONFIG_REGISTRY  # optional [nmt] extra, heavy: after _fairseq()
    from fairseq.models.transformer import TransformerModel  # optional [nmt] extra, heavy: after _fairseq()

    spec = ARCHS[arch]
    args = argparse.Namespace(
        **spec.overrides,
        dropout=float(hp["dropout"]),
        attention_dropout=float(hp["attention_dropout"]),
        activation_dropout=float(hp["activation_dropout"]),
        share_decoder_input_output_embed=bool(hp["share_decoder_input_output_embed"]),
        share_all_embeddings=bool(hp["share_all_embeddings"]),
        max_source_positions=int(hp["max_positions"]),
        max_target_positions=int(hp["max_positions"]),
    )
    ARCH_CONFIG_REGISTRY[spec.fairseq_arch](args)
    del fs
    return TransformerModel.build_model(
        args, SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
    )


def length_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, max_sentences: int | None, order: np.ndarray
) -> list[np.ndarray]:
    """fairseq's batch_by_size over ``order`` (indices sorted by length): each batch holds at most
    ``max_tokens`` tokens counted as ``len(batch) * longest side``, and at most ``max_sentences`` pairs."""
    _fairseq()
    from fairseq.data import data_utils  # optional [nmt] extra, heavy: after _fairseq()

    num_tokens = np.maximum(src_lens, tgt_lens).astype(np.int64)
    too_long = int((num_tokens > max_tokens).sum())
    if too_long:
        raise UsageError(
            f"{too_long} sentence pair(s) are longer than max_tokens={max_tokens} tokens: raise "
            "max_tokens or lower data.max_len"
        )
    return data_utils.batch_by_size(
        order.astype(np.int64),
        num_tokens_fn=lambda i: int(num_tokens[i]),
        num_tokens_vec=num_tokens[order],
        max_tokens=max_tokens,
        max_sentences=max_sentences,
    )


def collate(samples: list[dict], pad: int, eos: int, pad_to_multiple: int = 1) -> dict:
    """Pad a batch as fairseq does: left-padded sources, targets with prev_output_tokens (eos first), both
    lengths rounded up to a multiple of ``pad_to_multiple`` (fairseq's --pad-to-multiple)."""
    _fairseq()
    from fairseq.data.language_pair_dataset import (
        collate as fs_collate,
    )  # optional [nmt] extra, heavy: after _fairseq()

    return fs_collate(
        samples, pad_idx=pad, eos_idx=eos, left_pad_source=True, left_pad_target=False, pad_to_multiple=pad_to_multiple
    )


def generator(model: torch.nn.Module, dictionary, beam: int, lenpen: float, max_len_a: float, max_len_b: int):
    _fairseq()
    from fairseq.sequence_generator import SequenceGenerator  # optional [nmt] extra, heavy: after _fairseq()

    return SequenceGenerator(
        [model], dictionary, beam_size=beam, len_penalty=lenpen, max_len_a=max_len_a, max_len_b=max_len_b
    )


def generate(gen, sample: dict) -> list[list[int]]:
    """The best hypothesis (token ids without eos) of every sentence of ``sample``, in batch order."""
    hyps = gen.generate(gen.model.models, sample)
    eos = gen.eos
    out = []
    for beams in hyps:
        toks = beams[0]["tokens"].tolist()
        out.append([t for t in toks if t != eos])
    return out
