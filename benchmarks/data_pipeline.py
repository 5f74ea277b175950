"""Wall time and peak memory of the data stages (download -> oversample) on the full data.

Runs in a temporary copy of this repository (a fresh git repo, as a user's clone would be):
1. each stage script on its own, timing it and reading its peak RSS;
2. a cold `dvc repro` of the four stages (DVC overhead included);
3. a no-op `dvc repro` and `dvc status` when nothing changed.

Targets on a 2-core machine: <= 60 s cold for the four stages, peak RSS <= 3 GiB, no-op
`dvc repro` <= 3 s.

Usage: python benchmarks/data_pipeline.py [--mirror ../shared/datasets]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("download", "validate", "prepare", "oversample")


def project_copy(target: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith(("reports/", "dvc.lock")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run(["git", "add", "-A"], cwd=target, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "b"],
                   cwd=target, check=True)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run a command; return (seconds, peak RSS in GiB of it or any of its children)."""
    # Each measurement runs in a fresh child so RUSAGE_CHILDREN's maximum is its own.
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "elapsed = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(f'{elapsed} {rss}', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, *command], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = result.stderr.strip().splitlines()[-1]
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    seconds, rss_kib = last.split()
    return float(seconds), int(rss_kib) / 2**20


def stage_commands(project: Path) -> dict[str, list[str]]:
    """The stage commands exactly as dvc.yaml declares them (vars substituted)."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    variables = {}
    for entry in spec.get("vars", []):
        for key, values in entry.items():
            for name, value in values.items():
                variables[f"${{{key}.{name}}}"] = value
    commands = {}
    for name in STAGES:
        command = spec["stages"][name]["cmd"]
        for token, value in variables.items():
            command = command.replace(token, value)
        commands[name] = [sys.executable if part == "python" else part for part in command.split()]
    return commands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default=str(ROOT.parent / "shared" / "datasets"))
    args = parser.parse_args()
    env = dict(os.environ, FEROPS_DATA_MIRROR=str(Path(args.mirror).resolve()), TQDM_DISABLE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    dvc = str(Path(sys.executable).parent / "dvc")
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="ferops-bench-") as temp:
        project = Path(temp)
        project_copy(project)
        print("\nstage scripts, run one after another (cold):")
        total = 0.0
        peak = 0.0
        for name, command in stage_commands(project).items():
            seconds, rss = timed(command, project, env)
            total, peak = total + seconds, max(peak, rss)
            print(f"  {name:<11} {seconds:6.1f} s   peak RSS {rss:5.2f} GiB")
        print(f"  {'all four':<11} {total:6.1f} s   peak RSS {peak:5.2f} GiB   (target <= 60 s, <= 3 GiB)")

        for path in ("data", "reports"):
            shutil.rmtree(project / path, ignore_errors=True)
        seconds, rss = timed([dvc, "repro"], project, env)
        print(f"\ncold `dvc repro` (4 stages + DVC hashing/caching): {seconds:.1f} s, "
              f"peak RSS {rss:.2f} GiB")
        for label, command in (("no-op `dvc repro`", [dvc, "repro"]),
                               ("`dvc status`", [dvc, "status"])):
            runs = [timed(command, project, env)[0] for _ in range(3)]
            print(f"{label}: median {sorted(runs)[1]:.2f} s over 3 runs (target <= 3 s)")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    raise SystemExit(main())
