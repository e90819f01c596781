"""``recis.io.orc_dataset.OrcDataset``: batches from ORC files via pyarrow (RecIS 1.0; see COMPATIBILITY.md).

Usage (unchanged RecIS code)::

    ds = OrcDataset(1024, read_threads_num=2, prefetch=1, transform_fn=lambda b: b[0])
    ds.add_path("/data/train")                 # directories are walked for *.orc
    ds.fixedlen_feature("label", [0.0])        # -> float32 [B, 1]
    ds.varlen_feature("item_ids")              # -> RaggedTensor(int64 values, int32 offsets [B+1])
    ds.varlen_feature("tags", hash_type="farm", hash_bucket=100000)
    it = iter(ds)
    is_end, batch = next(it)                   # (True, None) forever after the last batch

The machinery is :class:`~.file_dataset.FileDataset`'s (shared with ParquetDataset); ORC
stripes are read by :mod:`.orc_reader`. Differences from RecIS are listed in
:mod:`.dataset_base`, :mod:`.file_list` and COMPATIBILITY.md.
"""
from __future__ import annotations

from recis_compat.io import io_state
from recis_compat.io.file_dataset import FileDataset
from recis_compat.io.file_list import ORC_FILES
from recis_compat.io.orc_reader import ORC

__all__ = ["OrcDataset"]


class OrcDataset(FileDataset):
    """Read ORC files into batches of ``[ {column: tensor | RaggedTensor | raw strings} ]``.

    Args (as RecIS): ``batch_size``; ``worker_idx``/``worker_num`` (file sharding across
    ranks); ``read_threads_num`` (parallel stripe readers; output order stays deterministic);
    ``pack_threads_num`` (accepted, unused); ``prefetch`` (batches buffered by a background
    thread; 0/None: none); ``is_compressed`` (must be False); ``drop_remainder``;
    ``worker_slice_batch_num`` (stored, unused); ``shuffle`` (file order, seed 10);
    ``ragged_format`` (False: sparse COO); ``transform_fn`` (callable or list);
    ``save_interval`` (falsy: no IO state); ``dtype`` (floating output type); ``device``
    (``"cpu" | "cuda" | "pin"``).

    Selected columns must be list columns (RecIS's rule); ``add_path`` walks for ``*.orc``.
    """

    _format = ORC
    _files = ORC_FILES
    _state_format = io_state.FORMAT
