"""recis-compat check-script: static listing of recis APIs and unsupported ones."""
import json
import subprocess
import sys
import textwrap

from recis_compat.tools.check_script import check_source

SCRIPT = textwrap.dedent("""
    import torch
    import recis
    from recis.io.orc_dataset import OrcDataset
    from recis.ragged.tensor import RaggedTensor as RT
    import recis.metrics.auroc as auroc_mod
    from recis.io.odps_dataset import OdpsDataset
    from recis.utils.logger import Logger, NoSuchThing

    def f():
        m = auroc_mod.AUROC(200)
        x = RT.from_dense(torch.zeros(2, 2))
        print(recis.__version__, recis.info.is_internal_enabled())
        return OrcDataset(16)
""")


def test_lists_and_resolves_usages():
    uses = {u.name: u for u in check_source(SCRIPT)}
    assert uses["recis.io.orc_dataset.OrcDataset"].supported
    assert uses["recis.ragged.tensor.RaggedTensor.from_dense"].supported
    assert uses["recis.metrics.auroc.AUROC"].supported
    assert uses["recis.__version__"].supported
    assert uses["recis.info.is_internal_enabled"].supported
    assert not uses["recis.io.odps_dataset.OdpsDataset"].supported
    assert "does not provide" in uses["recis.io.odps_dataset.OdpsDataset"].reason
    assert not uses["recis.utils.logger.NoSuchThing"].supported
    assert uses["recis.utils.logger.Logger"].lines == [8]


def test_cli_exit_code_and_json(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(SCRIPT)
    out = subprocess.run([sys.executable, "-m", "recis_compat.cli", "check-script", str(bad), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["unsupported"] == 2
    good = tmp_path / "good.py"
    good.write_text("from recis.ragged.tensor import RaggedTensor\nRaggedTensor.from_numpy\n")
    out = subprocess.run([sys.executable, "-m", "recis_compat.cli", "check-script", str(good)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 recis APIs used, 0 unsupported" in out.stdout
