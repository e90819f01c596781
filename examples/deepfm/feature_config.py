"""Columns of the deepfm data (Criteo-style): 13 numeric ``i1..i13``, 26 categorical ``c1..c26``.

Every categorical column feeds two embedded features: ``<c>_emb`` (dim ``EMB_DIM``, second-order
FM + DNN input) and ``<c>_bias`` (dim 1, first-order FM term); each is its own logical table.
"""
NUMERIC = [f"i{i}" for i in range(1, 14)]
CATEGORICAL = [f"c{i}" for i in range(1, 27)]
EMB_DIM = 8

FEATURE_CONFIG = ([{"name": n, "type": "numeric"} for n in NUMERIC]
                  + [{"name": c, "type": "categorical", "emb_dim": EMB_DIM} for c in CATEGORICAL])
