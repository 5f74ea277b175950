"""Every section of params.yaml with its schema, so that all of them can be checked up front.

DVC deletes a stage's outputs before it runs the stage's command, so a stage that refuses a bad
value has already lost its previous reports. The ``params`` stage, upstream of every other one,
checks every section with :func:`check_params` first: a bad value anywhere stops ``dvc repro``
(and ``dvc exp run``) before any output is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ferops.config import BaseConfig, Section, build
from ferops.errors import ParamsError


def section_schemas() -> dict[str, type[Section]]:
    """Section name to its schema, in params.yaml order."""
    from ferops.download import DownloadConfig
    from ferops.evaluation import EvaluateConfig
    from ferops.models import ModelConfig
    from ferops.monitoring import MonitorConfig
    from ferops.oversample import OversampleConfig
    from ferops.prepare import PrepareConfig
    from ferops.registry import Gate, RegistryConfig
    from ferops.tracking import MlflowConfig
    from ferops.training import TrainConfig
    from ferops.validate import ValidateConfig

    return {
        "base": BaseConfig,
        "download": DownloadConfig,
        "validate": ValidateConfig,
        "prepare": PrepareConfig,
        "oversample": OversampleConfig,
        "model": ModelConfig,
        "train": TrainConfig,
        "mlflow": MlflowConfig,
        "evaluate": EvaluateConfig,
        "registry": RegistryConfig,
        "promote": Gate,
        "monitor": MonitorConfig,
    }


def _cross_checks(configs: Mapping[str, Any]) -> list[str]:
    """Rules that tie one section to another (class names must be ``base.classes``)."""
    from ferops.metrics import group_index
    from ferops.validate import class_share_problems

    classes = configs["base"].classes
    problems = list(class_share_problems(configs["validate"], classes))
    problems += [f"oversample.classes: {name!r} is not one of base.classes ({', '.join(classes)})"
                for name in configs["oversample"].classes if name not in classes]
    try:
        group_index(classes, configs["evaluate"].groups)
    except ParamsError as error:
        problems.append(str(error))
    return problems


def check_params(params: Mapping[str, Any], source: str = "params.yaml") -> dict[str, Section]:
    """Check every section of a params file, reporting all problems at once.

    Args:
        params: The whole params mapping.
        source: Its file name, for messages.

    Returns:
        Section name to its frozen config.

    Raises:
        ParamsError: An unknown or missing section, or any bad key or value in any section.
    """
    schemas = section_schemas()
    problems = [f"{name}: unknown section; known sections: {', '.join(schemas)}"
                for name in params if name not in schemas]
    problems += [f"{name}: missing section" for name in schemas if name not in params]
    configs: dict[str, Section] = {}
    for name, schema in schemas.items():
        if name in params:
            try:
                configs[name] = build(schema, params[name], name)
            except ParamsError as error:
                problems.append(str(error))
    if not problems:
        problems = _cross_checks(configs)
    if problems:
        raise ParamsError(f"{source}: " + "\n  ".join(["bad params:", *problems]))
    return configs
