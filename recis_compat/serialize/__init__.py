"""``recis.serialize``: RecIS's sparse checkpoint format (RecIS 1.0; see COMPATIBILITY.md).

Exports ``Loader`` and ``Saver`` (as RecIS); ``CheckpointReader`` lives in
``recis.serialize.checkpoint_reader``. Errors: ``recis_compat.serialize.layout.CheckpointError``
(``CheckpointCorruptError`` when a file does not match ``checksums.json``; see
``recis_compat.serialize.integrity``). Delta (incremental) checkpoints, a format of our own, are
written and applied by ``recis_compat.serialize.delta``.
"""
from recis_compat.serialize.loader import Loader
from recis_compat.serialize.saver import Saver

__all__ = ["Loader", "Saver"]
