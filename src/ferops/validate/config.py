"""The ``validate`` params section: what the raw datasets are expected to look like.

The schema is checked with :func:`ferops.config.build` (unknown keys, types and ranges); its one
rule that involves another section (``class_share`` names only ``base.classes``) is
:func:`class_share_problems`. The file formats themselves (columns, vote names, splits, pixel
format) are not params: they live in :mod:`ferops.fer2013` and :mod:`ferops.ferplus`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from ferops.config import Section, build
from ferops.errors import ParamsError
from ferops.fer2013 import USAGES

Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Count = Annotated[int, Field(gt=0)]


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError("expected [min, max] with min <= max")
    return bounds


ShareRange = Annotated[tuple[Share, Share], AfterValidator(_ordered)]


class Fer2013Checks(Section):
    """``validate.fer2013``: expected rows and class balance of fer2013.csv.

    Attributes:
        rows: Expected rows per ``Usage`` value (every FER2013 split).
        row_tolerance: Allowed relative deviation of each split's row count.
        class_share: Class name to the allowed ``[min, max]`` share of each split's rows.
        blank_std_max: Images whose pixel standard deviation is below this are warned about.
    """

    rows: dict[Literal[USAGES], Count]  # type: ignore[valid-type]
    row_tolerance: float = Field(ge=0, lt=1)
    class_share: dict[str, ShareRange]
    blank_std_max: float = Field(ge=0, allow_inf_nan=False)

    @field_validator("rows")
    @classmethod
    def _every_split(cls, rows: dict[str, int]) -> dict[str, int]:
        missing = [usage for usage in USAGES if usage not in rows]
        if missing:
            raise ValueError(f"expected a row count for every split ({', '.join(USAGES)}); "
                             f"missing {', '.join(missing)}")
        # Report order follows the file format, whatever order params.yaml lists them in.
        return {usage: rows[usage] for usage in USAGES}


class CkplusChecks(Section):
    """``validate.ckplus``: the CK+48 image folder.

    Attributes:
        files: Expected number of images.
        image_size: Image side in pixels.
        classes: Expected emotion folders.
    """

    files: Count
    image_size: Count
    classes: tuple[str, ...] = Field(min_length=1)


class JaffeChecks(Section):
    """``validate.jaffe``: the JAFFE image folder.

    Attributes:
        files: Expected number of images.
        image_size: Image side in pixels.
    """

    files: Count
    image_size: Count


class ValidateConfig(Section):
    """The ``validate`` params section.

    Attributes:
        fer2013: fer2013.csv expectations (FER+ is checked against fer2013.csv itself).
        ckplus: CK+ expectations.
        jaffe: JAFFE expectations.
        sample_size: How many offending values/rows to report per expectation.
    """

    fer2013: Fer2013Checks
    ckplus: CkplusChecks
    jaffe: JaffeChecks
    sample_size: int = Field(5, ge=1)


@dataclass(frozen=True)
class ValidationSettings:
    """The checked ``validate`` section with the ``base`` values it depends on.

    Attributes:
        params: The ``validate`` section.
        classes: FER2013 class names (``base.classes``); index i is label i.
        image_size: FER2013 image side (``base.image_size``); a row holds its square of values.
    """

    params: ValidateConfig
    classes: tuple[str, ...]
    image_size: int


def class_share_problems(config: ValidateConfig, classes: Sequence[str]) -> list[str]:
    """The cross-section rule: ``validate.fer2013.class_share`` names only ``base.classes``.

    Args:
        config: The ``validate`` section.
        classes: ``base.classes``.

    Returns:
        One message per problem (empty: none); ``ferops.sections`` can report it with the rest.
    """
    unknown = [name for name in config.fer2013.class_share if name not in classes]
    if not unknown:
        return []
    return [f"validate.fer2013.class_share: unknown class(es) {', '.join(unknown)}; "
            f"the classes (base.classes) are: {', '.join(classes)}"]


def validate_config(validate: Mapping[str, Any] | None, classes: Sequence[str], image_size: int
                    ) -> ValidationSettings:
    """Build and check the validation settings from params.yaml.

    Args:
        validate: The ``validate`` section.
        classes: ``base.classes`` (already checked, e.g. by ``ferops.config.BaseConfig``): the
            FER2013 class names in label order.
        image_size: ``base.image_size``: the FER2013 image side in pixels.

    Returns:
        The settings.

    Raises:
        ParamsError: An unknown or missing key, a wrong type or range (named by its dotted
            key), or a ``class_share`` class that is not in ``classes``.
    """
    config = build(ValidateConfig, validate, "validate")
    problems = class_share_problems(config, classes)
    if problems:
        raise ParamsError("; ".join(problems))
    return ValidationSettings(params=config, classes=tuple(classes), image_size=int(image_size))
