"""The torchrun launch helper (tests/torchrun_launch.py, fixture run_multiprocess) runs a launch
once: a native abort (the message the old helper retried on) is returned as a failure, with a
note pointing at tools/abort_soak.sh, and the launch's output is left as it was."""
import sys

from torchrun_launch import ABORT_NOTE, run_launch


def _script(tmp_path, marker_name: str, stderr_text: str) -> list[str]:
    """A command that fails with ``stderr_text`` the first time (leaving a file in ``out``) and
    succeeds the second time."""
    code = f"""
import pathlib, sys
out = pathlib.Path({str(tmp_path / 'out')!r}); marker = pathlib.Path({str(tmp_path / marker_name)!r})
if not marker.exists():
    out.mkdir(exist_ok=True); (out / "ckpt_2").write_text("x"); marker.write_text("1")
    sys.stderr.write({stderr_text!r}); sys.exit(134)
print("second launch")
"""
    return [sys.executable, "-c", code]


def test_native_abort_is_not_retried(tmp_path, run_multiprocess):
    proc = run_multiprocess(_script(tmp_path, "m1", "terminate called without an active exception\n"),
                            capture_output=True, text=True)
    assert proc.returncode == 134 and proc.stdout == ""
    assert proc.stderr.endswith(ABORT_NOTE) and "tools/abort_soak.sh" in proc.stderr
    assert (tmp_path / "out" / "ckpt_2").exists()


def test_other_failures_are_returned_as_is(tmp_path):
    proc = run_launch(_script(tmp_path, "m2", "ValueError: table 'x'\n"), capture_output=True, text=True)
    assert proc.returncode == 134 and proc.stderr == "ValueError: table 'x'\n"
    assert (tmp_path / "out" / "ckpt_2").exists()


def test_success_needs_no_second_launch(tmp_path):
    (tmp_path / "m3").write_text("1")
    proc = run_launch(_script(tmp_path, "m3", ""), capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "second launch"
