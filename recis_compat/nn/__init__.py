"""``recis.nn``: dynamic embedding tables (RecIS 1.0; see COMPATIBILITY.md)."""
from recis_compat.nn.modules.embedding import DynamicEmbedding, EmbeddingOption
from recis_compat.nn.modules.embedding_engine import EmbeddingEngine
from recis_compat.nn.modules.hashtable import HashTable

__all__ = ["DynamicEmbedding", "EmbeddingOption", "EmbeddingEngine", "HashTable"]
