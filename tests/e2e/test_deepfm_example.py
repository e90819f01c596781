"""The deepfm example: run.sh under torchrun (1 and 2 processes), and accuracy on the shared
Criteo-style data against a plain-PyTorch DeepFM trained the same way.

Accuracy protocol (docs/benchmarks.md): train one epoch on part-0..6 (batch 1000, lr as below), evaluate
AUC on part-7. The reference is the same network written with ``nn.EmbeddingBag`` tables over
contiguous re-mapped ids, initialised with the same numbers (its embedding rows are the per-id
initial values of our tables, its dense layers a copy of ours) and trained with plain-PyTorch
row-sparse Adam (``torch.optim.SparseAdam``) + AdamW on the same batches. Target: |ΔAUC| <= 0.003.
"""
from __future__ import annotations

import copy
import os
import pathlib
import subprocess
import sys

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "deepfm"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = "1"
    env["PY"] = sys.executable
    return env


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("deepfm") / "data"
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), "--out", str(d), "--files", "2", "--rows", "1200",
                    "--seed", "4"], check=True)
    return d


@pytest.mark.distributed
@pytest.mark.parametrize("world", [1, 2])
def test_run_sh_under_torchrun(tiny_data, tmp_path, world, run_multiprocess):
    env = _env()
    env.update(WORLD_SIZE=str(world), DATA=str(tiny_data), OUTPUT_DIR=str(tmp_path / "ckpt"), MASTER_PORT=str(_free_port()))
    proc = run_multiprocess(["bash", str(EXAMPLE / "run.sh"), "--batch_size=200", "--train_steps=4", "--log_steps=1",
                           "--gradient_accumulation_steps=2"], env=env, capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert log.count("<loss=") >= 4 * world
    assert "<auc=" in log
    assert (tmp_path / "ckpt" / "checkpoint").read_text().split() == ["ckpt_4"]


def _aucs(deepfm_dir, epochs=1, batch=1000):
    sys.path.insert(0, str(EXAMPLE))
    try:
        from dataset import IOArgs, get_dataset
        from deepfm_model import DeepFM, numeric_column
        from feature_config import CATEGORICAL, NUMERIC
    finally:
        sys.path.remove(str(EXAMPLE))
    from recis.metrics.auroc import AUROC
    from recis.nn.modules.hashtable import filter_out_sparse_param
    from recis.optim import SparseAdamW

    files = sorted(str(p) for p in pathlib.Path(deepfm_dir).glob("part-*.orc"))
    train_files, eval_files = files[:7], files[7:]
    io = IOArgs(data_paths=str(deepfm_dir), batch_size=batch, drop_remainder=False, thread_num=2)
    torch.manual_seed(42)
    ours = DeepFM()
    ref_dense = copy.deepcopy({k: v for k, v in ours.state_dict().items() if not k.startswith("embedding_engine")
                               and torch.is_tensor(v)})
    sparse_lr, dense_lr = 2e-3, 1e-3
    s_opt = SparseAdamW(filter_out_sparse_param(ours), lr=sparse_lr, weight_decay=0.0)
    d_opt = torch.optim.AdamW(ours.parameters(), lr=dense_lr)

    # the reference: same network, nn.EmbeddingBag tables over ids re-mapped to 0..V-1
    eng = ours.embedding_engine
    init_of = {}
    for fea in [c + s for c in CATEGORICAL for s in ("_emb", "_bias")]:
        ht = eng.table_of(fea)
        group = eng._coalesced_groups[ht]
        table = eng._ht[ht].hashtable
        init_of[fea] = (group.encode_id(fea), table)

    class Ref(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vocab = {f: {} for f in init_of}
            self.tables = torch.nn.ModuleDict()
            self.numeric_w = copy.deepcopy(ours.numeric_w)
            self.numeric_emb = torch.nn.Parameter(ours.numeric_emb.detach().clone())
            self.dnn = copy.deepcopy(ours.dnn)

        def prepare(self, batches):
            """Build every table up front: rows = our tables' initial values of each id."""
            from recis_compat.backend.children import encode_ids
            seen = {f: [] for f in init_of}
            for b in batches:
                for f in init_of:
                    for i in b[f].values().tolist():
                        if i not in self.vocab[f]:
                            self.vocab[f][i] = len(self.vocab[f])
                            seen[f].append(i)
            for f, (child, table) in init_of.items():
                ids = torch.tensor(seen[f], dtype=torch.int64)
                init = table._init_rows_for_ids(encode_ids(ids, child))
                bag = torch.nn.EmbeddingBag(len(ids), init.shape[1], mode="sum", sparse=True)
                bag.weight.data.copy_(init)
                self.tables[f] = bag

        def predict(self, b):
            bsz = b["label"].shape[0]
            def look(f):
                rt = b[f]
                idx = torch.tensor([self.vocab[f][i] for i in rt.values().tolist()], dtype=torch.int64)
                return self.tables[f](idx, rt.offsets()[-1].to(torch.int64)[:-1])
            numeric = torch.cat([numeric_column(b[n].to_dense(), bsz) for n in NUMERIC], 1)
            numeric = torch.log1p(numeric.clamp_min(0))
            emb = torch.stack([look(c + "_emb") for c in CATEGORICAL], 1)
            fields = torch.cat([emb, numeric.unsqueeze(2) * self.numeric_emb.unsqueeze(0)], 1)
            first = torch.cat([look(c + "_bias") for c in CATEGORICAL], 1).sum(1, keepdim=True) \
                + self.numeric_w(numeric)
            second = 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(1, keepdim=True)
            return torch.sigmoid(first + second + self.dnn(fields.flatten(1))), b["label"].reshape(bsz, 1)

    def batches(fs):
        for end, b in get_dataset(io, files=fs):
            if end:
                break
            yield b

    train = list(batches(train_files))
    evalb = list(batches(eval_files))
    ref = Ref()
    ref.prepare(train + evalb)
    r_sparse = torch.optim.SparseAdam(list(ref.tables.parameters()), lr=sparse_lr)
    r_dense = torch.optim.AdamW([p for n, p in ref.named_parameters() if not n.startswith("tables.")], lr=dense_lr)
    loss_fn = torch.nn.BCELoss()
    for _ in range(epochs):
        for b in train:
            for model, opts in ((ours, (s_opt, d_opt)), (ref, (r_sparse, r_dense))):
                for o in opts:
                    o.zero_grad()
                prob, label = model.predict(b)
                loss_fn(prob, label).backward()
                for o in opts:
                    o.step()

    def auc(model):
        m = AUROC(num_thresholds=200)
        model.eval()
        with torch.no_grad():
            for b in evalb:
                p, lab = model.predict(b)
                m.update(p, lab)
        return float(m.compute())
    return auc(ours), auc(ref), ref_dense


def test_deepfm_auc_matches_plain_pytorch(deepfm_dir):
    ours, ref, _ = _aucs(deepfm_dir)
    assert ours > 0.6, f"our DeepFM did not learn: AUC {ours:.4f}"
    assert abs(ours - ref) <= 0.003, f"AUC ours {ours:.4f} vs plain PyTorch {ref:.4f}"
