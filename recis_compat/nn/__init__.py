"""``recis.nn``: dynamic embedding tables (contract §1.4)."""
from recis_compat.nn.modules.embedding import DynamicEmbedding, EmbeddingOption
from recis_compat.nn.modules.embedding_engine import EmbeddingEngine
from recis_compat.nn.modules.hashtable import HashTable

__all__ = ["DynamicEmbedding", "EmbeddingOption", "EmbeddingEngine", "HashTable"]
