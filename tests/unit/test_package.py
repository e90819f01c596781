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


def _clean_env():
    """The venv's own import setup: no PYTHONPATH (the editable install must provide the names)."""
    import os
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_column_io_imports_from_the_install_and_says_what_provides_it(tmp_path):
    # RecIS's install check is `import column_io`; run it as a user would, outside the repo
    code = ("import sys, column_io\n"
            "print(column_io.__provider__, column_io.__file__)\n"
            "print(repr(column_io))\n"
            "print(column_io.info()['native_ops'], 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=_clean_env())
    assert out.returncode == 0, out.stderr
    first, rep, last = out.stdout.splitlines()
    assert first.startswith("recis-compat ") and first.endswith("adapters/column_io/__init__.py")
    assert "provided by recis-compat" in rep and "pyarrow" in rep and "no native column_io ops" in rep
    assert last == "False False"      # no native ops claimed; the check stays light (no torch)


def test_column_io_does_not_pretend_to_have_native_ops():
    import column_io
    from recis_compat.version import __version__
    assert column_io.__version__ == __version__
    assert column_io.hash_types == ("farm", "murmur")
    assert column_io.reader.startswith("pyarrow ")
    with pytest.raises(AttributeError, match="does not provide RecIS's native column_io API.*OrcDataset"):
        column_io.OrcReader
    assert not hasattr(column_io, "dataset_ops")


@pytest.mark.parametrize("module", ["recis.tools.csv_to_orc", "recis_compat.tools.csv_to_orc"])
def test_python_m_csv_to_orc_converts(tmp_path, module):
    src = tmp_path / "in.csv"
    src.write_text("label,ids\n1,3;4\n0,5\n")
    out = subprocess.run([sys.executable, "-m", module, str(src), "-o", str(tmp_path / "orc"),
                          "--schema", "label:float,ids:list<int64>:;"],
                         capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "converted 2 rows" in out.stdout
    import pyarrow.orc as orc
    table = orc.read_table(str(tmp_path / "orc" / "part-00000.orc"))
    assert table.column("ids").to_pylist() == [[3, 4], [5]]


@pytest.mark.parametrize("module", ["recis.tools.csv_to_orc", "recis_compat.tools.csv_to_orc"])
def test_python_m_csv_to_orc_without_arguments_is_a_usage_error(tmp_path, module):
    out = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, cwd=tmp_path,
                         env=_clean_env())
    assert out.returncode == 2
    assert f"Usage: python -m {module}" in out.stderr and "Missing option" in out.stderr


def test_alias_loader_gives_the_target_code_and_source():
    import inspect

    import recis  # noqa: F401  (installs the alias finder)
    import recis_compat.tools.csv_to_orc as target
    spec = importlib.util.find_spec("recis.tools.csv_to_orc")
    assert spec.origin == target.__file__
    code = spec.loader.get_code("recis.tools.csv_to_orc")
    assert code.co_filename == target.__file__
    assert spec.loader.get_source("recis.tools.csv_to_orc") == inspect.getsource(target)
    assert spec.loader.is_package("recis.tools.csv_to_orc") is False
    from recis_compat._alias import AliasFinder
    pkg_spec = AliasFinder("recis", "recis_compat").find_spec("recis.tools")
    assert pkg_spec.loader.is_package("recis.tools") is True
    assert pkg_spec.submodule_search_locations is not None


def test_column_io_in_a_plain_install_layout(tmp_path):
    """``pip install .`` copies the packages setup.py lists (build_py): column_io lands beside
    recis and recis_compat and imports from there."""
    import pathlib
    repo = pathlib.Path(__file__).resolve().parents[2]
    lib = tmp_path / "lib"
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
                           cwd=repo, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert (lib / "column_io" / "__init__.py").is_file() and (lib / "recis" / "__init__.py").is_file()
    env = _clean_env()
    env["PYTHONPATH"] = str(lib)
    out = subprocess.run([sys.executable, "-c", "import column_io; print(column_io.__file__, column_io.__provider__)"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(lib / "column_io" / "__init__.py"), "recis-compat"]
