"""A second run on the same directory is refused while the first holds it, and allowed after."""

from __future__ import annotations

import subprocess
import sys

import pytest

from csr.core.errors import CSRError
from csr.core.lock import run_lock


def test_second_holder_is_refused_with_the_holders_pid(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", f"from pathlib import Path; from csr.core.lock import run_lock\n"
         f"with run_lock(Path({str(tmp_path)!r})):\n    print('held', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(CSRError, match=f"in use by another csr run \\(pid {child.pid}\\)"), run_lock(tmp_path):
            pass
    finally:
        child.communicate("\n", timeout=30)
    with run_lock(tmp_path):  # released when the holder ends (also if it is killed)
        pass
