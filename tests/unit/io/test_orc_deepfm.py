"""The deepfm data through OrcDataset: the batch structure RecIS scripts rely on."""
import torch

from recis_compat.io.orc_dataset import OrcDataset
from recis_compat.ragged.tensor import RaggedTensor


def test_deepfm_batches(deepfm_dir):
    seen = []

    def transform_batch(batch_list):  # a single callable, as the deepfm example passes
        seen.append(len(batch_list))
        return batch_list[0]

    ds = OrcDataset(1000, read_threads_num=2, prefetch=1, drop_remainder=True,
                    transform_fn=transform_batch, save_interval=1000, dtype=torch.float32)
    ds.add_paths([str(deepfm_dir)])
    ds.fixedlen_feature("label", [0.0])
    for i in range(1, 14):
        ds.varlen_feature(f"i{i}")
    for i in range(1, 27):
        ds.varlen_feature(f"c{i}")
    it = iter(ds)
    rows = 0
    while True:
        is_end, batch = next(it)
        if is_end:
            break
        label = batch["label"]
        assert label.shape == (1000, 1) and label.dtype == torch.float32
        assert set(label.unique().tolist()) <= {0.0, 1.0}
        for i in range(1, 27):
            c = batch[f"c{i}"]
            assert isinstance(c, RaggedTensor) and c.values().dtype == torch.int64
            assert c.offsets()[0].dtype == torch.int32 and c.offsets()[0].shape == (1001,)
        i1 = batch["i1"]
        assert i1.values().dtype == torch.float32 and i1.offsets()[0].shape == (1001,)
        rows += label.shape[0]
    assert rows == 80000 and set(seen) == {1}
