"""Parallel corpora on disk: the raw IWSLT release layout and a plain prepared layout.

Raw IWSLT (as in the release tarballs, e.g. ``de-en.tgz`` of IWSLT 2014 or ``en-de`` of later years)::

    ROOT[/<pair>]/train.tags.<pair>.<lang>               one segment a line, with XML-ish metadata lines
    ROOT[/<pair>]/IWSLT*.TED*.{dev,tst}*.<pair>.<lang>.xml   <seg id="N"> ... </seg> elements

``<pair>`` is ``de-en`` or ``en-de`` (either order is found). As fairseq's ``prepare-iwslt14.sh`` (and
``prepare-iwslt17-multilingual.sh``): the known metadata lines (``<url>``, ``<talkid>``, ``<keywords>``,
``<speaker>``, ``<reviewer>``, ``<translator>``, ``<doc ...>``, ``</doc>``) are dropped, ``<title>`` and
``<description>`` keep their text, every other line is a sentence (even one starting with ``<``). The two
sides' metadata lines must sit at the same line numbers (an error names the first one that does not).
Validation = every 23rd training pair; test = all dev/tst sets concatenated in name order (IWSLT14:
dev2010, TEDX.dev2012, tst2010-2012), each with both sides and the same ``<seg>`` ids. Moses' clean-corpus
rules filter the training pairs: 1 to ``max_len`` words a side, length ratio at most ``len_ratio``.

Plain layout: ``ROOT/{train,valid,test}.<lang>``, one sentence a line, aligned by line (valid optional:
every 23rd training pair otherwise).
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UsageError
from ..base import refuse_special

IWSLT_URL = "https://wit3.fbk.eu (IWSLT 2014/2017 TED talks)"
LAYOUTS = (
    "expected the raw IWSLT layout (train.tags.<pair>.<lang> and IWSLT*.TED*.{dev,tst}*.<pair>.<lang>.xml, "
    "as in the release archives from " + IWSLT_URL + ") or a plain one (train.<lang>, test.<lang> "
    "[, valid.<lang>], one sentence a line)"
)

_SEG = re.compile(r'<seg id="?\s*(\d+)\s*"?>\s*(.*?)\s*</seg>', re.IGNORECASE)
_KEEP = re.compile(r"^\s*<(title|description)>(.*)</\1>\s*$", re.IGNORECASE)
META_TAGS = ("url", "talkid", "keywords", "speaker", "reviewer", "translator", "doc")
_META = re.compile(r"^\s*</?(" + "|".join(META_TAGS) + r")(?=[\s>/])", re.IGNORECASE)


@dataclass
class Corpus:
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    report: list[str] = field(default_factory=list)  # what was read and dropped, one line each

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def _read_lines(path: Path, policy: str, report: list[str]) -> list[str | None]:
    """Lines of a UTF-8 file; an undecodable line is an error naming it, or None (policy skip)."""
    out: list[str | None] = []
    bad = 0
    refuse_special(path)  # a FIFO named train.en would block the open
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                out.append(raw.decode("utf-8-sig" if i == 1 else "utf-8").rstrip("\r\n"))  # no BOM in a sentence
            except UnicodeDecodeError as exc:
                if policy != "skip":
                    raise UsageError(
                        f"{path}:{i}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                        "fix the file or --set data.on_bad_sample=skip"
                    ) from None
                out.append(None)
                bad += 1
    if bad:
        report.append(f"{path.name}: {bad} line(s) not valid UTF-8, skipped")
    return out


def _pair_dir(root: Path, src: str, tgt: str) -> tuple[Path, str]:
    """The folder holding the raw files and the pair name used in their names."""
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        for d in (root / pair, root):
            if (d / f"train.tags.{pair}.{src}").is_file():
                return d, pair
    raise FileNotFoundError


def corpus_files(root: Path, src: str, tgt: str) -> list[Path]:
    """Every file a ``src``-``tgt`` corpus under ``root`` may be read from, in either layout: the regular files in
    ``root`` and in its ``<src>-<tgt>`` and ``<tgt>-<src>`` folders, sorted (what a cached read is keyed on)."""
    found = []
    for d in (root, root / f"{src}-{tgt}", root / f"{tgt}-{src}"):
        try:
            found += [Path(e.path) for e in os.scandir(d) if e.is_file()]
        except OSError:
            continue  # no such folder
    return sorted(found)


def detect_layout(root: Path, src: str, tgt: str) -> str:
    try:
        _pair_dir(root, src, tgt)
        return "raw"
    except FileNotFoundError:
        pass
    if (root / f"train.{src}").is_file() and (root / f"train.{tgt}").is_file():
        return "plain"
    raise UsageError(f"{root}: no {src}-{tgt} corpus found; {LAYOUTS}")


def _check_same_length(a: Path, la: list, b: Path, lb: list) -> None:
    if len(la) != len(lb):
        raise UsageError(f"{a} has {len(la)} lines but {b} has {len(lb)}: the files are not aligned")


def clean_train(
    pairs: list[tuple[str | None, str | None]], max_len: int, len_ratio: float, report: list[str]
) -> list[tuple[str, str]]:
    """Moses clean-corpus-n rules: drop empty or undecodable pairs, pairs with more than ``max_len`` words
    a side, and pairs whose word counts differ by more than ``len_ratio`` (either way)."""
    out, empty, long_, ratio = [], 0, 0, 0
    for s, t in pairs:
        if s is None or t is None or not s.strip() or not t.strip():
            empty += 1
            continue
        ns, nt = len(s.split()), len(t.split())
        if ns > max_len or nt > max_len:
            long_ += 1
            continue
        if ns / nt > len_ratio or nt / ns > len_ratio:
            ratio += 1
            continue
        out.append((s.strip(), t.strip()))
    report.append(
        f"train: {len(pairs)} pairs read, kept {len(out)} (dropped {empty} empty/undecodable, "
        f"{long_} over {max_len} words, {ratio} with length ratio over {len_ratio:g})"
    )
    return out


def _nonempty(pairs: list[tuple[str | None, str | None]], name: str, report: list[str]) -> list[tuple[str, str]]:
    out = [(s.strip(), t.strip()) for s, t in pairs if s and t and s.strip() and t.strip()]
    if len(out) != len(pairs):
        report.append(f"{name}: dropped {len(pairs) - len(out)} empty/undecodable pair(s)")
    return out


def read_raw(
    root: Path,
    src: str,
    tgt: str,
    *,
    policy: str = "error",
    max_len: int = 175,
    len_ratio: float = 1.5,
    valid_every: int = 23,
    test_sets: tuple[str, ...] = (),
) -> Corpus:
    d, pair = _pair_dir(root, src, tgt)
    report: list[str] = []
    paths = {lang: d / f"train.tags.{pair}.{lang}" for lang in (src, tgt)}
    if not paths[tgt].is_file():
        raise UsageError(f"{paths[tgt]} is missing (found {paths[src].name}); {LAYOUTS}")
    lines = {lang: _read_lines(p, policy, report) for lang, p in paths.items()}
    pairs, meta = [], 0
    for n, (s, t) in enumerate(zip(lines[src], lines[tgt]), 1):
        kind_s, s = _tag_line(s)
        kind_t, t = _tag_line(t)
        if kind_s != kind_t:  # a metadata line deleted or added on one side: every later pair would be shifted
            raise UsageError(
                f"{paths[src]} and {paths[tgt]} are misaligned at line {n}: {_kind_text(kind_s)} in the "
                f"{src} file, {_kind_text(kind_t)} in the {tgt} file (metadata lines must sit at the same "
                "line numbers on both sides)"
            )
        if kind_s not in ("text", "title", "description"):
            meta += 1
            continue
        pairs.append((s, t))
    _check_same_length(paths[src], lines[src], paths[tgt], lines[tgt])
    report.append(f"train.tags: {meta} metadata line pair(s) dropped")
    valid = [p for i, p in enumerate(pairs, 1) if i % valid_every == 0]
    train = [p for i, p in enumerate(pairs, 1) if i % valid_every != 0]
    train = clean_train(train, max_len, len_ratio, report)
    test: list[tuple[str | None, str | None]] = []
    sets = set()  # test set names (IWSLT14.TED.dev2010...) found on either side
    for lang in (src, tgt):
        for p in d.glob(f"IWSLT*.TED*.*.{pair}.{lang}.xml"):
            if re.search(r"\.(dev|tst)\d", p.name):
                sets.add(p.name[: -len(f".{pair}.{lang}.xml")])
    if test_sets:
        sets = {n for n in sets if any(t in n for t in test_sets)}
    if not sets:
        raise UsageError(f"{d}: no IWSLT*.TED*.{{dev,tst}}*.{pair}.{src}.xml test files; {LAYOUTS}")
    found = sorted(sets)
    for name in found:
        p, q = d / f"{name}.{pair}.{src}.xml", d / f"{name}.{pair}.{tgt}.xml"
        for have, miss, lang in ((q, p, src), (p, q, tgt)):
            if not miss.is_file():
                raise UsageError(f"{miss} is missing (the {lang} side of {have.name}); a test set needs both sides")
        segs_s, segs_t = _segs(p, policy, report), _segs(q, policy, report)
        ids_s, ids_t = [i for i, _ in segs_s], [i for i, _ in segs_t]
        if ids_s != ids_t:
            k = next((k for k, (a, b) in enumerate(zip(ids_s, ids_t)) if a != b), min(len(ids_s), len(ids_t)))
            raise UsageError(
                f"{p.name} and {q.name} hold different <seg> ids: segment {k + 1} is "
                f"{_seg_at(ids_s, k)} in the {src} file, {_seg_at(ids_t, k)} in the {tgt} file"
            )
        test += [(a, b) for (_, a), (_, b) in zip(segs_s, segs_t)]
    report.append(f"test: {len(test)} segments from {', '.join(found)}")
    return Corpus(train, _nonempty(valid, "valid", report), _nonempty(test, "test", report), report)


def _tag_line(line: str | None) -> tuple[str, str | None]:
    """(kind, text) of a train.tags line: kind is "text", "title"/"description" (text kept) or the
    metadata tag's name (dropped). Only the known tags are metadata: ``<aliases> must ...`` is a sentence."""
    if line is None:
        return "text", None
    m = _KEEP.match(line)
    if m:
        return m.group(1).lower(), m.group(2).strip()
    m = _META.match(line)
    if m:
        return m.group(1).lower(), None
    return "text", line


def _kind_text(kind: str) -> str:
    return "a sentence" if kind == "text" else f"a <{kind}> line"


def _seg_at(ids: list[int], k: int) -> str:
    return f'<seg id="{ids[k]}">' if k < len(ids) else f"missing (the file ends after {len(ids)} segments)"


def _segs(path: Path, policy: str, report: list[str]) -> list[tuple[int, str | None]]:
    out = []
    for line in _read_lines(path, policy, report):
        if line is None:
            continue
        m = _SEG.search(line)
        if m:
            out.append((int(m.group(1)), html.unescape(m.group(2))))
    if not out:
        raise UsageError(f"{path}: no <seg id=...> elements; {LAYOUTS}")
    return out


def read_plain(
    root: Path,
    src: str,
    tgt: str,
    *,
    policy: str = "error",
    max_len: int = 175,
    len_ratio: float = 1.5,
    valid_every: int = 23,
) -> Corpus:
    report: list[str] = []
    splits: dict[str, list] = {}
    for split in ("train", "valid", "test"):
        ps, pt = root / f"{split}.{src}", root / f"{split}.{tgt}"
        if not ps.is_file() and not pt.is_file() and split == "valid":
            continue
        for p in (ps, pt):
            if not p.is_file():
                raise UsageError(f"{p} is missing; {LAYOUTS}")
        ls, lt = _read_lines(ps, policy, report), _read_lines(pt, policy, report)
        _check_same_length(ps, ls, pt, lt)
        splits[split] = list(zip(ls, lt))
    train = splits["train"]
    if "valid" in splits:
        valid = splits["valid"]
    else:
        valid = [p for i, p in enumerate(train, 1) if i % valid_every == 0]
        train = [p for i, p in enumerate(train, 1) if i % valid_every != 0]
    train = clean_train(train, max_len, len_ratio, report)
    return Corpus(train, _nonempty(valid, "valid", report), _nonempty(splits["test"], "test", report), report)


def read_corpus(root: Path, src: str, tgt: str, layout: str = "auto", **kw) -> Corpus:
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"data root {root} is not a directory; {LAYOUTS}")
    if layout == "auto":
        layout = detect_layout(root, src, tgt)
    if layout == "raw":
        try:
            _pair_dir(root, src, tgt)
        except FileNotFoundError:
            raise UsageError(
                f"{root}: no train.tags.{src}-{tgt}.{src} or train.tags.{tgt}-{src}.{src}; {LAYOUTS}"
            ) from None
        corpus = read_raw(root, src, tgt, **kw)
    else:
        kw.pop("test_sets", None)
        corpus = read_plain(root, src, tgt, **kw)
    for name, pairs in (("train", corpus.train), ("valid", corpus.valid), ("test", corpus.test)):
        if not pairs:
            why = (
                " (the reported epoch is selected on it: give valid.<lang> files or more training pairs)"
                if name == "valid"
                else ""
            )
            raise UsageError(f"{root}: the {name} split of {src}-{tgt} is empty after reading{why}; {LAYOUTS}")
    return corpus
