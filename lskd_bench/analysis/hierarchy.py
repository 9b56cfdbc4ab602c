"""Moved to ``lskd_bench.hierarchy`` (a low layer: tasks build their class hierarchies with it); this name
stays an alias."""

import sys

from .. import hierarchy

sys.modules[__name__] = hierarchy
