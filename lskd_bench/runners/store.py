"""Moved to ``lskd_bench.store`` (a low layer: tasks and analysis read it too); this name stays an alias."""

import sys

from .. import store

sys.modules[__name__] = store
