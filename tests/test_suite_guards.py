"""The test command's own guards: a crashed worker or a hung test fails the run fast, by name.

Each test runs real pytest (with pytest-xdist and pytest-timeout) in a child process, configured
with this project's own ``[tool.pytest.ini_options]`` from pyproject.toml, over a few throwaway
test files: one that aborts the interpreter the way a native crash does, one that hangs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib

PASSING = "def test_one():\n    assert 1 + 1 == 2\n\n\ndef test_two():\n    assert 'a' < 'b'\n"
CRASHING = ("import os\n\n\ndef test_crashes_natively():\n"
            "    os.abort()  # SIGABRT, as glibc's heap check\n\n\n"
            "def test_after_the_crash():\n    assert True\n")
HANGING = "import time\n\n\ndef test_hangs():\n    time.sleep(3600)\n"


def project_ini_options(repo_root) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def run_pytest(tmp_path, repo_root, files: dict[str, str],
               *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    options = project_ini_options(repo_root)
    (tmp_path / "pytest.ini").write_text(
        f"[pytest]\naddopts = {options['addopts']}\ntimeout = {options['timeout']}\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *extra],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    return result, time.monotonic() - start


def test_the_suite_has_a_per_test_time_limit_and_no_worker_replacement(repo_root):
    options = project_ini_options(repo_root)
    assert "--max-worker-restart=0" in options["addopts"].split()
    assert 600 <= int(options["timeout"]) <= 1800


def test_a_crashed_worker_fails_the_run_at_once_and_names_the_test(tmp_path, repo_root):
    result, seconds = run_pytest(tmp_path, repo_root, {"test_a_passes.py": PASSING,
                                                       "test_b_crashes.py": CRASHING})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "crashed while running" in output and "test_b_crashes.py::test_crashes_natively" in output, \
        output[-3000:]
    assert seconds < 120, f"the run took {seconds:.0f} s after a worker crashed"


def test_a_hung_test_fails_by_name_within_its_time_limit(tmp_path, repo_root):
    # The project's limit (20 minutes) shortened to 5 s; everything else as configured.
    files = {"test_a_passes.py": PASSING, "test_c_hangs.py": HANGING}
    result, seconds = run_pytest(tmp_path, repo_root, files, "-o", "timeout=5")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "FAILED test_c_hangs.py::test_hangs" in output and "Timeout" in output, output[-3000:]
    assert "2 passed" in output
    assert seconds < 120

