"""Bad arguments and bad inputs: clear errors naming the op and the feature."""
import pytest
import torch

from fe_helpers import ragged, strings_ragged
from recis_compat.features import (Bucketize, FeatureCross, FeatureEngine, Hash, IDMultiHash, Mod,
                                   SelectField, SelectFields, SequenceTruncate)
from recis_compat.features.errors import FeatureOpError
from recis_compat.features.feature import Feature


def _engine(name, *ops, first=None):
    f = Feature(name).add_op(first or SelectField("c"))
    for op in ops:
        f.add_op(op)
    return FeatureEngine([f])


def test_float_ids_to_mod():
    data = {"c": ragged([[1.5, 2.0]], dtype=torch.float32)}
    with pytest.raises(TypeError, match=r"feature 'ids': Mod\(mod_value=10\): ids must be int64, "
                                        r"got torch.float32") as ei:
        _engine("ids", Mod(10))(data)
    assert isinstance(ei.value, FeatureOpError)
    with pytest.raises(TypeError, match=r"feature 'ids': Mod\(mod_value=10\)"):
        Feature("ids").add_op(SelectField("c")).add_op(Mod(10))(data)
    with pytest.raises(TypeError, match=r"^Mod\(mod_value=10\): ids must be int64"):
        Mod(10)(torch.tensor([1.0]))


def test_integer_values_to_bucketize():
    with pytest.raises(TypeError, match=r"feature 'age': Bucketize\(boundary=\[18.0, 25.0\]\): "
                                        r"values must be floating point, got torch.int64"):
        _engine("age", Bucketize([18, 25]))({"c": torch.tensor([[20], [30]])})


def test_mod_zero_and_bad_mod_values():
    with pytest.raises(ValueError, match=r"feature 'm': Mod\(mod_value=0\): mod_value must be > 0"):
        Feature("m").add_op(SelectField("c")).add_op(Mod(0))
    with pytest.raises(ValueError, match=r"Mod\(mod_value=-3\): mod_value must be > 0"):
        Mod(-3)(torch.tensor([1]))
    with pytest.raises(ValueError, match=r"feature 'm'.*mod_value must be an int"):
        Feature("m").add_op(SelectField("c")).add_op(Mod(2.5))


def test_id_multi_hash_bucket_count():
    with pytest.raises(IndexError, match=r"feature 'mh': IDMultiHash\(num_buckets=\[1, 1, 1, 1, 1\]\)"
                                         r": num_buckets has 5 entries; at most 4"):
        Feature("mh").add_op(SelectField("c")).add_op(IDMultiHash([1] * 5))
    with pytest.raises(AssertionError, match=r"feature 'mh': IDMultiHash\(num_buckets=\[\]\): "
                                             r"num_buckets must not be empty"):
        Feature("mh").add_op(SelectField("c")).add_op(IDMultiHash([]))
    with pytest.raises(ValueError, match="every bucket count must be an int > 0"):
        IDMultiHash([10, 0])(torch.tensor([1]))
    with pytest.raises(TypeError, match=r"feature 'mh': IDMultiHash.*ids must be int64"):
        _engine("mh", IDMultiHash([10]))({"c": torch.tensor([1.0])})


def test_feature_cross_rows_do_not_line_up():
    data = {"a": ragged([[1], [2], [3]]), "b": ragged([[1], [2]])}
    f = Feature("ab").add_op(SelectFields([SelectField("a"), SelectField("b")]))
    f.add_op(FeatureCross())
    with pytest.raises(ValueError, match=r"feature 'ab': FeatureCross\(\): x and y rows do not "
                                         r"line up: x has 3 rows, y has 2"):
        FeatureEngine([f])(data)


def test_feature_cross_bad_inputs():
    with pytest.raises(TypeError, match=r"FeatureCross\(\): expects a list \[x, y\]"):
        FeatureCross()(ragged([[1]]))
    with pytest.raises(TypeError, match="y ids must be int64"):
        FeatureCross()([ragged([[1]]), ragged([[1.0]], dtype=torch.float32)])
    with pytest.raises(TypeError, match="offsets must share one dtype"):
        FeatureCross()([ragged([[1]]), ragged([[1]], offsets_dtype=torch.int64)])


def test_seq_len_not_positive():
    for bad in (0, -4):
        with pytest.raises(ValueError, match=rf"feature 's': SequenceTruncate\(seq_len={bad}.*"
                                             rf"seq_len must be an int > 0"):
            Feature("s").add_op(SelectField("c")).add_op(SequenceTruncate(seq_len=bad))
    with pytest.raises(ValueError, match="n_dims must be 2 or 3"):
        SequenceTruncate(n_dims=4)(ragged([[1]]))
    with pytest.raises(ValueError, match=r"feature 's'.*at least 2 offsets levels"):
        _engine("s", SequenceTruncate(4, n_dims=3))({"c": ragged([[1]])})


def test_first_op_not_select_field():
    with pytest.raises(ValueError, match="feature 'x' must start with DataInputOP"):
        Feature("x").add_op(Mod(3))


def test_missing_column_and_non_dict():
    with pytest.raises(KeyError, match=r"feature 'f': SelectField\('nope'\): column 'nope' is not "
                                       r"in the input \(columns: 'c'\)"):
        FeatureEngine([Feature("f").add_op(SelectField("nope"))])({"c": 1})
    with pytest.raises(TypeError, match=r"SelectField\('c'\): expects the input dict"):
        SelectField("c")([1])


def test_hash_bad_inputs():
    with pytest.raises(ValueError, match=r"feature 'h': Hash\('md5'\): hash_type must be"):
        Feature("h").add_op(SelectField("c")).add_op(Hash("md5"))
    with pytest.raises(TypeError, match=r"feature 'h': Hash\('farm'\): expects string bytes"):
        _engine("h", Hash("farm"))({"c": RaggedTensorLike()})
    with pytest.raises(ValueError, match="at least 2 offsets levels"):
        Hash("farm")(ragged([[1, 2]], dtype=torch.int8))
    rt = strings_ragged([[b"ab"]])
    rt.set_weight(torch.ones(2))
    with pytest.raises(ValueError, match="per-byte weight"):
        Hash("murmur")(rt)


def RaggedTensorLike():
    """An int64 two-level RaggedTensor (not bytes)."""
    from recis_compat.ragged.tensor import RaggedTensor
    return RaggedTensor(torch.tensor([1, 2]), [torch.tensor([0, 1]), torch.tensor([0, 2])])


def test_bucketize_bad_boundaries():
    with pytest.raises(ValueError, match="boundary must be sorted ascending"):
        Feature("b").add_op(SelectField("c")).add_op(Bucketize([3, 1, 2]))
    with pytest.raises(ValueError, match="must not contain NaN"):
        Bucketize([0.0, float("nan")])(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="list of numbers"):
        Bucketize(["a"])(torch.tensor([1.0]))


def test_non_op_and_non_feature():
    with pytest.raises(TypeError, match="feature 'f': ops must subclass"):
        Feature("f").add_op(torch.nn.Identity())
    with pytest.raises(TypeError, match="Feature objects"):
        FeatureEngine([SelectField("a")])
