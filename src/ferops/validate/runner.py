"""Run the expectation suites with Great Expectations and summarise the results.

One in-memory GX context per run, a Data Docs site written where the stage asks, and a
deterministic JSON-ready summary (no run ids, timestamps or absolute paths).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferops.validate.config import ValidationSettings
from ferops.validate.files import CKPLUS_DIR, JAFFE_DIR, RawFiles, image_table, read_csvs
from ferops.validate.suites import CRITICAL, WARNING, Table, derived_tables, file_tables
from ferops.validate.tables import derive_tables

logger = logging.getLogger(__name__)

DOCS_SITE = "ferops_validation"
# Offending values longer than this (a whole pixel string is ~8 kB) are shortened in the summary.
_MAX_VALUE_CHARS = 60


def _plain(value: Any) -> Any:
    """Make a GX result value JSON-friendly, short and stable."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
        return f"{value[:_MAX_VALUE_CHARS]}... ({len(value)} chars)"
    return value


def _index_values(index_list: list[Any], index_columns: Sequence[str]) -> list[Any]:
    if len(index_columns) == 1:
        name = index_columns[0]
        return [item.get(name) if isinstance(item, Mapping) else item for item in index_list]
    return list(index_list)


def _exception_message(info: Any) -> str | None:
    """The first exception message in a GX result's exception_info (flat or per metric)."""
    if not isinstance(info, Mapping):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for item in info.values():
        if isinstance(item, Mapping) and item.get("raised_exception"):
            return str(item.get("exception_message"))
    return None


def _expected_value(kwargs: Mapping[str, Any]) -> Any:
    """What a table-level expectation expects: its ``value``, or ``"min..max"`` bounds."""
    if kwargs.get("column") is not None or kwargs.get("column_A") is not None:
        return None
    if kwargs.get("value") is not None:
        return _plain(kwargs["value"])
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and low == high:
        return _plain(low)
    if low is not None or high is not None:
        return f"{'' if low is None else _plain(low)}..{'' if high is None else _plain(high)}"
    return None


def _summarise_result(result: Any, table: Table, sample_size: int) -> dict[str, Any]:
    config = result.expectation_config
    details = dict(result.result or {})
    pair = [config.kwargs[k] for k in ("column_A", "column_B") if k in config.kwargs]
    entry: dict[str, Any] = {
        "check": config.meta["check"],
        "table": table.name,
        "severity": config.meta["severity"],
        "expectation": config.type,
        "column": config.kwargs.get("column") or ", ".join(pair) or None,
        "description": config.description,
        "success": bool(result.success),
    }
    for key in ("element_count", "unexpected_count", "unexpected_percent", "observed_value"):
        if details.get(key) is not None:
            entry[key] = _plain(details[key])
    expected = _expected_value(config.kwargs)
    if not result.success and "observed_value" in entry and expected is not None:
        # A failed count says what it should have been (only on failure, so that a passing
        # run's summary stays as it was).
        entry["expected_value"] = expected
    if "partial_unexpected_list" in details:
        entry["unexpected_values"] = _plain(details["partial_unexpected_list"][:sample_size])
    if "partial_unexpected_index_list" in details:
        rows = _index_values(details["partial_unexpected_index_list"], table.index_columns)
        entry["unexpected_rows"] = _plain(rows[:sample_size])
    if "partial_missing_list" in details:
        # Set expectations list expected values that were not found (e.g. a missing folder).
        entry["missing_values"] = _plain(details["partial_missing_list"][:sample_size])
    message = _exception_message(result.exception_info)
    if message:
        entry["exception"] = _plain(message)
    return entry


class Validation:
    """One GX run: an in-memory context, a pandas data source, and a Data Docs site.

    Each table becomes a data asset with a whole-dataframe batch definition, one expectation
    suite and validation definition per severity, and a checkpoint that runs them.

    Args:
        docs_dir: Directory to write the Data Docs site into (None: no docs).
        sample_size: Offending values/rows to report per expectation.
    """

    def __init__(self, docs_dir: Path | None, sample_size: int = 5) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.docs_dir = docs_dir
        self.sample_size = sample_size
        self.datasets: dict[str, dict[str, Any]] = {}
        project = DataContextConfig(
            # No default temporary docs site: the only site is the one written to docs_dir.
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self.context = gx.get_context(mode="ephemeral", project_config=project)
        if docs_dir is not None:
            self.context.add_data_docs_site(
                site_name=DOCS_SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    # No "how to" buttons linking to GX tutorials: this is a report.
                    "show_how_to_buttons": False,
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(Path(docs_dir).resolve()),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        self.source = self.context.data_sources.add_pandas(name="raw")

    def validate(self, table: Table) -> None:
        """Run a table's suites through a checkpoint and add the results to the summary.

        Args:
            table: The table and its expectations.
        """
        import great_expectations as gx

        logger.debug("validating %s (%d rows)", table.name, len(table.frame))
        asset = self.source.add_dataframe_asset(name=table.name)
        batch = asset.add_batch_definition_whole_dataframe(name=f"{table.name} (whole table)")
        definitions = []
        for severity in (CRITICAL, WARNING):
            expectations = [e for e in table.expectations if e.meta["severity"] == severity]
            if not expectations:
                continue
            suite = self.context.suites.add(gx.ExpectationSuite(name=f"{table.name}.{severity}"))
            for expectation in expectations:
                suite.add_expectation(expectation)
            definitions.append(self.context.validation_definitions.add(
                gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
            ))
        result_format: dict[str, Any] = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": self.sample_size,
        }
        if table.index_columns:
            result_format["unexpected_index_column_names"] = list(table.index_columns)
        checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=table.name, validation_definitions=definitions, result_format=result_format
        ))
        outcome = checkpoint.run(batch_parameters={"dataframe": table.frame})
        results = [r for suite in outcome.run_results.values() for r in suite.results]
        # Report in the order the expectations were declared, whatever order GX returns.
        order = {e.meta["check"]: i for i, e in enumerate(table.expectations)}
        results.sort(key=lambda r: order[r.expectation_config.meta["check"]])

        dataset = self.datasets.setdefault(table.dataset, {
            "success": True, "critical_failures": [], "warnings": {}, "tables": {},
            "expectations": [],
        })
        dataset["tables"][table.name] = {"rows": len(table.frame), "row_index": table.row_index}
        for result in results:
            entry = _summarise_result(result, table, self.sample_size)
            dataset["expectations"].append(entry)
            if entry["success"]:
                continue
            if entry["severity"] == CRITICAL:
                dataset["success"] = False
                dataset["critical_failures"].append(f"{table.name}.{entry['check']}")
            else:
                # Rows flagged (1 for a failed table-level expectation).
                dataset["warnings"][entry["check"]] = int(entry.get("unexpected_count") or 1)

    def build_docs(self) -> None:
        """Write the Data Docs site (expectation suites and validation results)."""
        if self.docs_dir is not None:
            self.context.build_data_docs(site_names=[DOCS_SITE])

    def summary(self) -> dict[str, Any]:
        """The deterministic summary of everything validated so far.

        Returns:
            Overall ``success``, ``critical_failures`` (``dataset/table.check``),
            ``warning_count`` (warning checks that flagged something) and, per dataset, its
            ``success``, ``critical_failures``, ``warnings`` (check to number of flagged rows),
            ``tables`` (rows and row-index convention) and ``expectations`` (one entry each).
        """
        failures = [
            f"{name}/{label}"
            for name, dataset in self.datasets.items()
            for label in dataset["critical_failures"]
        ]
        return {
            "success": not failures,
            "critical_failures": failures,
            "warning_count": sum(len(d["warnings"]) for d in self.datasets.values()),
            "datasets": self.datasets,
        }


def validate_raw(raw_dir: Path, settings: ValidationSettings, docs_dir: Path | None
                 ) -> dict[str, Any]:
    """Validate the whole raw-data directory (FER2013, FER+, CK+, JAFFE).

    Args:
        raw_dir: The raw-data directory written by the download stage.
        settings: Validation settings (see :func:`ferops.validate.validate_config`).
        docs_dir: Directory to write the Data Docs site into (None: no docs).

    Returns:
        The summary (see :meth:`Validation.summary`).

    Raises:
        DataError: A dataset file or directory is missing or unreadable.
    """
    raw_dir = Path(raw_dir)
    # Worker threads overlap the slow parts: pyarrow reads the CSVs while GX is imported (pure
    # Python, ~5 s), and the derived tables are computed while GX validates the files (mostly in
    # pyarrow and numpy, which release the GIL). Deriving during the import was tried: both
    # then fight for the GIL and the whole run gets slower.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        reading = pool.submit(read_csvs, raw_dir)
        validation = Validation(docs_dir, settings.params.sample_size)
        fer2013, ferplus = reading.result()
        deriving = pool.submit(derive_tables, fer2013, ferplus, settings)
        ckplus = image_table(raw_dir / CKPLUS_DIR, raw_dir)
        jaffe = image_table(raw_dir / JAFFE_DIR, raw_dir)
        for table in file_tables(RawFiles(fer2013, ferplus, ckplus, jaffe), settings):
            validation.validate(table)
        for table in derived_tables(deriving.result(), settings):
            validation.validate(table)
    validation.build_docs()
    return validation.summary()


def summary_lines(summary: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Short human-readable lines for the log: critical failures and warnings.

    Args:
        summary: A summary from :func:`validate_raw`.

    Returns:
        ``(failures, warnings)``, one line per failed expectation.
    """
    failures, warns = [], []
    for name, dataset in summary["datasets"].items():
        row_index = {t: info["row_index"] for t, info in dataset["tables"].items()}
        for entry in dataset["expectations"]:
            if entry["success"]:
                continue
            where = f" column {entry['column']}" if entry.get("column") else ""
            parts = [f"{name}: {entry['severity']} {entry['table']}.{entry['check']} "
                     f"({entry['expectation']}{where}) failed"]
            if "unexpected_count" in entry:
                parts.append(f"{entry['unexpected_count']} of {entry.get('element_count')} "
                             "values unexpected")
            if entry.get("unexpected_rows"):
                parts.append(f"rows ({row_index[entry['table']]}): {entry['unexpected_rows']}")
            if entry.get("unexpected_values"):
                parts.append(f"values: {entry['unexpected_values']}")
            if entry.get("missing_values"):
                parts.append(f"missing: {entry['missing_values']}")
            if "observed_value" in entry:
                expected = entry.get("expected_value")
                parts.append(f"observed: {entry['observed_value']}"
                             + (f" (expected {expected})" if expected is not None else ""))
            if entry.get("exception"):
                parts.append(f"error: {entry['exception']}")
            (failures if entry["severity"] == CRITICAL else warns).append("; ".join(parts))
    return failures, warns
