"""RaggedTensor <-> TorchRec JaggedTensor / KeyedJaggedTensor bridge (recis_compat.backend.kjt)."""
import subprocess
import sys

import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recis_compat.backend.kjt import jagged_to_ragged, kjt_to_ragged_dict, ragged_to_jagged
from recis_compat.ragged.tensor import RaggedTensor


def _rt(values, offsets, weight=None, odt=torch.int32):
    return RaggedTensor(torch.tensor(values), torch.tensor(offsets, dtype=odt),
                        weight=None if weight is None else torch.tensor(weight))


def _same(a, b):
    return a.data_ptr() == b.data_ptr()


# ------------------------------------------------------------------------ JaggedTensor
def test_ragged_to_jagged_zero_copy_with_weight():
    rt = _rt([1, 2, 3, 4], [0, 1, 1, 4], weight=[.5, 1., 2., 3.])
    jt = ragged_to_jagged(rt)
    assert isinstance(jt, JaggedTensor)
    assert _same(jt.values(), rt.values())
    assert _same(jt.offsets(), rt.offsets()[0])
    assert _same(jt.weights(), rt.weight())
    assert jt.offsets().dtype == torch.int32
    assert jt.lengths().tolist() == [1, 0, 3]
    assert [x.tolist() for x in jt.to_dense()] == [[1], [], [2, 3, 4]]


def test_ragged_to_jagged_uses_last_level():
    rt = RaggedTensor(torch.arange(5), [torch.tensor([0, 2, 3]), torch.tensor([0, 1, 3, 5])])
    jt = ragged_to_jagged(rt)
    assert _same(jt.offsets(), rt.offsets()[-1])
    assert jt.lengths().tolist() == [1, 2, 2]
    assert jt.weights_or_none() is None


def test_jagged_to_ragged_zero_copy():
    v = torch.tensor([7, 8, 9])
    o = torch.tensor([0, 2, 3], dtype=torch.int32)
    w = torch.tensor([1., 2., 3.])
    jt = JaggedTensor(values=v, offsets=o, weights=w)
    rt = jagged_to_ragged(jt)
    assert _same(rt.values(), v) and _same(rt.offsets()[0], o) and _same(rt.weight(), w)
    assert rt.offsets()[0].dtype == torch.int32
    assert rt._dense_shape == (2, 2)
    assert jagged_to_ragged(jt, dense_shape=(2, -1))._dense_shape == (2, -1)


def test_jagged_from_lengths_and_roundtrip():
    jt = JaggedTensor(values=torch.tensor([1, 2, 3]), lengths=torch.tensor([0, 3]))
    rt = jagged_to_ragged(jt)
    assert rt.offsets()[0].tolist() == [0, 0, 3]
    back = ragged_to_jagged(rt)
    assert _same(back.values(), jt.values()) and _same(back.offsets(), rt.offsets()[0])


def test_type_errors():
    with pytest.raises(TypeError, match="RaggedTensor"):
        ragged_to_jagged(torch.tensor([1]))
    with pytest.raises(TypeError, match="JaggedTensor"):
        jagged_to_ragged(torch.tensor([1]))
    with pytest.raises(TypeError, match="KeyedJaggedTensor"):
        kjt_to_ragged_dict({"a": 1})


# ------------------------------------------------------------------------ KeyedJaggedTensor
def _kjt(features):
    """RaggedTensors -> one KJT the TorchRec way (recis_compat/backend/kjt.py docstring)."""
    return KeyedJaggedTensor.from_jt_dict({k: ragged_to_jagged(v) for k, v in features.items()})


def test_multi_feature_kjt_contents():
    a = _rt([1, 2, 3], [0, 2, 2, 3])
    b = _rt([10, 11, 12, 13], [0, 1, 3, 4])
    kjt = _kjt({"a": a, "b": b})
    assert kjt.keys() == ["a", "b"]
    assert kjt.stride() == 3
    assert kjt.values().tolist() == [1, 2, 3, 10, 11, 12, 13]
    assert kjt.lengths().tolist() == [2, 0, 1, 1, 2, 1]
    assert kjt.length_per_key() == [3, 4]
    assert kjt.offset_per_key() == [0, 3, 7]
    assert kjt.weights_or_none() is None


def test_multi_feature_roundtrip_views():
    a = _rt([1, 2, 3], [0, 2, 2, 3], weight=[1., 2., 3.])
    b = _rt([10, 11], [0, 0, 1, 2], weight=[4., 5.])
    kjt = _kjt({"a": a, "b": b})
    assert kjt.weights().tolist() == [1., 2., 3., 4., 5.]
    out = kjt_to_ragged_dict(kjt)
    assert list(out) == ["a", "b"]
    assert out["a"].values().tolist() == [1, 2, 3] and out["b"].values().tolist() == [10, 11]
    assert out["a"].offsets()[0].tolist() == [0, 2, 2, 3]
    assert out["b"].offsets()[0].tolist() == [0, 0, 1, 2]
    assert out["b"].weight().tolist() == [4., 5.]
    # values/weights are views into the KJT buffers; the first key's offsets too
    vptr, esz = kjt.values().data_ptr(), kjt.values().element_size()
    assert out["a"].values().data_ptr() == vptr
    assert out["b"].values().data_ptr() == vptr + 3 * esz
    assert out["b"].weight().data_ptr() == kjt.weights().data_ptr() + 3 * 4
    assert _same(out["a"].offsets()[0], kjt.offsets())
    assert out["a"].shape == (3, 2) and out["b"].shape == (3, 1)
    assert torch.equal(out["a"].to_dense(), a.to_dense())


def test_variable_batch_kjt_roundtrip():
    a = _rt([1, 2], [0, 1, 2])
    b = _rt([3, 4, 5], [0, 1, 2, 3])
    kjt = _kjt({"a": a, "b": b})
    assert kjt.variable_stride_per_key()
    assert kjt.stride_per_key() == [2, 3]
    out = kjt_to_ragged_dict(kjt)
    assert out["a"].offsets()[0].tolist() == [0, 1, 2]
    assert out["b"].offsets()[0].tolist() == [0, 1, 2, 3]
    assert out["b"].values().tolist() == [3, 4, 5]


def test_empty_kjt():
    kjt = KeyedJaggedTensor(keys=[], values=torch.zeros(0, dtype=torch.int64),
                            offsets=torch.zeros(1, dtype=torch.int32), stride=2)
    assert kjt_to_ragged_dict(kjt) == {}


def test_kjt_built_by_torchrec_from_lengths():
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["x", "y"], values=torch.arange(6), lengths=torch.tensor([1, 2, 0, 3]))
    out = kjt_to_ragged_dict(kjt)
    assert out["x"].values().tolist() == [0, 1, 2] and out["x"].offsets()[0].tolist() == [0, 1, 3]
    assert out["y"].values().tolist() == [3, 4, 5] and out["y"].offsets()[0].tolist() == [0, 0, 3]


def test_kjt_feeds_embedding_bag_collection():
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=20, feature_names=["a", "b"])])
    a = _rt([1, 2, 3], [0, 2, 3])
    b = _rt([4, 5], [0, 1, 2])
    out = ebc(_kjt({"a": a, "b": b}))
    w = ebc.embedding_bags["t"].weight
    assert torch.allclose(out["a"][0], w[1] + w[2]) and torch.allclose(out["b"][1], w[5])


def test_backend_does_not_import_higher_layers():
    code = ("import sys, recis_compat.backend.kjt; "
            "bad = [m for m in sys.modules if m.startswith(('recis_compat.nn', "
            "'recis_compat.features', 'recis_compat.io', 'recis_compat.framework'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
