"""Translation metrics, all computed offline by sacreBLEU on user-given references.

- ``bleu``: detokenised sacreBLEU (13a tokenisation, mixed case): the standard, comparable number;
- ``chrf``: chrF2 (sacreBLEU);
- ``bleu_tok``: BLEU over Moses-tokenised, lower-cased text (sacremoses + sacreBLEU with tokenize=none),
  the style of the official code's fairseq recipe, which scored Moses-tokenised lower-cased IWSLT text.
  It is usually a few points higher than ``bleu`` and is not comparable with it.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def _moses(lang: str):
    from sacremoses import MosesTokenizer  # optional [nmt] extra: imported on first use

    return MosesTokenizer(lang=lang)


def moses_lower(texts: list[str], lang: str) -> list[str]:
    tok = _moses(lang)
    return [tok.tokenize(t, escape=False, return_str=True).lower() for t in texts]


def translation_scores(hyps: list[str], refs: list[str], tgt_lang: str) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, signatures) of hypotheses against one reference each."""
    from sacrebleu.metrics import BLEU, CHRF  # optional [nmt] extra: imported on first use

    bleu, chrf, tok = BLEU(), CHRF(), BLEU(tokenize="none", force=True)
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    t = tok.corpus_score(moses_lower(hyps, tgt_lang), [moses_lower(refs, tgt_lang)])
    metrics = {"bleu": float(b.score), "chrf": float(c.score), "bleu_tok": float(t.score)}
    info = {
        "bleu": str(bleu.get_signature()),
        "chrf": str(chrf.get_signature()),
        "bleu_tok": f"moses({tgt_lang})+lowercase|{tok.get_signature()}",
    }
    return metrics, info
