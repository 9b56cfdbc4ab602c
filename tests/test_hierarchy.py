"""``lskd_bench.hierarchy``: ancestors, LCA depth and the similar/dissimilar class choice."""

from __future__ import annotations

import pytest

from lskd_bench.hierarchy import ancestors, groups_to_parents, lca_depth, similar_and_dissimilar

HIER = {
    # animal -> {bird -> {sparrow, finch}, dog -> {terrier, hound}}, vehicle -> {car}
    "bird": "animal", "dog": "animal", "animal": "entity", "vehicle": "entity",
    "sparrow": "bird", "finch": "bird", "terrier": "dog", "hound": "dog", "car": "vehicle",
}  # fmt: skip


CLASSES = ["sparrow", "finch", "terrier", "hound", "car"]


def test_hierarchy_selection():
    assert ancestors("finch", HIER) == ["bird", "animal", "entity"]
    assert lca_depth("sparrow", "finch", HIER) == 2 and lca_depth("sparrow", "car", HIER) == 0
    assert similar_and_dissimilar("sparrow", CLASSES, HIER) == (["finch"], ["car"])
    # car has no sibling: every other class is equally far, so none counts as dissimilar
    assert similar_and_dissimilar("car", CLASSES, HIER) == (["sparrow", "finch", "terrier", "hound"], [])
    parents = groups_to_parents({"loops": ["0", "6"], "straight": ["1", "7"]})
    assert similar_and_dissimilar("0", ["0", "1", "6", "7"], parents) == (["6"], ["1", "7"])


def test_hierarchy_cycle_is_an_error():
    with pytest.raises(ValueError, match="cycle"):
        ancestors("a", {"a": "b", "b": "a"})
