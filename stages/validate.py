"""DVC stage `validate`: check the raw datasets with Great Expectations.

Usage: python stages/validate.py --raw data/raw --docs reports/validation
       --summary reports/validation.json

Writes a Data Docs site (--docs) and a deterministic JSON summary (--summary). A failed critical
expectation fails the stage and leaves the previous docs and summary untouched.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ferops.config import BaseConfig, build
from ferops.errors import DataError
from ferops.io import atomic_directory, write_json
from ferops.runtime import configure_logging, read_params, run_stage
from ferops.validate import summary_lines, validate_config, validate_raw

logger = logging.getLogger("ferops.stages.validate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", required=True, help="raw-data directory (download stage output)")
    parser.add_argument("--docs", required=True, help="Data Docs directory to (re)create")
    parser.add_argument("--summary", required=True, help="JSON summary of the validation")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        params = read_params(args.params, "validate", "base")
        base = build(BaseConfig, params["base"], "base")
        settings = validate_config(params["validate"], base.classes, base.image_size)
        # The docs are built in a temporary directory that replaces --docs only on success.
        with atomic_directory(args.docs) as temp_docs:
            summary = validate_raw(Path(args.raw), settings, temp_docs)
            failures, warnings = summary_lines(summary)
            for line in warnings:
                logger.warning("%s", line)
            for line in failures:
                logger.error("%s", line)
            if failures:
                raise DataError(
                    f"{len(failures)} critical expectation(s) failed: "
                    + ", ".join(summary["critical_failures"])
                )
        write_json(args.summary, summary)

    return run_stage("validate", body)


if __name__ == "__main__":
    raise SystemExit(main())
