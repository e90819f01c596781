"""``recis_compat.torchrec`` sits at the backend layer (docs/architecture.md): importing every
module of it loads nothing from the layers above (features, io, nn, optim, serialize, framework)."""
import subprocess
import sys


def test_torchrec_package_imports_nothing_above_backend():
    code = ("import sys\n"
            "import recis_compat.torchrec, recis_compat.torchrec.modules, recis_compat.torchrec.distributed\n"
            "import recis_compat.torchrec.optim, recis_compat.torchrec.checkpoint\n"
            "above = ('features', 'io', 'nn', 'optim', 'serialize', 'framework', 'benchmarks', 'cli')\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'recis_compat' and len(m.split('.')) > 1 "
            "and m.split('.')[1] in above)\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
