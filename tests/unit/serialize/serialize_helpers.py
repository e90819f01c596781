"""Helpers of the recis.serialize tests: tables built directly from the backend (no name
registry, so a test can hold a source and a target table with the same children), filled with
known rows in every slot, and read back as ``{child: {raw id: {slot: row}}}``."""
import torch

from recis_compat.backend.children import ID_MASK, decode_ids, encode_ids
from recis_compat.backend.dynamic_table import DynamicTable, DynamicTableConfig

FULL = (0, 65536, 65536)
OPT_SLOTS = ("sparse_adamw_exp_avg", "sparse_adamw_exp_avg_sq")


def make_table(name, children=None, coalesced=False, dim=4, slice=FULL, init=-7.0, dtype=torch.float32,
               slots=OPT_SLOTS, step_filter=True):
    """A table with ``embedding`` + ``slots`` (rows ``[dim]``, init 0) + ``step_filter`` (int64
    ``[1]``, init 0); new embedding rows start at ``init``."""
    cfg = DynamicTableConfig(name=name, embedding_dim=dim, dtype=dtype, block_size=8, children=children,
                             coalesced=coalesced,
                             sample_rows=lambda k: torch.full((k, dim), init, dtype=dtype))
    impl = DynamicTable(cfg).impl
    impl.slice = tuple(slice)
    for s in slots:
        impl.add_slot(s, [dim], dtype, 0.0)
    if step_filter:
        impl.add_slot("step_filter", [1], torch.int64, 0)
    return impl


def fill(impl, child_ids, seed=0):
    """Insert ``{child: [raw ids]}`` with distinct values in every slot; returns the expected
    ``{child: {raw id: {slot: row}}}``."""
    g = torch.Generator().manual_seed(seed)
    expected = {}
    for child, ids in child_ids.items():
        ids = torch.as_tensor(ids, dtype=torch.int64)
        stored = encode_ids(ids, impl.children.child_index(child)) if impl.children.is_coalesce() else ids
        rows = impl.find_or_insert_rows(stored)
        per = {}
        for slot, spec in impl.storage.specs.items():
            shape = [ids.numel()] + list(spec.tail)
            if spec.dtype.is_floating_point:
                vals = torch.randn(shape, generator=g).to(spec.dtype)
            else:
                vals = torch.randint(1, 1000, shape, generator=g).to(spec.dtype)
            impl.storage.write_rows(slot, rows, vals)
            per[slot] = vals
        # a coalesced table keeps the low 52 bits of an id (Q8): that is the raw id read back
        keys = (ids & ID_MASK) if impl.children.is_coalesce() else ids
        expected[child] = {int(i): {s: per[s][k] for s in per} for k, i in enumerate(keys.tolist())}
    return expected


def snapshot(impl):
    """``{child: {raw id: {slot: row}}}`` of everything stored in ``impl``."""
    ids, rows = impl.ids_map()
    children = impl.children.children()
    out = {c: {} for c in children}
    if impl.children.is_coalesce():
        raw, idx = decode_ids(ids)
    else:
        raw, idx = ids, torch.zeros_like(ids)
    for r, c, row in zip(raw.tolist(), idx.tolist(), rows.tolist()):
        out[children[c]][r] = {s: t[row].clone() for s, t in impl.storage.slots.items()}
    return out


def assert_same(got, expected):
    assert set(got) == set(expected), (set(got), set(expected))
    for child in expected:
        assert set(got[child]) == set(expected[child]), (child, sorted(got[child]), sorted(expected[child]))
        for i, slots in expected[child].items():
            assert set(got[child][i]) >= set(slots), (child, i, set(got[child][i]), set(slots))
            for s, v in slots.items():
                assert torch.equal(got[child][i][s], v), (child, i, s, got[child][i][s], v)


def merge(*dicts):
    out = {}
    for d in dicts:
        for child, rows in d.items():
            out.setdefault(child, {}).update(rows)
    return out


def owned(expected, begin, end):
    """The part of ``expected`` whose ids fall in slice range [begin, end) (uint64 id % 65536)."""
    return {c: {i: v for i, v in rows.items() if begin <= (i % (1 << 64)) % 65536 < end}
            for c, rows in expected.items()}
