"""Small helpers shared by the stage entry points and the CLI (logging, params, exit codes)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ferops.config import Section, build
from ferops.errors import FeropsError, ParamsError

logger = logging.getLogger("ferops")


def configure_logging(verbose: bool = False) -> None:
    """Send ferops log records to stderr with a timestamp; quieten chatty dependencies."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Great Expectations prints tqdm progress bars per expectation; our own log is enough.
    os.environ.setdefault("TQDM_DISABLE", "1")
    for noisy in ("great_expectations", "matplotlib", "PIL", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def read_params(path: str | os.PathLike[str], *sections: str) -> dict[str, Any]:
    """Read the named top-level sections of a params file.

    Args:
        path: The YAML params file (normally ``params.yaml``).
        *sections: Section names to return.

    Returns:
        Section name to its mapping.

    Raises:
        ParamsError: The file is missing, not YAML, or lacks a requested section.
    """
    data = read_all_params(path)
    missing = [section for section in sections if section not in data]
    if missing:
        raise ParamsError(f"{path}: missing section(s) {', '.join(missing)}")
    return {section: data[section] for section in sections}


def read_configs(path: str | os.PathLike[str], **schemas: type[Section]) -> dict[str, Any]:
    """Read params sections and build each one's checked config (see :func:`ferops.config.build`).

    Args:
        path: The YAML params file.
        **schemas: Section name to its schema, e.g. ``train=TrainConfig``.

    Returns:
        Section name to its frozen config.

    Raises:
        ParamsError: The file or a section is missing, or a section has a bad key or value.
    """
    sections = read_params(path, *schemas)
    return {name: build(schema, sections[name], name) for name, schema in schemas.items()}


def run_stage(name: str, body: Callable[[], None]) -> int:
    """Run a stage body, turning expected errors into a one-line message and exit status 1.

    Args:
        name: Stage name, used in the messages.
        body: The stage's work.

    Returns:
        0 on success, 1 when the stage failed with a :class:`FeropsError`.
    """
    try:
        body()
    except FeropsError as error:
        logger.error("stage %s failed: %s", name, error)
        return 1
    logger.info("stage %s done", name)
    return 0


def read_all_params(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the whole params file (for recording every value with a run)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:
        raise ParamsError(f"{path}: params file not found") from error
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({error})") from error


def nearest_folder_with(start: str | os.PathLike[str], *names: str) -> Path | None:
    """The nearest folder from ``start`` upwards that holds every one of ``names`` (None: none does).

    How commands find the checkout they run in (``params.yaml``, ``dvc.yaml``) from a subfolder.
    """
    here = Path(start).resolve()
    candidates = (here, *here.parents)
    return next((folder for folder in candidates if all((folder / name).is_file() for name in names)), None)
