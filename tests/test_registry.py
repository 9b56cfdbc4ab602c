"""The registries read the installed entry points once, and again when ``sys.path`` changes."""

from __future__ import annotations

import json

from lskd_bench import registry
from lskd_bench.registry import Registry


def _site(tmp_path):
    """A site folder holding one distribution with an entry point in the group ``lskd_bench.test_things``."""
    info = tmp_path / "site" / "extra_pkg-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-pkg\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[lskd_bench.test_things]\nthing = json:dumps\n")
    return info.parent


def test_registries_scan_the_installed_distributions_once(monkeypatch):
    scans = []
    real = registry.metadata.entry_points
    monkeypatch.setattr(registry.metadata, "entry_points", lambda: scans.append(1) or real())
    registry._entry_points.cache_clear()
    for group in ("lskd_bench.a", "lskd_bench.b", "lskd_bench.c"):
        assert Registry("thing", group).names() == []
    assert len(scans) == 1


def test_a_distribution_put_on_sys_path_is_seen_by_a_registry_looked_up_after(tmp_path, monkeypatch):
    assert Registry("thing", "lskd_bench.test_things").names() == []
    monkeypatch.syspath_prepend(str(_site(tmp_path)))
    assert Registry("thing", "lskd_bench.test_things").get("thing") is json.dumps
