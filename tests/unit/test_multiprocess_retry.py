"""The torchrun retry helper (tests/multiprocess_retry.py, fixture run_multiprocess): one retry on the known native gloo abort, with
the launch's output directories removed first (a retry must not resume the first launch's
checkpoint), and no retry on any other failure."""
import sys


def _script(tmp_path, marker_name: str, stderr_text: str) -> list[str]:
    """A command that fails with ``stderr_text`` the first time (leaving a file in ``out``) and
    succeeds the second time, printing whether ``out`` still held the first launch's file."""
    code = f"""
import pathlib, sys
out = pathlib.Path({str(tmp_path / 'out')!r}); marker = pathlib.Path({str(tmp_path / marker_name)!r})
if not marker.exists():
    out.mkdir(exist_ok=True); (out / "ckpt_2").write_text("x"); marker.write_text("1")
    sys.stderr.write({stderr_text!r}); sys.exit(134)
print("left-over" if (out / "ckpt_2").exists() else "clean")
"""
    return [sys.executable, "-c", code]


def test_retry_on_known_abort_starts_from_clean_output(tmp_path, run_multiprocess):
    proc = run_multiprocess(_script(tmp_path, "m1", "terminate called without an active exception\n"),
                            fresh=[tmp_path / "out"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "clean"


def test_no_retry_on_other_failures(tmp_path, run_multiprocess):
    proc = run_multiprocess(_script(tmp_path, "m2", "ValueError: table 'x'\n"), fresh=[tmp_path / "out"],
                            capture_output=True, text=True)
    assert proc.returncode == 134 and (tmp_path / "out" / "ckpt_2").exists()
