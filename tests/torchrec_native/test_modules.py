"""Unsharded ``recis_compat.torchrec`` collections against the RecIS facade on the same ids.

The facade (``recis.nn.modules.embedding.DynamicEmbedding`` / ``HashTable`` + ``SparseAdamW``)
and our TorchRec-native modules build new rows from the same per-id counter initializer
(``recis_compat/ops/counter_init.py``), so with the same seed they hold the same rows for the
same ids; pooling, gradients and the row-sparse Adam step must then agree exactly.
"""
from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagConfig, EmbeddingConfig, KeyedJaggedTensor, KeyedTensor
from torchrec.modules.embedding_configs import DataType, PoolingType

from recis.nn.initializers import NormalInitializer, UniformInitializer
from recis.nn.modules.embedding import DynamicEmbedding, EmbeddingOption
from recis.nn.modules.hashtable import HashTable, filter_out_sparse_param
from recis.optim import SparseAdamW
from recis.ragged.tensor import RaggedTensor
from recis_compat.torchrec import (Constant, DynamicEmbeddingBagCollection, DynamicEmbeddingCollection,
                                   DynamicTableOptions, Normal, Uniform)

SEED = 1234
DIM = 8
HP = dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=0.1)
FUSED = dict(optimizer="adamw", learning_rate=HP["lr"], beta1=HP["beta1"], beta2=HP["beta2"], eps=HP["eps"],
             weight_decay=HP["weight_decay"])


def _gen():
    return torch.Generator().manual_seed(SEED)


def _facade(combiner="sum", name="t1"):
    return DynamicEmbedding(EmbeddingOption(embedding_dim=DIM, shared_name=name, combiner=combiner,
                                            initializer=NormalInitializer(0.0, 0.1, generator=_gen())))


def _ebc(pooling=PoolingType.SUM, **kw):
    cfg = EmbeddingBagConfig(name="t1", embedding_dim=DIM, num_embeddings=100, feature_names=["a"], pooling=pooling)
    return DynamicEmbeddingBagCollection([cfg], options=DynamicTableOptions(initializer=Normal(0.0, 0.1), seed=SEED),
                                         fused_params=FUSED, **kw)


def _batch(step=0, weighted=False):
    g = torch.Generator().manual_seed(100 + step)
    lengths = torch.randint(0, 5, (6,), generator=g)
    ids = torch.randint(0, 40, (int(lengths.sum()),), generator=g) * 1_000_003 + (1 << 40)
    w = torch.rand(ids.numel(), generator=g) + 0.5 if weighted else None
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a"], values=ids, lengths=lengths, weights=w)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return kjt, RaggedTensor(ids, offsets, weight=w)


@pytest.mark.parametrize("pooling,combiner,weighted", [(PoolingType.SUM, "sum", False), (PoolingType.SUM, "sum", True),
                                                       (PoolingType.MEAN, "mean", False)])
def test_bag_forward_equals_facade(pooling, combiner, weighted):
    ours, facade = _ebc(pooling, is_weighted=weighted), _facade(combiner)
    kjt, ragged = _batch(weighted=weighted)
    kt = ours(kjt)
    assert isinstance(kt, KeyedTensor) and kt.keys() == ["a"] and kt.values().shape == (6, DIM)
    ref = facade(ragged)
    torch.testing.assert_close(kt.values(), ref, rtol=0, atol=1e-7)
    # same rows for the same ids
    ids = kjt.values().unique()
    torch.testing.assert_close(ours.tables["t1"].impl.gather(ours.tables["t1"].impl.find_rows(ids)),
                               facade.hashtable.impl.gather(facade.hashtable.impl.find_rows(ids)), rtol=0, atol=0)


def test_training_steps_equal_facade_sparse_adamw():
    ours, facade = _ebc(), _facade()
    opt_ours = ours.fused_optimizer
    opt_facade = SparseAdamW(filter_out_sparse_param(facade), **HP)
    target = torch.randn(6, DIM, generator=_gen())
    for step in range(4):
        kjt, ragged = _batch(step)
        loss_o = (ours(kjt).values() * target).square().mean()
        loss_f = (facade(ragged) * target).square().mean()
        torch.testing.assert_close(loss_o, loss_f, rtol=0, atol=1e-7)
        opt_ours.zero_grad(), opt_facade.zero_grad()
        loss_o.backward(), loss_f.backward()
        opt_ours.step(), opt_facade.step()
    a, b = ours.tables["t1"].impl.state_dict(), facade.hashtable.impl.state_dict()
    order_a, order_b = torch.argsort(a["id"]), torch.argsort(b["id"])
    assert torch.equal(a["id"][order_a], b["id"][order_b])
    for slot in ("embedding", "sparse_adamw_exp_avg", "sparse_adamw_exp_avg_sq"):
        torch.testing.assert_close(a[slot][order_a], b[slot][order_b], rtol=0, atol=1e-7)
    assert opt_ours.beta_powers("t1") == pytest.approx(opt_facade.beta_powers("t1"), abs=0)


def test_sequence_collection_equals_facade_hashtable():
    cfgs = [EmbeddingConfig(name="t1", embedding_dim=DIM, num_embeddings=10, feature_names=["a", "b"]),
            EmbeddingConfig(name="t2", embedding_dim=4, num_embeddings=10, feature_names=["c"])]
    ec = DynamicEmbeddingCollection(cfgs, options={"t1": DynamicTableOptions(initializer=Normal(0, 0.1), seed=SEED),
                                                   "t2": DynamicTableOptions(initializer=Uniform(-1, 1), seed=7)})
    ht1 = HashTable([DIM], name="t1", initializer=NormalInitializer(0.0, 0.1, generator=_gen()))
    ht2 = HashTable([4], name="t2", initializer=UniformInitializer(-1, 1, generator=torch.Generator().manual_seed(7)))
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["c", "a", "b"], values=torch.tensor([9, 9, 5, 1, 2, 1, -3]),
                                              lengths=torch.tensor([2, 0, 1, 1, 2, 1]))
    out = ec(kjt)
    assert sorted(out) == ["a", "b", "c"]
    assert out["a"].values().shape == (2, DIM) and out["c"].values().shape == (2, 4)
    assert torch.equal(out["b"].lengths(), torch.tensor([2, 1]))
    torch.testing.assert_close(out["c"].values(), ht2(torch.tensor([9, 9])), rtol=0, atol=0)
    torch.testing.assert_close(out["a"].values(), ht1(torch.tensor([5, 1])), rtol=0, atol=0)
    torch.testing.assert_close(out["b"].values(), ht1(torch.tensor([2, 1, -3])), rtol=0, atol=0)
    # gradients reach each row once per occurrence (feature "a" holds 5 and 1; "b" 2, 1, -3)
    (out["a"].values().sum() + 2 * out["b"].values().sum()).backward()
    impl = ec.tables["t1"].impl
    rows, grad = impl.grad_rows()
    by_id = dict(zip(impl.ids_map()[0][torch.argsort(impl.ids_map()[1])].index_select(0, rows).tolist(),
                     grad[:, 0].tolist()))
    assert by_id == {5: 1.0, 1: 3.0, 2: 2.0, -3: 2.0}


def test_recis_initializer_object_and_torchrec_default_init():
    init = NormalInitializer(0.0, 0.1)
    init.set_shape([16, DIM])
    init.build()
    cfg = EmbeddingBagConfig(name="t1", embedding_dim=DIM, num_embeddings=100, feature_names=["a"])
    ours = DynamicEmbeddingBagCollection([cfg], options=DynamicTableOptions(initializer=init, seed=SEED))
    kjt, _ = _batch()
    torch.testing.assert_close(ours(kjt).values(), _ebc()(kjt).values(), rtol=0, atol=0)
    # default: TorchRec's uniform(-sqrt(1/num_embeddings), +sqrt(1/num_embeddings)) per id
    plain = DynamicEmbeddingBagCollection([cfg])
    plain(kjt)
    rows = plain.tables["t1"].impl.embedding[:len(plain.tables["t1"].impl)]
    assert rows.abs().max() <= 0.1 and rows.std() > 0.02


def test_readonly_admission_and_eviction():
    cfgs = [EmbeddingBagConfig(name="ro", embedding_dim=4, num_embeddings=10, feature_names=["r"]),
            EmbeddingBagConfig(name="ev", embedding_dim=4, num_embeddings=10, feature_names=["e"])]
    ebc = DynamicEmbeddingBagCollection(cfgs, options={
        "ro": DynamicTableOptions(admission="readonly", initializer=Constant(1.0)),
        "ev": DynamicTableOptions(evict_after_steps=2, initializer=Constant(0.5))}, fused_params={"learning_rate": 0.1})
    ebc.tables["ro"].insert(torch.tensor([7]), torch.full((1, 4), 3.0))

    def batch(ev_ids):
        return KeyedJaggedTensor.from_lengths_sync(keys=["r", "e"], values=torch.tensor([7, 8] + ev_ids),
                                                   lengths=torch.tensor([1, 1, 1, len(ev_ids) - 1]))
    opt = ebc.fused_optimizer
    out = ebc(batch([1, 2]))
    assert torch.equal(out["r"], torch.tensor([[3.0] * 4, [0.0] * 4]))     # 8 unknown: zeros, not inserted
    assert len(ebc.tables["ro"].impl) == 1
    out.values().sum().backward()
    opt.step()                                         # step 1: ids 1, 2 seen at step 0
    ebc(batch([2, 2])).values().sum().backward()
    opt.step()                                         # step 2: id 1 last seen at step 0 -> evicted
    ev = ebc.tables["ev"].impl
    assert sorted(ev.ids().tolist()) == [2]
    ebc(batch([2, 3])).values().sum().backward()
    opt.step()                                         # step 3: 2 and 3 seen at step 2
    ebc(batch([3, 3])).values().sum().backward()
    opt.step()                                         # step 4: id 2 last seen at step 2 -> evicted, 3 kept
    assert sorted(ev.ids().tolist()) == [3]
    ebc.eval()
    with torch.no_grad():
        assert torch.equal(ebc(batch([1, 1]))["e"], torch.zeros(2, 4))       # evicted id 1 is unknown


def test_bad_configs_and_inputs_name_the_table_or_feature():
    cfg = EmbeddingBagConfig(name="t1", embedding_dim=4, num_embeddings=10, feature_names=["a"])
    ebc = DynamicEmbeddingBagCollection([cfg])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["b"], values=torch.tensor([1]), lengths=torch.tensor([1]))
    with pytest.raises(KeyError, match=r"table 't1'.*\['a'\]"):
        ebc(kjt)
    with pytest.raises(ValueError, match="pooling"):
        DynamicEmbeddingBagCollection([EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=1,
                                                          feature_names=["a"], pooling=PoolingType.NONE)])
    with pytest.raises(ValueError, match="'t'.*FP32"):
        DynamicEmbeddingBagCollection([EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=1,
                                                          feature_names=["a"], data_type=DataType.FP16)])
    with pytest.raises(ValueError, match="'t1'.*admission"):
        DynamicEmbeddingBagCollection([cfg], options=DynamicTableOptions(admission="sometimes"))
    with pytest.raises(ValueError, match="feature 'a'"):
        DynamicEmbeddingBagCollection([cfg, EmbeddingBagConfig(name="t2", embedding_dim=4, num_embeddings=1,
                                                               feature_names=["a"])])
    with pytest.raises(ValueError, match="unknown keys"):
        DynamicEmbeddingBagCollection([cfg], fused_params={"momentum": 0.9}).fused_optimizer
    with pytest.raises(ValueError, match="is_weighted"):
        DynamicEmbeddingBagCollection([cfg], is_weighted=True)(
            KeyedJaggedTensor.from_lengths_sync(keys=["a"], values=torch.tensor([1]), lengths=torch.tensor([1])))


def test_dcp_round_trip_unsharded(tmp_path):
    from recis_compat.torchrec.checkpoint import load_checkpoint, save_checkpoint

    def model():
        m = torch.nn.Module()
        m.ebc = _ebc()
        m.dense = torch.nn.Linear(DIM, 1)
        return m

    src = model()
    for step in range(2):
        kjt, _ = _batch(step)
        src.dense(src.ebc(kjt).values()).sum().backward()
        src.ebc.fused_optimizer.step()
    save_checkpoint(src, str(tmp_path / "ckpt"), optimizers={"ebc": src.ebc.fused_optimizer})
    dst = model()
    with pytest.raises(PermissionError, match="trusted_source"):
        load_checkpoint(dst, str(tmp_path / "ckpt"))
    load_checkpoint(dst, str(tmp_path / "ckpt"), optimizers={"ebc": dst.ebc.fused_optimizer}, trusted_source=True)
    a, b = src.ebc.tables["t1"].impl.state_dict(), dst.ebc.tables["t1"].impl.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(src.dense.weight, dst.dense.weight)
    assert dst.ebc.fused_optimizer.beta_powers("t1") == src.ebc.fused_optimizer.beta_powers("t1")
    # one more identical step on both
    kjt, _ = _batch(5)
    for m in (src, dst):
        m.dense(m.ebc(kjt).values()).sum().backward()
        m.ebc.fused_optimizer.step()
    torch.testing.assert_close(src.ebc(kjt).values(), dst.ebc(kjt).values(), rtol=0, atol=0)


def test_fused_optimizer_in_torchrec_combined_optimizer_state_and_lr_scheduler():
    from torchrec.optim.keyed import CombinedOptimizer

    ebc = _ebc()
    combined = CombinedOptimizer([("ebc", ebc.fused_optimizer)])
    assert list(combined.params) == ["ebc.t1.weight"]
    kjt, _ = _batch()
    ebc(kjt).values().sum().backward()
    combined.step()
    sd = combined.state_dict()["state"]["ebc.t1.weight"]
    assert float(sd["beta1_power"]) == pytest.approx(FUSED["beta1"]) and int(sd["step"]) == 1
    # a TorchRec-style load copies into the live state tensors
    other = _ebc()
    other_combined = CombinedOptimizer([("ebc", other.fused_optimizer)])
    other_combined.load_state_dict(combined.state_dict())
    assert other.fused_optimizer.beta_powers("t1") == ebc.fused_optimizer.beta_powers("t1")
    sched = torch.optim.lr_scheduler.StepLR(ebc.fused_optimizer, step_size=1, gamma=0.5)
    sched.step()
    assert ebc.fused_optimizer.param_groups[0]["lr"] == pytest.approx(FUSED["learning_rate"] / 2)


def test_sharded_collection_names_its_tables_when_the_id_exchange_fails(tmp_path, monkeypatch):
    import torch.distributed as dist
    from torchrec.distributed.types import ShardingEnv
    from recis_compat.backend.sharding import DistributedExchangeError
    from recis_compat.torchrec.distributed import DynamicEmbeddingBagCollectionSharder

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sharded = DynamicEmbeddingBagCollectionSharder().shard(_ebc(), None, ShardingEnv.from_process_group(
            dist.group.WORLD))
        kjt, _ = _batch()
        ours = _ebc()
        torch.testing.assert_close(sharded(kjt).values(), ours(kjt).values(), rtol=0, atol=0)

        # one real rank: pretend the group spans two so that its id exchange runs, through an
        # all-to-all that fails when issued, then one that fails when waited on
        from recis_compat.backend import exchange
        sharded.groups[0].world = 2

        def broken(*args, **kwargs):                        # the all-to-all cannot even be issued
            raise RuntimeError("Connection closed by peer")
        monkeypatch.setattr(exchange.dist, "all_to_all_single", broken)
        with pytest.raises(DistributedExchangeError, match=r"tables \['t1'\], rank 0 of 2.*id all-to-all.*Connection closed"):
            sharded(kjt)

        class Failing:
            def wait(self):
                raise RuntimeError("Application timeout caused pair closure")
        monkeypatch.setattr(exchange.dist, "all_to_all_single", lambda *a, **k: Failing())
        with pytest.raises(DistributedExchangeError, match=r"tables \['t1'\], rank 0 of 2.*id all-to-all.*pair closure"):
            sharded(kjt)
    finally:
        dist.destroy_process_group()


def test_deepcopy_gives_an_independent_collection():
    import copy

    cfg = EmbeddingBagConfig(name="ev", embedding_dim=4, num_embeddings=10, feature_names=["e"])
    ebc = DynamicEmbeddingBagCollection([cfg], options=DynamicTableOptions(evict_after_steps=2, initializer=Constant(0.5)))

    def kjt(*ids):
        return KeyedJaggedTensor.from_lengths_sync(keys=["e"], values=torch.tensor(ids), lengths=torch.ones(len(ids),
                                                                                                          dtype=torch.int32))
    ebc(kjt(1, 2))                       # both stamped at clock 0
    twin = copy.deepcopy(ebc)
    twin.fused_optimizer.step()          # twin clock 1
    twin(kjt(1))                         # the twin's id 1 stamped 1 (in the twin's table)
    twin.fused_optimizer.step()          # twin clock 2: id 2 (last seen 0) evicted, id 1 kept
    assert sorted(twin.tables["ev"].impl.ids().tolist()) == [1]
    assert sorted(ebc.tables["ev"].impl.ids().tolist()) == [1, 2] and ebc.runtime("ev").step == 0
