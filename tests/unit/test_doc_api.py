"""The API as RecIS's documentation writes it (basic_usage, FAQ, the Feature docstring) runs:
``Feature(name=..., ops=[...])``, ``Hash(bucket_size=...)``, ``Bucketize(boundaries=...)`` are
aliases of the real signatures (COMPATIBILITY.md); giving a name and its alias at once is an error."""
import farmhash
import pytest
import torch

import recis  # noqa: F401  (the import package RecIS scripts use)
from recis.features.feature import Feature
from recis.features.feature_engine import FeatureEngine
from recis.features.op import Bucketize, Hash, Mod, SelectField
from recis.ragged.tensor import RaggedTensor

STRINGS = [[b"apple", b"kiwi"], [], [b"plum"]]
BUCKETS = 1000


def _strings(rows):
    """Byte-level RaggedTensor (int8 values, offsets [rows, strings]) as varlen_feature(trans_int8=True)."""
    flat = [s for r in rows for s in r]
    values = torch.tensor(list(b"".join(flat)), dtype=torch.uint8).view(torch.int8)
    row_off = torch.tensor([0] + [sum(len(r) for r in rows[:i + 1]) for i in range(len(rows))])
    str_off = torch.tensor([0] + [sum(len(s) for s in flat[:i + 1]) for i in range(len(flat))])
    return RaggedTensor(values, [row_off.int(), str_off.int()])


def _farm_bucket(s: bytes) -> int:
    return farmhash.fingerprint64(s) % BUCKETS      # fingerprint64 is unsigned: uint64(h) % N


def _rows(rt):
    off = rt.offsets()[-1].tolist()
    vals = rt.values().tolist()
    return [vals[a:b] for a, b in zip(off[:-1], off[1:])]


def test_documented_feature_engine_snippet_runs_and_matches_the_real_api():
    data = {"title": _strings(STRINGS), "price": torch.tensor([[1.0], [25.0], [70.0]])}
    doc = [Feature(name="title", ops=[SelectField("title"), Hash(bucket_size=BUCKETS)]),
           Feature(name="price", ops=[SelectField("price"), Bucketize(boundaries=[10.0, 50.0])])]
    real = [Feature("title").add_op(SelectField("title")).add_op(Hash("farm")).add_op(Mod(BUCKETS)),
            Feature("price").add_op(SelectField("price")).add_op(Bucketize([10.0, 50.0]))]
    assert [f.get_hash() for f in doc] == [f.get_hash() for f in real]
    got = FeatureEngine(doc)(dict(data))
    want = FeatureEngine(real)(dict(data))
    assert _rows(got["title"]) == _rows(want["title"]) == [[_farm_bucket(b"apple"), _farm_bucket(b"kiwi")],
                                                           [], [_farm_bucket(b"plum")]]
    assert torch.equal(got["price"], want["price"])
    assert got["price"].flatten().tolist() == [0, 1, 2]


def test_hash_bucket_size_called_directly_buckets_the_hash():
    op = Hash(bucket_size=BUCKETS)
    assert op.hash_type == "farm" and op.bucket_size == BUCKETS
    out = op(_strings(STRINGS))
    assert _rows(out) == [[_farm_bucket(b"apple"), _farm_bucket(b"kiwi")], [], [_farm_bucket(b"plum")]]
    assert out.dtype == torch.int64 and bool((out.values() >= 0).all())
    murmur = Hash("murmur", bucket_size=7)(_strings(STRINGS))
    raw = Hash("murmur")(_strings(STRINGS))
    assert murmur.values().tolist() == [v % (1 << 64) % 7 for v in raw.values().tolist()]
    # without bucket_size nothing changes: RecIS's config and hash identity
    assert Hash("farm")._get_config() == {"hash_type": "farm"}
    assert Feature("t", ops=[SelectField("t"), Hash("farm")]).ops[1].__class__ is Hash
    assert len(Feature("t", ops=[SelectField("t"), Hash("farm")]).ops) == 2


def test_bucketize_boundaries_alias():
    x = torch.tensor([5.0, 10.0, 60.0])
    assert torch.equal(Bucketize(boundaries=[10.0, 50.0])(x), Bucketize([10.0, 50.0])(x))
    assert Bucketize(boundaries=[1, 2])._get_config() == Bucketize(boundary=[1, 2])._get_config()


def test_name_and_alias_together_or_neither_are_clear_errors():
    with pytest.raises(TypeError, match="got both 'boundary' and 'boundaries'"):
        Bucketize([1.0], boundaries=[2.0])
    with pytest.raises(TypeError, match="missing required argument 'boundary' .or its alias 'boundaries'"):
        Bucketize()
    with pytest.raises(TypeError, match="needs hash_type"):
        Hash()


def test_bad_documented_arguments_name_the_feature_and_op():
    with pytest.raises(ValueError, match=r"feature 'title'.*Hash\('farm', bucket_size=0\): bucket_size must be > 0"):
        Feature(name="title", ops=[SelectField("title"), Hash(bucket_size=0)])
    with pytest.raises(ValueError, match=r"feature 'title'.*bucket_size must be an int"):
        Feature(name="title", ops=[SelectField("title"), Hash(bucket_size=2.5)])
    with pytest.raises(ValueError, match="feature 'price' must start with DataInputOP"):
        Feature(name="price", ops=[Bucketize(boundaries=[1.0])])
    with pytest.raises(TypeError, match="feature 'price': ops must be a list"):
        Feature(name="price", ops=SelectField("price"))


def test_fused_hash_applies_bucket_size_when_the_op_was_not_split():
    """A ``Hash(bucket_size=N)`` placed in ``feature.ops`` without ``add_op`` (so not split into
    Hash + Mod) is still bucketed by the fused op of a FeatureEngine."""
    feature = Feature("title").add_op(SelectField("title"))
    feature.ops.append(Hash(bucket_size=BUCKETS))
    out = FeatureEngine([feature])({"title": _strings(STRINGS)})["title"]
    assert _rows(out) == [[_farm_bucket(b"apple"), _farm_bucket(b"kiwi")], [], [_farm_bucket(b"plum")]]
