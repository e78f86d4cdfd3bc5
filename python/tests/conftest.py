"""Shared fixtures: paths of the repository's bundled data and a seeded generator."""

import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def close(ours, theirs, rel=1e-5, what=""):
    """``max |ours - theirs| <= rel * max(1, max |theirs|)``: the tolerance of the Rust tests."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    scale = max(1.0, float(np.abs(theirs).max()) if theirs.size else 1.0)
    diff = float(np.abs(ours - theirs).max()) if theirs.size else 0.0
    assert diff <= rel * scale, f"{what}: max diff {diff:.3e} > {rel:g} x {scale:.3e}"
