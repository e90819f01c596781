"""The `recis` import package aliases recis_compat; the CLI and extension load."""
import importlib
import subprocess
import sys

import pytest


def test_recis_top_level_exports():
    import recis
    assert recis.__version__ == "1.0.0"
    info = recis.get_build_info()
    assert set(info) >= {"version", "git", "build"}
    assert set(info["git"]) == {"branch", "commit_hash", "commit_hash_full", "commit_time",
                                "commit_author", "commit_message", "tag"}
    import recis.info
    assert recis.info.is_internal_enabled() == 0


def test_alias_is_the_same_module_object():
    import recis.info
    import recis_compat.info
    assert recis.info is recis_compat.info
    assert recis.info.__name__ == "recis_compat.info"


def test_internal_only_module_gives_clear_error():
    with pytest.raises(ModuleNotFoundError, match="recis-compat does not provide"):
        importlib.import_module("recis.io.odps_dataset")


def test_cli_doctor_reports_extension():
    out = subprocess.run([sys.executable, "-m", "recis_compat.cli", "doctor", "--json"],
                         capture_output=True, text=True, check=True).stdout
    import json
    info = json.loads(out)
    assert info["extension"]["loaded"] is True
    assert "hash_bytes" in info["extension"]["ops_cpu_only"] + info["extension"]["ops_with_cuda_kernel"]
    assert info["versions"]["torch"].startswith("2.13.0")
