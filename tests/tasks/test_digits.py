"""The digits task reads scikit-learn's bundled file itself (no scikit-learn import at start-up)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from lskd_bench.tasks.digits import read_digits


def test_the_digits_read_from_the_file_equal_scikit_learns_load_digits():
    from sklearn.datasets import load_digits

    images, target = read_digits()
    bunch = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == bunch.images.dtype
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(target, bunch.target)


def test_loading_the_digits_data_does_not_import_scikit_learn():
    code = (
        "import sys\n"
        "from lskd_bench.runners.grid import resolve_config\n"
        "from lskd_bench.tasks import get_task\n"
        "data = get_task('digits').load_data(resolve_config('digits', {}, {}))\n"
        "print(len(data.train), len(data.val), 'sklearn' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1347", "450", "False"]
