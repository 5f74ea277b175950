"""DVC stage `download`: fetch and verify the datasets into the raw-data directory.

Usage: python stages/download.py --out data/raw --report reports/download.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from ferops.download import download_all, mirror_locations, parse_specs
from ferops.io import atomic_directory, write_json
from ferops.runtime import configure_logging, read_params, run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="raw-data directory to (re)create")
    parser.add_argument("--report", required=True, help="JSON provenance report")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        params = read_params(args.params, "download")["download"]
        specs = parse_specs(params["datasets"])
        root = Path(args.params).resolve().parent
        locations = mirror_locations(os.environ.get("FEROPS_DATA_MIRROR"), params.get("mirror"), root)
        out = Path(args.out)
        with atomic_directory(out) as temp_out, tempfile.TemporaryDirectory(
            prefix=".download-", dir=out.parent
        ) as scratch:
            report = download_all(specs, locations, temp_out, Path(scratch))
        write_json(args.report, report)

    return run_stage("download", body)


if __name__ == "__main__":
    raise SystemExit(main())
