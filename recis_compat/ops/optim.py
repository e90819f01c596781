"""Row-sparse Adam-family update (``sparse_adam_rows_``) with RecIS's exact math (§1.6.2).

``sparse_adam_rows_(param, exp_avg, exp_avg_sq, rows, grad, lr, beta1, beta2, eps, decay,
beta1_power, beta2_power)`` updates, in place, only the listed (unique) ``rows`` of the float
``[R_total, D]`` parameter and its two moment slots with gradient ``grad [len(rows), D]``.
``beta*_power`` are the per-table running powers *after* advancing them for this step; ``decay``
is the optimizer's decay factor (SparseAdamW ``1 - lr·wd``, SparseAdamWTF ``1 - wd``, SparseAdam 1).
"""
from __future__ import annotations

import torch


@torch.library.register_fake("recis_compat::sparse_adam_rows_")
def _sparse_adam_rows_fake(param, exp_avg, exp_avg_sq, rows, grad, lr, beta1, beta2, eps, decay,
                           beta1_power, beta2_power):
    return None


def sparse_adam_rows_(param, exp_avg, exp_avg_sq, rows, grad, *, lr, beta1, beta2, eps, decay,
                      beta1_power, beta2_power) -> None:
    """See the module docstring. ``rows`` must be unique (coalesce duplicates first)."""
    torch.ops.recis_compat.sparse_adam_rows_(param, exp_avg, exp_avg_sq, rows, grad, float(lr),
                                             float(beta1), float(beta2), float(eps), float(decay),
                                             float(beta1_power), float(beta2_power))


@torch.library.register_fake("recis_compat::sparse_rows_rotate_")
def _sparse_rows_rotate_fake(a, b, c, rows, grad):
    return None


def sparse_rows_rotate_(a, b, c, rows, grad) -> None:
    """The physical floor of :func:`sparse_adam_rows_` (``bench optim``): for every listed
    (unique) row ``r`` of the float ``[R_total, D]`` tensors ``a``, ``b``, ``c`` (same shape and
    dtype), ``(a, b, c)[r] <- (b, c, a)[r]`` in place, with no arithmetic: each slot row is read
    and written once, with the same loop, prefetching and threading as the Adam kernel
    (csrc/optim/rows_floor.cpp). ``grad`` ``[len(rows), D]`` is checked as the Adam kernel checks
    it and not read."""
    torch.ops.recis_compat.sparse_rows_rotate_(a, b, c, rows, grad)


@torch.library.register_fake("recis_compat::rows_pread_")
def _rows_pread_fake(fd, rows, out):
    return None


@torch.library.register_fake("recis_compat::rows_pwrite")
def _rows_pwrite_fake(fd, rows, values):
    return None


def _host_only(op: str, *tensors) -> None:
    for t in tensors:
        if t.device.type != "cpu":
            raise RuntimeError(f"recis_compat::{op} reads and writes files from host memory; it has no kernel for "
                               f"{t.device} (cached_ssd tables live on the CPU, docs/stores.md)")


def rows_pread_(fd: int, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Read rows of a flat row file into ``out`` (csrc/optim/rows_floor.cpp): ``out[i]`` <- the
    ``row_bytes`` bytes at ``rows[i] * row_bytes`` of the file open as ``fd``, where ``row_bytes``
    is the size of one row of ``out``. One ``pread`` per run of consecutive rows (pass ``rows``
    sorted to coalesce them). The cached_ssd row cache's miss path (backend/row_cache.py).

    Args:
        fd: an open file descriptor of the row file (backend/row_store.py: a row is a record of every slot).
        rows: int64 ``[R]`` row numbers (``>= 0``; a row past the end of the file is an error).
        out: contiguous host tensor ``[R, *tail]`` of the slot's dtype.

    Returns:
        ``out``.
    """
    _host_only("rows_pread_", rows, out)
    torch.ops.recis_compat.rows_pread_(int(fd), rows, out)
    return out


def rows_pwrite(fd: int, rows: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values[i]`` to row ``rows[i]`` of the flat row file open as ``fd`` (byte offset
    ``rows[i] * row_bytes``, ``row_bytes`` = one row of ``values``); one ``pwrite`` per run of
    consecutive rows. The cached_ssd row cache's write-back (backend/row_cache.py).

    Args:
        fd: an open, writable file descriptor.
        rows: int64 ``[R]`` distinct row numbers (``>= 0``).
        values: contiguous host tensor ``[R, *tail]``.
    """
    _host_only("rows_pwrite", rows, values)
    torch.ops.recis_compat.rows_pwrite(int(fd), rows, values)


@torch.library.register_fake("recis_compat::rows_move_")
def _rows_move_fake(dst, dst_rows, src, src_rows):
    return None


def rows_move_(dst: torch.Tensor, dst_rows: torch.Tensor, src: torch.Tensor, src_rows: torch.Tensor) -> torch.Tensor:
    """``dst[dst_rows[i]] = src[src_rows[i]]`` bit for bit, one ``memcpy`` per row over the intra-op
    threads (csrc/optim/rows_floor.cpp): the cached_ssd row cache's moves between its slabs, the
    records read from a row file and the file's mapping (backend/row_cache.py, row_store.py), where
    ``index_copy_`` / ``index_select`` spend 0.2-0.3 us a row.

    Args:
        dst: host tensor ``[T, *tail]`` whose rows (trailing dims) are contiguous (its row stride is
            free: a column of wider records is fine); updated in place.
        dst_rows: int64 ``[N]`` rows of ``dst`` in ``[0, T)``, distinct.
        src: host tensor ``[S, *tail2]`` with contiguous rows of the same bytes as ``dst``'s (the
            dtypes may differ).
        src_rows: int64 ``[N]`` rows of ``src`` in ``[0, S)``.

    Returns:
        ``dst``.
    """
    _host_only("rows_move_", dst, dst_rows, src, src_rows)
    torch.ops.recis_compat.rows_move_(dst, dst_rows, src, src_rows)
    return dst


@torch.library.register_fake("recis_compat::row_cache_translate_")
def _row_cache_translate_fake(row_slot, rows, last, dirty, clock, mark, write):
    return rows.new_empty(rows.shape)


@torch.library.register_fake("recis_compat::row_cache_sweep_")
def _row_cache_sweep_fake(last, hand, used, k, clock):
    n = torch.library.get_ctx().new_dynamic_size()
    return last.new_empty((n,), dtype=torch.int64)


def row_cache_translate_(row_slot: torch.Tensor, rows: torch.Tensor, last: torch.Tensor, dirty: torch.Tensor,
                         clock: int, mark: bool, write: bool) -> torch.Tensor:
    """The cached_ssd row cache's translation of an access (csrc/optim/rows_floor.cpp,
    backend/row_cache.py): ``slots[i] = row_slot[rows[i]]`` (-1 where the row is not cached) and,
    for every cached row, ``last[slot] = clock`` when ``mark`` and ``dirty[slot] = True`` when
    ``write``, in one pass over ``rows``.

    Args:
        row_slot: int32 ``[T]``, the cache slot of every file row (-1: not cached).
        rows: int64 ``[N]`` file rows in ``[0, T)`` (any order, duplicates fine).
        last: int32 ``[S]`` per cache slot (updated in place).
        dirty: bool ``[S]`` per cache slot (updated in place).
        clock: the access's number, in ``[1, 2^31)``.

    Returns:
        int64 ``[N]`` cache slots.
    """
    _host_only("row_cache_translate_", row_slot, rows, last, dirty)
    return torch.ops.recis_compat.row_cache_translate_(row_slot, rows, last, dirty, int(clock), bool(mark),
                                                       bool(write))


@torch.library.register_fake("recis_compat::row_cache_mark_")
def _row_cache_mark_fake(slots, last, dirty, clock, mark, write):
    return None


def row_cache_mark_(slots: torch.Tensor, last: torch.Tensor, dirty: torch.Tensor, clock: int, mark: bool,
                    write: bool) -> None:
    """The marks of :func:`row_cache_translate_` for slots already translated
    (csrc/optim/rows_floor.cpp): for every slot ``s >= 0`` of ``slots`` (-1, a row not cached,
    is skipped), ``last[s] = clock`` when ``mark`` and ``dirty[s] = True`` when ``write``, in one
    pass (the cached_ssd row cache's access that reuses the last translation, backend/row_cache.py).

    Args:
        slots: int64 ``[N]`` cache slots (``< len(last)``; any order, duplicates fine).
        last: int32 ``[S]`` per cache slot (updated in place).
        dirty: bool ``[S]`` per cache slot (updated in place).
        clock: the access's number, in ``[1, 2^31)``.
    """
    _host_only("row_cache_mark_", slots, last, dirty)
    torch.ops.recis_compat.row_cache_mark_(slots, last, dirty, int(clock), bool(mark), bool(write))


def row_cache_sweep_(last: torch.Tensor, hand: int, used: int, k: int, clock: int) -> torch.Tensor:
    """Up to ``k`` victim slots of the cached_ssd row cache's clock sweep (csrc/optim/rows_floor.cpp):
    from slot ``hand`` over slots ``[0, used)``, at most two turns; ``last[s] == 0`` is a victim
    (then ``last[s] = clock``), ``last[s] == clock`` (the running access) is kept, any other value
    is cleared to 0 (its second chance).

    Args:
        last: int32 ``[S]`` per cache slot (updated in place).

    Returns:
        int64 ``[<= k]`` victim slots in sweep order.
    """
    _host_only("row_cache_sweep_", last)
    return torch.ops.recis_compat.row_cache_sweep_(last, int(hand), int(used), int(k), int(clock))
