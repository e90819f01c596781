"""The four behaviour-sequence features of the seq2seq example.

Each column is a two-level list: one behaviour sequence per row, each step a list of values.
``item_id`` / ``cate_id`` hold int64 ids (used as they are: ``hash_bucket_size`` only matters for
string columns); ``behavior_id`` / ``timestamp`` hold strings that the reader hashes with
MurmurHash64A (``hash_bucket_size`` 0: keep the 63-bit hash; > 0: hash modulo the size).
``emb_dim`` and ``SEQ_LEN`` are RecIS's sizes; the runner scales them with ``ModelConfig``.
"""

SAMPLE_ID = "user_id"       # written by make_data.py, not read by the model
SEQ_LEN = 1024
FEATURE_CONFIG = [
    {"name": "item_id", "emb_dim": 128, "hash_bucket_size": 2048000, "shard_name": "item_id"},
    {"name": "cate_id", "emb_dim": 128, "hash_bucket_size": 2048, "shard_name": "cate_id"},
    {"name": "behavior_id", "emb_dim": 128, "hash_type": "murmur", "hash_bucket_size": 0,
     "shard_name": "behavior_id"},
    {"name": "timestamp", "emb_dim": 128, "hash_type": "murmur", "hash_bucket_size": 2048000,
     "shard_name": "timestamp"},
]
