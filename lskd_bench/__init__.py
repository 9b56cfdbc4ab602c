"""lskd-bench: a benchmark suite for label smoothing x knowledge distillation."""

__version__ = "0.3.0"  # the one place the version lives (pyproject.toml reads it)
