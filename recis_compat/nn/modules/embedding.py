"""``recis.nn.modules.embedding``: EmbeddingOption and DynamicEmbedding (RecIS 1.0; see COMPATIBILITY.md).

``DynamicEmbedding`` looks ids up in one :class:`~recis_compat.nn.modules.hashtable.HashTable` and
pools them per bag with the option's combiner. On one process the "exchange" steps are local;
under ``torchrun`` the backend table is sharded (``recis_compat.backend.sharding``) and the same
steps move ids and embeddings between ranks.

Fixes (COMPATIBILITY.md, Q12): the RaggedTensor's own weights are used (``input_weights``
overrides them), ``tile`` works (dense input -> ``[B, T*dim]``, ragged -> ``[B, T, dim]``) and
``pg`` is kept.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from recis_compat.backend.exchange import RowsAllToAll
from recis_compat.nn.functional.embedding_ops import ragged_embedding_segment_reduce
from recis_compat.nn.hashtable_hook import AdmitHook, FilterHook
from recis_compat.nn.initializers import ConstantInitializer, Initializer
from recis_compat.nn.modules.hashtable import HashTable, gen_slice
from recis_compat.ragged.tensor import RaggedTensor
from recis_compat.utils.device import resolve_device

__all__ = ["EmbeddingOption", "DynamicEmbedding", "ExchangeIDsResults", "ExchangeEmbResults",
           "EmbeddingExchange", "deal_with_tensor"]

COMBINERS = ("sum", "mean", "tile")


@dataclass
class EmbeddingOption:
    """Configuration of one embedded feature / logical table (RecIS 1.0; see COMPATIBILITY.md)."""

    embedding_dim: int = 16
    block_size: int = 10240
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    trainable: bool = True
    pg: object = None
    max_partition_num: int = 65536
    shared_name: str = "embedding"
    children: List[str] = field(default_factory=list)
    coalesced: Optional[bool] = False
    initializer: Optional[Initializer] = None
    use_weight: Optional[bool] = True
    combiner: Optional[str] = "sum"
    combiner_kwargs: Optional[dict] = None
    grad_reduce_by: Optional[str] = "worker"
    filter_hook: Optional[FilterHook] = None
    admit_hook: Optional[AdmitHook] = None
    fp16_enabled: bool = False

    def __post_init__(self):
        who = f"EmbeddingOption(shared_name={self.shared_name!r})"
        if not isinstance(self.shared_name, str) or not self.shared_name:
            raise ValueError(f"EmbeddingOption: shared_name must be a non-empty str, got {self.shared_name!r}")
        if isinstance(self.embedding_dim, bool) or not isinstance(self.embedding_dim, int) or self.embedding_dim <= 0:
            raise ValueError(f"{who}: embedding_dim must be an int > 0, got {self.embedding_dim!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"{who}: block_size must be an int > 0, got {self.block_size!r}")
        if not isinstance(self.dtype, torch.dtype):
            raise TypeError(f"{who}: dtype must be a torch.dtype, got {self.dtype!r}")
        if not (self.dtype.is_floating_point or self.dtype in (torch.int8, torch.int32, torch.int64)):
            raise TypeError(f"{who}: dtype must be floating or int8/int32/int64, got {self.dtype}")
        self.device = torch.device(self.device)
        if not self.children:
            self.children = [self.shared_name]
        if self.initializer is None:
            self.initializer = ConstantInitializer(init_val=0)
        if not isinstance(self.initializer, Initializer):
            raise TypeError(f"{who}: initializer must be a recis.nn.initializers.Initializer instance, got "
                            f"{type(self.initializer).__name__}")
        if self.fp16_enabled:
            assert self.dtype in (torch.int8,), f"{who}: only int8 emb can set fp16_enabled (dtype is {self.dtype})"
        assert self.combiner in COMBINERS, \
            f"{who}: Hashtable combiner only support [sum/mean/tile], but got {self.combiner}"
        if self.combiner == "tile":
            if self.combiner_kwargs is None:
                raise RuntimeError(f"{who}: combiner_kwargs must be set when combiner is tile "
                                   "(e.g. combiner_kwargs={'tile_len': 8})")
            if "tile_len" not in self.combiner_kwargs:
                raise RuntimeError(f"{who}: tile_len must be in combiner_kwargs when combiner is tile")
            tl = self.combiner_kwargs["tile_len"]
            if isinstance(tl, bool) or not isinstance(tl, int) or tl <= 0:
                raise ValueError(f"{who}: combiner_kwargs['tile_len'] must be an int > 0, got {tl!r}")
        if self.grad_reduce_by not in ("worker", "id"):
            raise ValueError(f"{who}: grad_reduce_by must be 'worker' or 'id', got {self.grad_reduce_by!r}")
        if self.filter_hook is not None and not isinstance(self.filter_hook, FilterHook):
            raise TypeError(f"{who}: filter_hook must be a FilterHook, got {type(self.filter_hook).__name__}")
        if self.admit_hook is not None and not isinstance(self.admit_hook, AdmitHook):
            raise TypeError(f"{who}: admit_hook must be an AdmitHook, got {type(self.admit_hook).__name__}")

    def coalesced_info(self) -> str:
        """JSON of what decides the physical table (equal strings may share one)."""
        return json.dumps({"dim": self.embedding_dim, "dtype": str(self.dtype), "device": str(self.device.type),
                           "initializer": str(self.initializer), "grad_reduce_by": self.grad_reduce_by,
                           "filter_hook": str(self.filter_hook)})

    def runtime_info(self) -> str:
        """JSON of what decides a lookup group inside a physical table."""
        return json.dumps({"combiner": self.combiner, "use_weight": self.use_weight, "trainable": self.trainable,
                           "admit_hook": str(self.admit_hook), "fp16_enabled": self.fp16_enabled})


@dataclass
class ExchangeIDsResults:
    """One lookup after :meth:`DynamicEmbedding.exchange_ids`: ``ids`` the distinct ids ``[U]``
    grouped by owner rank, ``parts`` how many go to each rank, ``parts_reverse`` how many this
    rank received from each (filled by ``lookup_exchange_emb``), ``reverse_index`` ``[N]``
    (``ids[reverse_index]`` is the input), ``offsets`` the bag offsets, ``ids_await`` the
    exchange in flight (``backend/dynamic_table.py`` ``LookupRequest``)."""

    ids: torch.Tensor
    parts: list
    parts_reverse: list
    reverse_index: torch.Tensor
    offsets: torch.Tensor
    ids_await: object = None


@dataclass
class ExchangeEmbResults:
    """One lookup after :meth:`DynamicEmbedding.lookup_exchange_emb`: ``emb`` ``[U, dim]`` once
    :meth:`DynamicEmbedding.wait_exchange_emb` waited on ``emb_await`` (the rows in flight; None
    before), ``emb_shape`` ``(U, dim)``."""

    emb: Optional[torch.Tensor]
    reverse_index: torch.Tensor
    emb_shape: tuple
    offsets: torch.Tensor
    emb_await: object = None


EmbeddingExchange = RowsAllToAll
"""RecIS's autograd all-to-all of embeddings (``all_to_all_single``; backward the reverse):
``recis_compat/backend/exchange.py`` ``RowsAllToAll``, which the sharded lookups use:
``EmbeddingExchange.apply(emb, send_parts, recv_parts, pg)`` -> the rows received."""


def deal_with_tensor(input_tensor: Union[torch.Tensor, RaggedTensor], what: str = "DynamicEmbedding"
                     ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Tuple[int, ...]]:
    """``(ids [N] int64, offsets [bags+1], weight [N] or None, bag_shape)`` of a lookup input.

    Dense ``[B, F]``: B bags of F ids, no weight, bag_shape ``(B,)``. RaggedTensor: bags are the
    last offsets level and must cover ``prod(real_shape(0, -1))`` (a padded 3-D tensor). ``what``
    names the feature/table in errors.
    """
    if isinstance(input_tensor, RaggedTensor):
        val = input_tensor.values()
        offsets = input_tensor.offsets()[-1]
        shape = tuple(input_tensor.real_shape(0, -1))
        if math.prod(shape) != offsets.numel() - 1:
            raise RuntimeError(f"{what}: RaggedTensor must pad before lookup: its outer shape {shape} holds "
                               f"{math.prod(shape)} bags but the last offsets level has {offsets.numel() - 1} "
                               "(use SequenceTruncate(n_dims=3, seq_len=L) to pad every row to L lists)")
        weight = input_tensor.weight()
    elif isinstance(input_tensor, torch.Tensor):
        if input_tensor.is_sparse:
            raise TypeError(f"{what}: sparse ids are not supported; pass a dense [B, F] tensor or a RaggedTensor")
        if input_tensor.dim() != 2:
            raise IndexError(f"{what}: dense ids must be 2-D [batch, ids_per_row], got shape "
                             f"{tuple(input_tensor.shape)}")
        val = input_tensor.reshape(-1)
        bs, width = input_tensor.shape
        offsets = torch.arange(bs + 1, device=val.device, dtype=torch.int64) * width
        weight = None
        shape = (bs,)
    else:
        raise TypeError(f"{what}: ids must be a torch.Tensor or a RaggedTensor, got {type(input_tensor).__name__}")
    if val.dtype != torch.int64:
        raise TypeError(f"{what}: ids must be int64, got {val.dtype} (hash or cast them first, e.g. with "
                        "the Hash/Mod feature ops or .long())")
    return val, offsets, weight, shape


def _cast_for_reduce(emb: torch.Tensor, fp16_enabled: bool) -> torch.Tensor:
    if emb.dtype.is_floating_point:
        return emb
    return emb.to(torch.float16 if fp16_enabled else torch.float32)


class DynamicEmbedding(nn.Module):
    """Embedding lookup + pooling over one dynamic table.

    ``forward(input_ids, input_weights=None)``:
        * dense int64 ``[B, F]`` -> sum/mean ``[B, dim]``, tile ``[B, T*dim]``;
        * RaggedTensor ``[B, *]`` -> sum/mean ``[B, dim]``, tile ``[B, T, dim]``;
        * padded 3-D RaggedTensor ``[B, L, *]`` -> sum/mean ``[B, L, dim]``.
    """

    def __init__(self, emb_opt: EmbeddingOption, pg=None):
        super().__init__()
        if not isinstance(emb_opt, EmbeddingOption):
            raise TypeError(f"DynamicEmbedding expects an EmbeddingOption, got {type(emb_opt).__name__}")
        self._emb_opt = emb_opt
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        self._rank = int(os.environ.get("RANK", 0))
        if pg is None:
            import torch.distributed as dist
            pg = dist.distributed_c10d._get_default_group() if dist.is_initialized() else None
        self._pg = pg
        device = resolve_device(emb_opt.device, what=f"EmbeddingOption(shared_name={emb_opt.shared_name!r}).device")
        self._hashtable = HashTable(
            embedding_shape=[emb_opt.embedding_dim], block_size=emb_opt.block_size, dtype=emb_opt.dtype,
            device=device, initializer=emb_opt.initializer, children=emb_opt.children, name=emb_opt.shared_name,
            coalesced=emb_opt.coalesced, slice=gen_slice(shard_index=self._rank, shard_num=self._world_size),
            grad_reduce_by=emb_opt.grad_reduce_by, filter_hook=emb_opt.filter_hook)

    @property
    def name(self) -> str:
        return self._emb_opt.shared_name

    @property
    def info(self) -> str:
        return f"{self._emb_opt.shared_name}_{self._emb_opt.embedding_dim}_{self._emb_opt.dtype}"

    @property
    def hashtable(self) -> HashTable:
        return self._hashtable

    def deal_with_tensor(self, input_tensor):
        return deal_with_tensor(input_tensor, what=f"table {self.name!r}")

    # ------------------------------------------------------------------ stages
    # RecIS's three stages; each returns right after issuing its all-to-all (sharded tables), so
    # EmbeddingEngine runs every group's exchange_ids before any lookup_exchange_emb.
    def exchange_ids(self, ids: torch.Tensor, offsets: torch.Tensor) -> ExchangeIDsResults:
        """Dedupe ``ids`` ``[N]``, group the distinct ids by owner rank and issue their exchange
        (on one process they stay local)."""
        table = self._hashtable.table
        uniq, reverse, parts = table.partition_ids(ids)
        return ExchangeIDsResults(ids=uniq, parts=parts, parts_reverse=[], reverse_index=reverse, offsets=offsets,
                                  ids_await=table.request(uniq, parts))

    def lookup_exchange_emb(self, r: ExchangeIDsResults, admit_hook: Optional[AdmitHook] = None) -> ExchangeEmbResults:
        """Look the ids up on their owners and issue the rows' way back; the rows ``[U, dim]``
        come from :meth:`wait_exchange_emb`."""
        if admit_hook is not None and (not isinstance(admit_hook, AdmitHook) or admit_hook.name != "ReadOnly"):
            raise AssertionError(f"table {self.name!r}: only AdmitHook('ReadOnly') is supported, got {admit_hook}")
        # find-or-insert and gather under one hold of the table's lock (see HashTable.forward)
        with self._hashtable.impl.lock:
            pending = r.ids_await.fetch(readonly=admit_hook is not None)
        r.parts_reverse = r.ids_await.received_counts
        return ExchangeEmbResults(emb=None, reverse_index=r.reverse_index,
                                  emb_shape=(r.ids.numel(), self._emb_opt.embedding_dim), offsets=r.offsets,
                                  emb_await=pending)

    def wait_exchange_emb(self, r: ExchangeEmbResults) -> torch.Tensor:
        """The rows ``[U, dim]`` of a :meth:`lookup_exchange_emb` (waits for them once)."""
        if r.emb_await is not None:
            r.emb, r.emb_await = r.emb_await.wait(), None
        return r.emb.view(r.emb_shape)

    def emb_reduce(self, r: ExchangeEmbResults, weight, combiner, combiner_kwargs, fp16_enable=False):
        emb = _cast_for_reduce(self.wait_exchange_emb(r), fp16_enable)
        if weight is not None and weight.dtype != emb.dtype:
            weight = weight.to(emb.dtype)
        return ragged_embedding_segment_reduce(emb, weight, r.reverse_index, r.offsets, combiner, combiner_kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids, input_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        opt = self._emb_opt
        ids, offsets, weight, shape = self.deal_with_tensor(input_ids)
        if input_weights is not None:
            weight = input_weights.reshape(-1)
            if weight.numel() != ids.numel():
                raise ValueError(f"table {self.name!r}: input_weights has {weight.numel()} values for {ids.numel()} ids")
        if not opt.use_weight:
            weight = None
        r = self.lookup_exchange_emb(self.exchange_ids(ids, offsets), opt.admit_hook)
        kwargs = None
        if opt.combiner == "tile":
            if len(shape) != 1:
                raise RuntimeError(f"table {self.name!r}: combiner 'tile' needs 2-D ids [B, *], got a "
                                   f"{len(shape) + 1}-D RaggedTensor")
            kwargs = {"tile_len": [opt.combiner_kwargs["tile_len"]], "bs": [offsets.numel() - 1]}
        emb = self.emb_reduce(r, weight, opt.combiner, kwargs, opt.fp16_enabled)
        emb = shape_output(emb, shape, opt, ragged=isinstance(input_ids, RaggedTensor))
        return emb if opt.trainable else emb.detach()


def shape_output(emb: torch.Tensor, shape, opt: EmbeddingOption, ragged: bool) -> torch.Tensor:
    """Pooled rows -> the output shape of RecIS's API (see DynamicEmbedding)."""
    dim = emb.shape[-1]
    if opt.combiner == "tile":
        tl = opt.combiner_kwargs["tile_len"]
        return emb.view(-1, tl, dim) if ragged else emb.view(-1, tl * dim)
    return emb.view(tuple(shape) + (dim,))
