"""DVC stage `download`: fetch and verify the datasets into the raw-data directory.

Usage: python stages/download.py --out data/raw --report reports/download.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ferops.download import DownloadConfig, download_all, mirror_locations
from ferops.io import atomic_directory, scratch_directory, write_json
from ferops.runtime import configure_logging, read_configs, run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="raw-data directory to (re)create")
    parser.add_argument("--report", required=True, help="JSON provenance report")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        config = read_configs(args.params, download=DownloadConfig)["download"]
        root = Path(args.params).resolve().parent
        locations = mirror_locations(os.environ.get("FEROPS_DATA_MIRROR"), config.mirror, root)
        with atomic_directory(args.out) as temp_out, scratch_directory(args.out) as scratch:
            report = download_all(config.specs, locations, temp_out, scratch)
        write_json(args.report, report)

    return run_stage("download", body)


if __name__ == "__main__":
    raise SystemExit(main())
