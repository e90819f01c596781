"""``recis.features``: feature processing (RecIS 1.0; see COMPATIBILITY.md).

Exports ``FeatureEngine`` and the ops. ``Feature`` lives in ``recis.features.feature`` and is
deliberately not re-exported (as in RecIS).
"""
from recis_compat.features.feature_engine import FeatureEngine
from recis_compat.features.op import (Bucketize, FeatureCross, Hash, IDMultiHash, Mod,
                                      SelectField, SelectFields, SequenceTruncate)

__all__ = ["FeatureEngine", "Bucketize", "SelectField", "Hash", "SelectFields", "FeatureCross",
           "SequenceTruncate", "Mod", "IDMultiHash"]
