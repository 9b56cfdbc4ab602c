"""Tiny parallel corpora in the real on-disk layouts: the raw IWSLT release and a plain prepared one."""

from __future__ import annotations

from pathlib import Path

SUBJECTS = [("the cat", "die Katze"), ("the dog", "der Hund"), ("the child", "das Kind"), ("my friend", "mein Freund")]
VERBS = [("sees", "sieht"), ("likes", "mag"), ("finds", "findet")]
OBJECTS = [("the house", "das Haus"), ("a book", "ein Buch"), ("the garden", "den Garten"), ("the tree", "den Baum")]


def sentence(i: int) -> tuple[str, str]:
    (se, sd), (ve, vd), (oe, od) = SUBJECTS[i % 4], VERBS[(i // 4) % 3], OBJECTS[(i // 12) % 4]
    return f"{se[0].upper()}{se[1:]} {ve} {oe}.", f"{sd[0].upper()}{sd[1:]} {vd} {od}."


def pairs(n: int, offset: int = 0) -> list[tuple[str, str]]:
    return [sentence(i + offset) for i in range(n)]


def make_raw_iwslt(root: Path, pair: str = "de-en", n_train: int = 60, n_test: tuple[int, int] = (4, 5)) -> Path:
    """``root/<pair>/``: train.tags.<pair>.{en,de} with metadata lines, two dev/tst XML files per language."""
    d = root / pair
    d.mkdir(parents=True, exist_ok=True)
    en, de = [], []
    for i, (e, g) in enumerate(pairs(n_train)):
        if i % 20 == 0:  # a talk header, as in the release files
            for tag in (
                "<url>http://www.ted.com/talks/x.html</url>",
                "<keywords>talks, science</keywords>",
                "<speaker>Jane Doe</speaker>",
                f"<talkid>{i}</talkid>",
            ):
                en.append(tag)
                de.append(tag)
            en.append("<title>Jane Doe: A talk</title>")
            de.append("<title>Jane Doe: Ein Vortrag</title>")
        en.append(e)
        de.append(g)
    (d / f"train.tags.{pair}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    (d / f"train.tags.{pair}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    offset = 100
    for name, n in zip(("IWSLT14.TED.dev2010", "IWSLT14.TED.tst2010"), n_test):
        for lang, col in (("en", 0), ("de", 1)):
            segs = [f'<seg id="{k + 1}"> {p[col].replace("&", "&amp;")} </seg>' for k, p in enumerate(pairs(n, offset))]
            body = "\n".join(segs)
            (d / f"{name}.{pair}.{lang}.xml").write_text(
                f'<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n<srcset setid="{name}" srclang="english">\n'
                f'<doc docid="1" genre="lectures">\n{body}\n</doc>\n</srcset>\n</mteval>\n',
                encoding="utf-8",
            )
        offset += n
    return d


def make_plain(
    root: Path, n_train: int = 48, n_valid: int = 4, n_test: int = 6, src: str = "en", tgt: str = "de"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, off in (("train", n_train, 0), ("valid", n_valid, 200), ("test", n_test, 300)):
        ps = pairs(n, off)
        (root / f"{split}.{src}").write_text("\n".join(p[0] for p in ps) + "\n", encoding="utf-8")
        (root / f"{split}.{tgt}").write_text("\n".join(p[1] for p in ps) + "\n", encoding="utf-8")
    return root


def make_django_plain(root: Path, lang: str = "de", every: int = 2) -> Path:
    """A plain-layout corpus of a few hundred real sentence pairs: every ``every``-th pair of Django's bundled
    En->``lang`` UI-string catalogues (the demo's source; ~780 pairs for de), split by position: a tenth
    test, a tenth valid, the rest train."""
    from lskd_bench.tasks.nmt.gettext_corpus import catalogue_pairs

    ps = catalogue_pairs(lang)[::every]
    root.mkdir(parents=True, exist_ok=True)
    splits = {"test": ps[0::10], "valid": ps[5::10], "train": [p for i, p in enumerate(ps) if i % 10 not in (0, 5)]}
    for split, sp in splits.items():
        (root / f"{split}.en").write_text("".join(s + "\n" for s, _ in sp), encoding="utf-8")
        (root / f"{split}.{lang}").write_text("".join(t + "\n" for _, t in sp), encoding="utf-8")
    return root
