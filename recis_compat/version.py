"""Versions: recis-compat's own, and the RecIS API version it implements."""
__version__ = "0.1.0"
RECIS_API_VERSION = "1.0.0"
