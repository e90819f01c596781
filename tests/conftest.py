"""Test-wide fixtures: paths to shared data, a per-test temp dir, and skips for what is absent."""
import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DEEPFM = REPO.parent / "shared" / "data" / "recis-deepfm"

torch.manual_seed(0)


@pytest.fixture
def deepfm_dir():
    """The shared Criteo-style ORC data (8 x 10,000 rows); skips when absent."""
    if not SHARED_DEEPFM.is_dir() or not any(SHARED_DEEPFM.glob("*.orc")):
        pytest.skip(f"shared data not found at {SHARED_DEEPFM}")
    return SHARED_DEEPFM


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
