"""recis.common (RecIS 1.0; see COMPATIBILITY.md): SingletonMeta, common_config, crypto_utils."""
import importlib.util
import json
import threading

import pytest

from recis_compat.common import common_config, crypto_utils
from recis_compat.common.singleton import SingletonMeta

HAS_CRYPTO = importlib.util.find_spec("Crypto") is not None


# ------------------------------------------------------------------------ SingletonMeta
def test_singleton_same_instance_first_args_win():
    class Registry(metaclass=SingletonMeta):
        def __init__(self, n=0):
            self.n = n

    a = Registry(1)
    b = Registry(2)
    assert a is b and b.n == 1


def test_singleton_per_class():
    class A(metaclass=SingletonMeta):
        pass

    class B(A):
        pass

    assert A() is A() and B() is B() and A() is not B()


def test_singleton_thread_safe():
    built = []

    class Slow(metaclass=SingletonMeta):
        def __init__(self):
            built.append(1)

    seen = []
    threads = [threading.Thread(target=lambda: seen.append(Slow())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and all(s is seen[0] for s in seen)


# ------------------------------------------------------------------------ common_config
@pytest.fixture
def fresh_config(monkeypatch):
    monkeypatch.setattr(common_config, "_CONFIG", {})
    return common_config


def test_set_config_without_path(fresh_config, capsys):
    assert fresh_config.set_config() == {}
    assert fresh_config.get_config() == {}
    assert fresh_config.get_config("a", default=5) == 5
    assert "Configuration" in capsys.readouterr().out


def test_set_config_json_and_transforms(fresh_config, tmp_path):
    cfg = {"odps": {"project": "${PROJ}", "tables": ["${T1}", "fixed", {"t": "${T1}"}]},
           "top": "${PROJ}", "n": 3}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = fresh_config.set_config(str(path), transforms={"${PROJ}": "p1", "${T1}": "tab"})
    assert out["odps"]["project"] == "p1" and out["top"] == "p1"
    assert out["odps"]["tables"] == ["tab", "fixed", {"t": "tab"}]
    assert fresh_config.get_config("odps", "project") == "p1"
    assert fresh_config.get_config("odps", "tables")[0] == "tab"
    assert fresh_config.get_config("n") == 3
    assert fresh_config.get_config("odps", "missing", default="d") == "d"
    assert fresh_config.get_config("n", "deeper", default=None) is None  # a non-dict level
    assert fresh_config.get_config() is out


def test_set_config_replaces_previous(fresh_config, tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"a": 1}')
    fresh_config.set_config(str(p))
    fresh_config.set_config()
    assert fresh_config.get_config("a") is None


def test_access_id_key_none_without_env(monkeypatch):
    for var in ("ENCODED_ODPS_ACCESS_ID", "ENCODED_ODPS_ACCESS_KEY",
                "XDL_AK_PRIVATE_KEY_INTERNAL"):
        monkeypatch.delenv(var, raising=False)
    assert common_config.get_access_id() is None
    assert common_config.get_access_key() is None
    monkeypatch.setenv("ENCODED_ODPS_ACCESS_ID", "abc")  # the private key is still missing
    assert common_config.get_access_id() is None


def test_access_id_key_decode_via_crypto_utils(monkeypatch):
    seen = []
    monkeypatch.setattr(crypto_utils, "decode",
                        lambda data, key, binary_code="utf-8": seen.append((data, key)) or "dec")
    monkeypatch.setenv("ENCODED_ODPS_ACCESS_ID", "enc-id")
    monkeypatch.setenv("ENCODED_ODPS_ACCESS_KEY", "enc-key")
    monkeypatch.setenv("XDL_AK_PRIVATE_KEY_INTERNAL", "pk")
    assert common_config.get_access_id() == "dec"
    assert common_config.get_access_key() == "dec"
    assert seen == [("enc-id", "pk"), ("enc-key", "pk")]


# ------------------------------------------------------------------------ crypto_utils
@pytest.mark.skipif(HAS_CRYPTO, reason="pycryptodome is installed")
def test_crypto_needs_pycryptodome():
    with pytest.raises(ImportError, match="pycryptodome"):
        crypto_utils.encode("x", "key")
    with pytest.raises(ImportError, match="pycryptodome"):
        crypto_utils.decode("eA==", "key")


@pytest.mark.skipif(HAS_CRYPTO, reason="pycryptodome is installed")
def test_access_id_with_env_but_no_pycryptodome(monkeypatch):
    monkeypatch.setenv("ENCODED_ODPS_ACCESS_ID", "enc")
    monkeypatch.setenv("XDL_AK_PRIVATE_KEY_INTERNAL", "pk")
    with pytest.raises(ImportError, match="pycryptodome"):
        common_config.get_access_id()


@pytest.mark.skipif(not HAS_CRYPTO, reason="needs pycryptodome")
def test_crypto_roundtrip():
    from Crypto.PublicKey import RSA
    key = RSA.generate(1024)
    enc = crypto_utils.encode("secret", key.publickey().export_key().decode())
    assert crypto_utils.decode(enc, key.export_key().decode()) == "secret"


def test_common_package_exports_nothing():
    import recis_compat.common as pkg
    public = [n for n in vars(pkg) if not n.startswith("_")]
    assert set(public) <= {"common_config", "crypto_utils", "singleton"}  # submodules only
