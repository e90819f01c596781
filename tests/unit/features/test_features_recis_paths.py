"""The ``recis.features`` import paths RecIS scripts use resolve to this package's objects."""
import torch


def test_recis_feature_paths_are_aliases():
    import recis.features
    import recis.features.feature
    import recis.features.feature_engine
    import recis.features.fused_op_impl
    import recis.features.op
    import recis_compat.features as rc

    assert recis.features is rc
    assert sorted(recis.features.__all__) == sorted([
        "FeatureEngine", "Bucketize", "SelectField", "Hash", "SelectFields", "FeatureCross",
        "SequenceTruncate", "Mod", "IDMultiHash"])
    assert not hasattr(recis.features, "Feature")
    from recis.features.op import (_OP, Bucketize, DataValueProcessor, FeatureCross, Hash,
                                   IDMultiHash, Mod, SelectField, SelectFields, SequenceTruncate)
    from recis.features.feature import Feature
    from recis.features.feature_engine import (ExecutionStep, FeatureEngine, FuseExecutionGroup,
                                               NonFuseExecutionGroup, RunContext)
    from recis.features.fused_op_impl import (FusedBoundaryOP, FusedCutoffOP, FusedHashOP,
                                              FusedModOP, FusedMultiHashOP, FusedOpFactory,
                                              _FusedOP)
    from recis_compat.features import op as rc_op
    assert Mod is rc_op.Mod and recis.features.Mod is Mod and issubclass(Mod, _OP)
    assert issubclass(FusedModOP, _FusedOP) and FusedOpFactory.contains(Mod(3))
    assert all(callable(c) for c in (Bucketize, DataValueProcessor, FeatureCross, Hash,
                                     IDMultiHash, SelectField, SelectFields, SequenceTruncate,
                                     ExecutionStep, FuseExecutionGroup, NonFuseExecutionGroup,
                                     RunContext, FusedBoundaryOP, FusedCutoffOP, FusedHashOP,
                                     FusedMultiHashOP))
    from recis.ragged.tensor import RaggedTensor
    f = Feature("s").add_op(SelectField("s")).add_op(Mod(10))
    out = FeatureEngine(feature_list=[f])({"s": RaggedTensor(torch.tensor([15]),
                                                               torch.tensor([0, 1]))})
    assert isinstance(out["s"], RaggedTensor) and out["s"].values().tolist() == [5]
