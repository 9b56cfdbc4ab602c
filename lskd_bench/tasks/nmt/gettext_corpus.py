"""A tiny real parallel corpus that ships inside a package: Django's gettext catalogues.

Django's wheel carries its user-interface strings translated by people into ~100 languages
(``django/**/locale/<lang>/LC_MESSAGES/django.mo``): about 800 English -> German and 800 English ->
Russian pairs ("Enter a valid email address." -> "Bitte eine gültige E-Mail-Adresse eingeben.",
month and language names, form and admin messages). Real sentences and real translations, but short,
few and of one narrow domain: a demonstration of the NMT pipeline, not a benchmark.

The files are read directly (``gettext`` parses .mo files); Django itself is never imported.
Split: by a hash of the English text, 10 % test, 10 % valid, 80 % train (stable across Django versions
for strings that did not change).
"""

from __future__ import annotations

import gettext
import hashlib
import importlib.util
from pathlib import Path

from ...errors import UsageError
from .corpus import Corpus


def django_root() -> Path:
    spec = importlib.util.find_spec("django")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            'the NMT demo reads Django\'s translation catalogues: pip install -e ".[nmt]" (installs django)'
        )
    return Path(next(iter(spec.submodule_search_locations)))


def catalogue_pairs(lang: str, root: Path | None = None) -> list[tuple[str, str]]:
    """(English, translation) of every singular message in Django's ``lang`` catalogues, sorted, unique."""
    root = root or django_root()
    files = sorted(root.glob(f"**/locale/{lang}/LC_MESSAGES/*.mo"))
    if not files:
        raise UsageError(f"no {lang} catalogues under {root} (expected **/locale/{lang}/LC_MESSAGES/*.mo)")
    pairs: dict[str, str] = {}
    for path in files:
        with open(path, "rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog
        for key, value in catalog.items():
            if not isinstance(key, str) or not key or not value:
                continue  # plural forms are keyed (msgid, n); "" is the header
            src = key.split("\x04", 1)[-1].strip()  # drop a msgctxt prefix
            tgt = value.strip()
            if src and tgt and "\n" not in src and "\n" not in tgt and src not in pairs:
                pairs[src] = tgt
    return sorted(pairs.items())


def read_gettext_corpus(tgt_lang: str) -> Corpus:
    pairs = catalogue_pairs(tgt_lang)
    train, valid, test = [], [], []
    for s, t in pairs:
        bucket = int(hashlib.md5(s.encode()).hexdigest(), 16) % 10
        (test if bucket == 0 else valid if bucket == 1 else train).append((s, t))
    report = [
        f"Django {tgt_lang} catalogues ({django_root()}): {len(pairs)} pairs -> "
        f"train {len(train)}, valid {len(valid)}, test {len(test)}"
    ]
    return Corpus(train, valid, test, report)
