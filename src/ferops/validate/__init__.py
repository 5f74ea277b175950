"""Validate the raw datasets with Great Expectations (the library behind the `validate` stage).

Each dataset is turned into one or more pandas tables: the CSV files as read, tables of values
derived from them (pixel counts and statistics, duplicate links, per-split class shares), and
tables of image-file metadata for the image datasets. Every table is validated by GX against a
``critical`` suite (a failure makes the stage fail) and, where the data has known quirks, a
``warning`` suite (failures are reported and counted but never fail the stage).

Offending rows are named by the 0-based index of the CSV data row (the header line is not
counted, so row 0 is line 2 of the file), by the split name for the per-split table, and by the
file path relative to the raw-data directory for the image tables.

The package follows the steps of a run:

- :mod:`~ferops.validate.config`: the ``validate`` params schema;
- :mod:`~ferops.validate.files`: reading the raw files as text tables (the I/O);
- :mod:`~ferops.validate.tables`: the derived tables (pure functions; the file formats and the
  duplicate and leakage rules come from :mod:`ferops.fer2013`, :mod:`ferops.ferplus` and
  :mod:`ferops.cleaning`, as in the prepare stage);
- :mod:`~ferops.validate.suites`: the expectations per table;
- :mod:`~ferops.validate.runner`: the GX context, Data Docs and the summary.
"""

from ferops.validate.config import (
    ValidateConfig,
    ValidationSettings,
    class_share_problems,
    validate_config,
)
from ferops.validate.files import RawFiles, image_table, read_csvs
from ferops.validate.runner import Validation, summary_lines, validate_raw
from ferops.validate.suites import CRITICAL, WARNING, Table, derived_tables, file_tables
from ferops.validate.tables import (
    DerivedTables,
    derive_tables,
    fer2013_rows,
    fer2013_splits,
    ferplus_rows,
)

__all__ = [
    "CRITICAL",
    "WARNING",
    "DerivedTables",
    "RawFiles",
    "Table",
    "ValidateConfig",
    "Validation",
    "ValidationSettings",
    "class_share_problems",
    "derive_tables",
    "derived_tables",
    "fer2013_rows",
    "fer2013_splits",
    "ferplus_rows",
    "file_tables",
    "image_table",
    "read_csvs",
    "summary_lines",
    "validate_config",
    "validate_raw",
]
