"""EmbeddingEngine under torchrun exchanges in RecIS's order (issue 16 item 4): every lookup
group's id exchange is issued before any is waited on, every group's rows are in flight before
the first is pooled; the outputs equal a single-process engine's.

``workers/exchange_order.py`` logs every all-to-all issue and wait of ``backend/exchange.py``
during one forward (three groups) and backward on 2 ranks. With one exchange per group
(``grouped_exchange = False``) that is counts, ids and rows per group and one gradient
all-to-all per group in backward; with the grouped exchange (the default,
``backend/grouped_exchange.py``) one of each for all three groups.
"""
from __future__ import annotations

import pathlib
import sys

import pytest
import torch

from torchrun_launch import run_worker_json  # tests/torchrun_launch.py

pytestmark = pytest.mark.distributed

WORKER = pathlib.Path(__file__).parent / "workers" / "exchange_order.py"
GROUPS = 3


@pytest.mark.parametrize("exchange,per_kind", [("per-group", GROUPS), ("grouped", 1)])
def test_every_group_exchange_is_issued_before_any_wait_and_outputs_equal_one_process(tmp_path, exchange,
                                                                                     per_kind):
    res = run_worker_json(WORKER, tmp_path, "order.json", "--exchange", exchange)
    log = [tuple(e) for e in res["forward_log"]]
    issues = [e for e in log if e[0] == "issue"]
    kinds = [e[2] for e in issues]
    assert kinds == ["counts"] * per_kind + ["ids"] * per_kind + ["rows"] * per_kind, kinds
    assert all(e[3] for e in issues)                                  # forward: all asynchronous
    position = {("issue", e[1]): i for i, e in enumerate(log) if e[0] == "issue"}
    waits = {e[1]: i for i, e in enumerate(log) if e[0] == "wait"}
    assert sorted(waits) == list(range(3 * per_kind)), waits          # every work waited on once
    for kind_index in range(3):
        calls = range(kind_index * per_kind, (kind_index + 1) * per_kind)
        last_issue = max(position[("issue", c)] for c in calls)
        first_wait = min(waits[c] for c in calls)
        assert last_issue < first_wait, (kind_index, log)             # all issued before any wait
    backward = [tuple(e) for e in res["log"][len(log):]]
    assert [e[2] for e in backward] == ["rows"] * per_kind and not any(e[3] for e in backward)

    sys.path.insert(0, str(WORKER.parent))
    try:
        import exchange_order as worker
    finally:
        sys.path.pop(0)
    single = worker.engine()
    expected = single(worker.global_batch())
    for name in worker.FEATURES:
        torch.testing.assert_close(torch.tensor(res["out"][name]), expected[name].detach(), rtol=1e-6, atol=1e-6)
