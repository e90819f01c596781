"""Fixtures of the OrcDataset tests."""
import pytest

from recis_compat.io.orc_dataset import OrcDataset


@pytest.fixture
def id_dataset():
    """Factory: an OrcDataset over ``paths`` selecting ``rid``."""
    def make(paths, batch_size=4, **kw):
        ds = OrcDataset(batch_size, **kw)
        ds.add_paths([str(p) for p in paths])
        ds.varlen_feature("rid")
        return ds
    return make

