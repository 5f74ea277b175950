"""DVC stage `params`: check every section of params.yaml before any other stage runs.

Usage: python stages/params.py --report reports/params.json

Every other stage is downstream of this one, so a misspelt key or a refused value stops
`dvc repro` / `dvc exp run` here, before DVC deletes any stage's previous outputs. The report
lists the sections checked (not their values), so a valid change does not rerun anything else.
"""

from __future__ import annotations

import argparse

from ferops.io import write_json
from ferops.runtime import configure_logging, read_all_params, run_stage
from ferops.sections import check_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--report", required=True, help="JSON list of the sections checked")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        configs = check_params(read_all_params(args.params), args.params)
        write_json(args.report, {"checked": sorted(configs), "result": "every section is valid"})

    return run_stage("params", body)


if __name__ == "__main__":
    raise SystemExit(main())
