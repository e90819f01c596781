"""AUROC and Gauc against RecIS's test vectors and brute-force references."""
import numpy as np
import pytest
import torch


def brute_counts(p, l, thr):
    tp = torch.stack([((p > t) & (l > 0)).sum() for t in thr])
    fp = torch.stack([((p > t) & (l == 0)).sum() for t in thr])
    return tp, fp, (l == 0).sum() - fp, (l > 0).sum() - tp


def test_auroc_contract_vector_and_recis_import():
    from recis.metrics.auroc import AUROC
    labels = torch.tensor([0, 0, 1, 0, 0, 0, 1, 0, 1, 1.])
    preds = torch.tensor([.1, .2, .3, .4, .4, .5, .6, .7, .8, .9])
    assert float(AUROC(num_thresholds=200)(preds, labels)) == pytest.approx(0.7917, abs=1e-4)


def test_auroc_counts_match_brute_force_with_ties_on_thresholds():
    from recis_compat.metrics import AUROC
    m = AUROC(11)
    g = torch.Generator().manual_seed(0)
    preds = torch.cat([torch.rand(500, generator=g), m.thresholds[1:-1].clone(), torch.tensor([0.0, 1.0])])
    labels = (torch.rand(preds.numel(), generator=g) > 0.6).float()
    got = m._confusion_matrix_at_thresholds(preds, labels)
    for a, b in zip(got, brute_counts(preds, labels, m.thresholds)):
        assert torch.equal(a, b)


def test_auroc_accumulates_and_resets_and_is_in_state_dict():
    from recis_compat.metrics import AUROC
    m = AUROC(50)
    g = torch.Generator().manual_seed(1)
    p1, p2 = torch.rand(100, generator=g), torch.rand(80, generator=g)
    l1, l2 = (torch.rand(100, generator=g) > .5).float(), (torch.rand(80, generator=g) > .5).float()
    m.update(p1, l1)
    m.update(p2, l2)
    assert float(m.compute()) == pytest.approx(float(m(torch.cat([p1, p2]), torch.cat([l1, l2]))))
    assert set(m.state_dict()) == {"tp", "fp", "tn", "fn"}
    m.reset()
    assert int(m.tp.sum()) == 0


def test_auroc_edge_cases_and_bad_input():
    from recis_compat.metrics import AUROC
    m = AUROC(200)
    p = torch.tensor([.2, .7])
    assert float(m(p, torch.tensor([0., 0.]))) == pytest.approx(1.0, abs=1e-3)
    assert float(m(p, torch.tensor([1., 1.]))) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        m(torch.tensor([1.5]), torch.tensor([1.]))
    with pytest.raises(AssertionError):
        AUROC(2)


def ref_gauc(labels, preds, ind, skip_edges):
    runs, start = [], 0
    for i in range(1, len(ind) + 1):
        if i == len(ind) or ind[i] != ind[i - 1]:
            runs.append((start, i))
            start = i
    if skip_edges:
        runs = runs[1:-1]
    num = den = 0.0
    for s, e in runs:
        l, p = labels[s:e], preds[s:e]
        order = np.argsort(p, kind="stable")
        l = l[order]
        clicks, n = l.sum(), len(l)
        if abs(clicks - n) < 1e-3 or abs((n - clicks) - n) < 1e-3:
            continue
        tp = fp = area = 0.0
        for x in l:
            ntp, nfp = tp + x, fp + (1 - x)
            area += (nfp - fp) * (ntp + tp)
            tp, fp = ntp, nfp
        num += (1 - area / (2 * clicks * (n - clicks))) * n
        den += n
    return num / max(den, 1)


def test_gauc_contract_vector():
    from recis.metrics.gauc import Gauc
    out = Gauc()(torch.tensor([1, 0, 1, 0, 1.]), torch.tensor([.1, .2, .3, .4, .5]),
                 torch.tensor([0, 1, 1, 1, 2]))
    assert out == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("skip_edges", [True, False])
def test_gauc_random_against_reference(skip_edges):
    from recis_compat.metrics import GAUC
    rng = np.random.default_rng(3)
    ind = np.repeat(np.arange(60), rng.integers(1, 12, size=60))
    labels = (rng.random(len(ind)) > 0.6).astype(np.float64)
    preds = rng.random(len(ind))
    g = GAUC(skip_edge_groups=skip_edges)
    batch, cum = g(torch.from_numpy(labels), torch.from_numpy(preds), torch.from_numpy(ind))
    assert batch == pytest.approx(ref_gauc(labels, preds, ind, skip_edges))
    batch2, cum2 = g(torch.from_numpy(labels[:50]), torch.from_numpy(preds[:50]), torch.from_numpy(ind[:50]))
    assert batch2 == pytest.approx(ref_gauc(labels[:50], preds[:50], ind[:50], skip_edges))


def test_gauc_two_column_inputs_and_errors():
    from recis_compat.metrics import Gauc
    lab = torch.tensor([1, 0, 1, 0, 1.])
    pred = torch.tensor([.1, .2, .3, .4, .5])
    two = lambda x: torch.stack([1 - x, x], 1)  # noqa: E731
    assert Gauc()(two(lab), two(pred), torch.tensor([0, 1, 1, 1, 2]))[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same dtype"):
        Gauc()(lab, pred.double(), torch.tensor([0, 1, 1, 1, 2]))
    with pytest.raises(TypeError, match="floating point"):
        Gauc()(lab.long(), pred, torch.tensor([0, 1, 1, 1, 2]))


def test_global_metrics_dict():
    from recis.framework.metrics import add_metric, get_global_metrics
    add_metric("auc_test_key", torch.tensor(0.5))
    assert get_global_metrics()["auc_test_key"] == 0.5
    assert get_global_metrics() is get_global_metrics()
