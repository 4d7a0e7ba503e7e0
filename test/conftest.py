"""Shared pytest configuration: fixture paths, thread count, determinism."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _fixtures_dir() -> Path:
    env = os.environ.get("VGGT4D_FIXTURES")
    if env:
        return Path(env)
    return REPO_ROOT / "test" / "fixtures"


FIXTURES = _fixtures_dir()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Directory holding the golden reference fixtures (``test/fixtures`` in the repository by default)."""
    if not FIXTURES.is_dir():
        raise FileNotFoundError(
            f"golden fixtures not found at {FIXTURES}; set VGGT4D_FIXTURES to the fixtures directory"
        )
    return FIXTURES


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the test set-up
        yield
        return
    torch.set_num_threads(2)
    yield
