"""Where the tests find MNIST, and the one skip rule for the tests that need it.

MNIST is not downloaded by the tests: every test that needs the real digits uses
``needs_mnist`` (or ``skip_without_mnist``) and is skipped, with this reason shown by
``-ra``, when the project's copy is absent. See docs/testing.md.
"""

from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
HAVE_MNIST = (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file()
REASON = f"the project's MNIST copy is not at {SHARED_MNIST}"

needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=REASON)


def skip_without_mnist() -> None:
    """Skip the calling test (or fixture) when the MNIST copy is absent."""
    if not HAVE_MNIST:
        pytest.skip(REASON)
