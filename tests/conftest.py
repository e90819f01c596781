"""Test-wide fixtures: the shared deepfm data (skipped when absent), a fixed torch seed and a
clean table-name registry per test."""
import pathlib

import pytest
import torch
from multiprocess_retry import run_retrying_known_abort  # tests/ is on sys.path (conftest dir)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DEEPFM = REPO.parent / "shared" / "data" / "recis-deepfm"

torch.manual_seed(0)


@pytest.fixture
def deepfm_dir():
    """The shared Criteo-style ORC data (8 x 10,000 rows); skips when absent."""
    if not SHARED_DEEPFM.is_dir() or not any(SHARED_DEEPFM.glob("*.orc")):
        pytest.skip(f"shared data not found at {SHARED_DEEPFM}")
    return SHARED_DEEPFM



@pytest.fixture(autouse=True)
def _fresh_table_names():
    """Every test starts with no table names registered (RecIS's HashtableRegister forbids one
    name twice per process; tables of earlier tests may not be garbage collected yet)."""
    from recis_compat.nn.modules.hashtable import HashtableRegister
    HashtableRegister().clear()
    yield
    HashtableRegister().clear()


@pytest.fixture
def run_multiprocess():
    """``subprocess.run`` for torchrun launches with one retry on the known native TorchRec/gloo
    abort (tests/multiprocess_retry.py)."""
    return run_retrying_known_abort
