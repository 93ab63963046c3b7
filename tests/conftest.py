import pytest

try:
    import rgraph  # noqa: F401
    from rgraph import ops  # noqa: F401
except ImportError as e:  # pragma: no cover - only on a bare checkout
    raise pytest.UsageError(f"rgraph is not installed ({e}); run: pip install -e '.[test]'") from None


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip cleanly where CuPy or a device is missing."""
    from rgraph.backends import cupy_usable
    if cupy_usable():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
