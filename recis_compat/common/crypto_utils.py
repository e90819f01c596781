"""``recis.common.crypto_utils``: RSA helpers used by RecIS's internal ODPS credentials.

RecIS implements them with pycryptodome, which recis-compat does not depend on. Importing this
module always works; calling :func:`encode` / :func:`decode` without pycryptodome raises an
``ImportError`` that names the package. With it installed, the scheme is RSA PKCS#1 v1.5 over
base64 text (``key``: a PEM string or bare base64 DER).
"""
from __future__ import annotations

import base64

__all__ = ["encode", "decode"]


def _crypto():
    try:
        from Crypto.Cipher import PKCS1_v1_5
        from Crypto.PublicKey import RSA
    except ImportError as e:
        raise ImportError(
            "recis.common.crypto_utils needs the 'pycryptodome' package, which recis-compat "
            "does not install; run `pip install pycryptodome` to use encode/decode.") from e
    return RSA, PKCS1_v1_5


def _import_key(rsa, key):
    if isinstance(key, bytes):
        key = key.decode("ascii")
    key = key.strip()
    if "-----BEGIN" in key:
        return rsa.import_key(key)
    return rsa.import_key(base64.b64decode(key))


def encode(data, key, binary_code: str = "utf-8") -> str:
    """Encrypt text ``data`` with the RSA (public) ``key``; returns base64 text."""
    rsa, pkcs = _crypto()
    raw = data.encode(binary_code) if isinstance(data, str) else bytes(data)
    return base64.b64encode(pkcs.new(_import_key(rsa, key)).encrypt(raw)).decode("ascii")


def decode(data, key, binary_code: str = "utf-8") -> str:
    """Decrypt base64 text ``data`` with the RSA private ``key``; returns text."""
    rsa, pkcs = _crypto()
    raw = base64.b64decode(data)
    plain = pkcs.new(_import_key(rsa, key)).decrypt(raw, None)
    if plain is None:
        raise ValueError("crypto_utils.decode: decryption failed (wrong key or corrupt data)")
    return plain.decode(binary_code)
