"""Parallel corpora on disk: the raw IWSLT release layout and a plain prepared layout.

Raw IWSLT (as in the release tarballs, e.g. ``de-en.tgz`` of IWSLT 2014 or ``en-de`` of later years)::

    ROOT[/<pair>]/train.tags.<pair>.<lang>               one segment a line, with XML-ish metadata lines
    ROOT[/<pair>]/IWSLT*.TED*.{dev,tst}*.<pair>.<lang>.xml   <seg id="N"> ... </seg> elements

``<pair>`` is ``de-en`` or ``en-de`` (either order is found). As fairseq's ``prepare-iwslt14.sh``:
metadata lines (``<url>``, ``<talkid>``, ``<keywords>``, ``<speaker>``...) are dropped, ``<title>`` and
``<description>`` keep their text; validation = every 23rd training pair; test = all dev/tst sets
concatenated in name order (IWSLT14: dev2010, TEDX.dev2012, tst2010-2012). Moses' clean-corpus rules
filter the training pairs: 1 to ``max_len`` words a side, length ratio at most ``len_ratio``.

Plain layout: ``ROOT/{train,valid,test}.<lang>``, one sentence a line, aligned by line (valid optional:
every 23rd training pair otherwise).
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ...errors import UsageError

IWSLT_URL = "https://wit3.fbk.eu (IWSLT 2014/2017 TED talks)"
LAYOUTS = (
    "expected the raw IWSLT layout (train.tags.<pair>.<lang> and IWSLT*.TED*.{dev,tst}*.<pair>.<lang>.xml, "
    "as in the release archives from " + IWSLT_URL + ") or a plain one (train.<lang>, test.<lang> "
    "[, valid.<lang>], one sentence a line)"
)

_SEG = re.compile(r'<seg id="?\s*(\d+)\s*"?>\s*(.*?)\s*</seg>', re.IGNORECASE)
_KEEP = re.compile(r"^\s*<(title|description)>(.*)</\1>\s*$", re.IGNORECASE)


@dataclass
class Corpus:
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    report: list[str] = field(default_factory=list)  # what was read and dropped, one line each

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def _read_lines(path: Path, policy: str, report: list[str]) -> list[Optional[str]]:
    """Lines of a UTF-8 file; an undecodable line is an error naming it, or None (policy skip)."""
    out: list[Optional[str]] = []
    bad = 0
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                out.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as exc:
                if policy != "skip":
                    raise UsageError(f"{path}:{i}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                                     "fix the file or --set data.on_bad_sample=skip") from None
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


def clean_train(pairs: list[tuple[Optional[str], Optional[str]]], max_len: int, len_ratio: float,
                report: list[str]) -> list[tuple[str, str]]:
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
    report.append(f"train: {len(pairs)} pairs read, kept {len(out)} (dropped {empty} empty/undecodable, "
                  f"{long_} over {max_len} words, {ratio} with length ratio over {len_ratio:g})")
    return out


def _nonempty(pairs: list[tuple[Optional[str], Optional[str]]], name: str, report: list[str]) -> list[tuple[str, str]]:
    out = [(s.strip(), t.strip()) for s, t in pairs if s and t and s.strip() and t.strip()]
    if len(out) != len(pairs):
        report.append(f"{name}: dropped {len(pairs) - len(out)} empty/undecodable pair(s)")
    return out


def read_raw(root: Path, src: str, tgt: str, *, policy: str = "error", max_len: int = 175, len_ratio: float = 1.5,
             valid_every: int = 23, test_sets: tuple[str, ...] = ()) -> Corpus:
    d, pair = _pair_dir(root, src, tgt)
    report: list[str] = []
    paths = {lang: d / f"train.tags.{pair}.{lang}" for lang in (src, tgt)}
    if not paths[tgt].is_file():
        raise UsageError(f"{paths[tgt]} is missing (found {paths[src].name}); {LAYOUTS}")
    lines = {lang: _read_lines(p, policy, report) for lang, p in paths.items()}
    _check_same_length(paths[src], lines[src], paths[tgt], lines[tgt])
    pairs, meta = [], 0
    for s, t in zip(lines[src], lines[tgt]):
        kind_s, s = _tag_line(s)
        kind_t, t = _tag_line(t)
        if kind_s == "meta" or kind_t == "meta":
            meta += 1
            continue
        pairs.append((s, t))
    report.append(f"train.tags: {meta} metadata line pair(s) dropped")
    valid = [p for i, p in enumerate(pairs, 1) if i % valid_every == 0]
    train = [p for i, p in enumerate(pairs, 1) if i % valid_every != 0]
    train = clean_train(train, max_len, len_ratio, report)
    test: list[tuple[Optional[str], Optional[str]]] = []
    found = sorted(d.glob(f"IWSLT*.TED*.*.{pair}.{src}.xml"))
    found = [p for p in found if re.search(r"\.(dev|tst)\d", p.name)]
    if test_sets:
        found = [p for p in found if any(t in p.name for t in test_sets)]
    if not found:
        raise UsageError(f"{d}: no IWSLT*.TED*.{{dev,tst}}*.{pair}.{src}.xml test files; {LAYOUTS}")
    for p in found:
        q = p.with_name(p.name.replace(f".{pair}.{src}.xml", f".{pair}.{tgt}.xml"))
        if not q.is_file():
            raise UsageError(f"{q} is missing (the {tgt} side of {p.name})")
        segs_s, segs_t = _segs(p, policy, report), _segs(q, policy, report)
        if [i for i, _ in segs_s] != [i for i, _ in segs_t]:
            raise UsageError(f"{p.name} and {q.name} hold different <seg> ids ({len(segs_s)} vs {len(segs_t)} segments)")
        test += [(a, b) for (_, a), (_, b) in zip(segs_s, segs_t)]
    report.append(f"test: {len(test)} segments from {', '.join(p.name.split(f'.{pair}')[0] for p in found)}")
    return Corpus(train, _nonempty(valid, "valid", report), _nonempty(test, "test", report), report)


def _tag_line(line: Optional[str]) -> tuple[str, Optional[str]]:
    """("text" | "meta", text) of a train.tags line: metadata tags dropped, title/description kept."""
    if line is None:
        return "text", None
    m = _KEEP.match(line)
    if m:
        return "text", m.group(2).strip()
    if line.lstrip().startswith("<"):
        return "meta", None
    return "text", line


def _segs(path: Path, policy: str, report: list[str]) -> list[tuple[int, Optional[str]]]:
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


def read_plain(root: Path, src: str, tgt: str, *, policy: str = "error", max_len: int = 175, len_ratio: float = 1.5,
               valid_every: int = 23) -> Corpus:
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
            raise UsageError(f"{root}: no train.tags.{src}-{tgt}.{src} or train.tags.{tgt}-{src}.{src}; {LAYOUTS}") from None
        corpus = read_raw(root, src, tgt, **kw)
    else:
        kw.pop("test_sets", None)
        corpus = read_plain(root, src, tgt, **kw)
    for name, pairs in (("train", corpus.train), ("test", corpus.test)):
        if not pairs:
            raise UsageError(f"{root}: the {name} split of {src}-{tgt} is empty after reading; {LAYOUTS}")
    return corpus
