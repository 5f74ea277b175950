"""Relabel and clean FER2013 into per-split arrays, with a report of every row removed and why.

The decisions live here as plain functions; ``stages/prepare.py`` reads the files, calls
:func:`prepare_fer2013` with the params and writes what it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ferops import cleaning, ferplus
from ferops.config import Section
from ferops.errors import DataError, ParamsError
from ferops.fer2013 import USAGES, Fer2013, class_counts
from ferops.figures import image_grid, panel_bars
from ferops.io import read_json, save_arrays

logger = logging.getLogger(__name__)

LABEL_MODES = ("fer2013", "ferplus")
# Order matters: a row removed by several rules is counted under the first one.
RULES = ("ferplus_unlabelled", "non_faces", "blank", "conflicting_duplicates", "leakage")
SPLIT_FILES = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}


class CleaningRules(Section):
    """Which cleaning rules are applied (to Training, and to the test splits if ``clean_test``).

    The ``prepare.clean`` params section.

    Attributes:
        non_faces: Remove images FER+ voters called "not a face" (or that FER+ left unnamed).
        blank: Remove constant or near-blank images.
        blank_std_max: Pixel standard deviation below which an image counts as blank.
        conflicting_duplicates: Remove every copy of an image whose copies disagree on the label.
        leakage: Remove Training images that also appear in a test split: ``exact`` copies,
            ``phash`` (exact plus perceptual near-duplicates), or ``none``.
        phash_max_distance: Hamming distance between 64-bit hashes that counts as near-duplicate.
    """

    non_faces: bool = True
    blank: bool = True
    blank_std_max: float = Field(2.0, ge=0, allow_inf_nan=False)
    conflicting_duplicates: bool = True
    leakage: Literal["exact", "phash", "none"] = "exact"
    phash_max_distance: int = Field(4, ge=0, le=64)


class FerplusRules(Section):
    """How FER+ votes become a label (the ``prepare.ferplus`` params section).

    Attributes:
        drop_single_votes: Treat an emotion's single vote as noise (the FER+ paper's rule).
        majority: The winning emotion needs strictly more than this share of the votes.
    """

    drop_single_votes: bool = True
    majority: float = Field(0.5, ge=0, lt=1)


class JaffeCrop(Section):
    """How JAFFE faces are found and cropped (the ``prepare.jaffe`` params section).

    Attributes:
        detector: ``yunet`` (OpenCV's FaceDetectorYN, the model the download stage fetched) or
            ``haar`` (OpenCV's frontal-face cascade).
        align: YuNet faces: align by the eyes to FER2013's framing (false: crop the box).
        margin: Haar boxes (and YuNet's with ``align: false``): margin around the box, as a
            fraction of its size.
        min_face_size: Smallest face side the detector looks for, in pixels.
        on_no_face: ``center_crop`` or ``drop`` an image where no face is found.
    """

    detector: Literal["yunet", "haar"] = "yunet"
    align: bool = True
    margin: float = Field(0.02, ge=0, lt=1)
    min_face_size: int = Field(80, gt=0)
    on_no_face: Literal["center_crop", "drop"] = "center_crop"


class PrepareConfig(Section):
    """The ``prepare`` params section.

    Attributes:
        labels: Which labels train the model: ``fer2013`` (original) or ``ferplus`` (majority vote).
        ferplus: The FER+ majority rule.
        clean: The cleaning rules.
        clean_test: Apply the rules to PublicTest/PrivateTest too (flags are recorded either way).
        jaffe: JAFFE face cropping.
        gallery_per_rule: Images per removal rule in the galleries.
    """

    labels: Literal["fer2013", "ferplus"] = "fer2013"
    ferplus: FerplusRules = FerplusRules()
    clean: CleaningRules = CleaningRules()
    clean_test: bool = False
    jaffe: JaffeCrop = JaffeCrop()
    gallery_per_rule: int = Field(12, ge=0)


@dataclass
class PreparedFer:
    """The result of :func:`prepare_fer2013`.

    Attributes:
        splits: Split name (``Training``...) to its named arrays.
        report: JSON-ready counts: rows removed per rule per split, classes per split.
        label: The active label of every input row (-1 = none), in input order.
        removed: Rule name to the removed rows' positions in the input (for galleries).
    """

    splits: dict[str, dict[str, np.ndarray]]
    report: dict[str, Any]
    label: np.ndarray
    removed: dict[str, np.ndarray] = field(default_factory=dict)


def flag_rows(
    fer: Fer2013,
    label: np.ndarray,
    winner: np.ndarray,
    has_name: np.ndarray,
    rules: CleaningRules,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Evaluate every cleaning rule on every row (whether or not the rule is switched on).

    Args:
        fer: The parsed dataset.
        label: Active labels (-1 = none), used for label conflicts.
        winner: FER+ majority winner per row (index into ``ferplus.VOTE_COLUMNS``, or -1).
        has_name: FER+ gave the row an image name (it leaves non-faces unnamed).
        rules: Rule settings (thresholds, leakage method).

    Returns:
        Rule name to a bool mask over all rows, and a summary of the duplicate structure.
    """
    duplicates = cleaning.find_duplicates(fer.images)
    training = fer.usage == USAGES.index("Training")
    exact_twins = cleaning.exact_twins_mask(duplicates, training, ~training)
    leak = exact_twins.copy()
    if rules.leakage == "phash":
        hashes = cleaning.perceptual_hashes(fer.images)
        leak |= cleaning.near_twins_mask(hashes, training, ~training, rules.phash_max_distance)
    flags = {
        "ferplus_unlabelled": label < 0,
        "non_faces": (winner == ferplus.NOT_A_FACE) | ~has_name,
        "blank": cleaning.blank_mask(fer.images, rules.blank_std_max),
        "conflicting_duplicates": cleaning.conflicting_duplicates_mask(duplicates, label),
        "leakage": leak,
    }
    summary = duplicates.summary()
    summary["test_rows_with_exact_training_twin"] = int((exact_twins & ~training).sum())
    summary["training_rows_with_exact_test_twin"] = int((exact_twins & training).sum())
    return flags, summary


def _enabled(rules: CleaningRules, labels: str) -> dict[str, bool]:
    return {
        "ferplus_unlabelled": labels == "ferplus",
        "non_faces": rules.non_faces,
        "blank": rules.blank,
        "conflicting_duplicates": rules.conflicting_duplicates,
        "leakage": rules.leakage != "none",
    }


def prepare_fer2013(
    fer: Fer2013,
    votes: np.ndarray,
    has_name: np.ndarray,
    *,
    classes: Sequence[str],
    labels: str = "fer2013",
    drop_single_votes: bool = True,
    majority: float = 0.5,
    rules: CleaningRules | None = None,
    clean_test: bool = False,
) -> PreparedFer:
    """Relabel (optionally with FER+), flag and clean FER2013, and split it by Usage.

    Args:
        fer: Parsed FER2013.
        votes: FER+ votes in the same row order (uint8, shape (n, 10)).
        has_name: FER+ ``Image name`` present, per row.
        classes: Class names in label order (7 for FER2013).
        labels: ``fer2013`` (original labels) or ``ferplus`` (FER+ majority labels).
        drop_single_votes: FER+ rule: ignore lone votes.
        majority: FER+ rule: the winner needs more than this share of votes.
        rules: Cleaning rules (defaults when None).
        clean_test: Also remove flagged rows from PublicTest/PrivateTest (off: they are kept
            and only flagged, so results stay comparable with published numbers).

    Returns:
        Arrays per split, the report, and the removed rows per rule.
    """
    if labels not in LABEL_MODES:
        raise ParamsError(f"prepare.labels: {labels!r} is not one of {', '.join(LABEL_MODES)}")
    if not 0 <= majority < 1:
        raise ParamsError("prepare.ferplus.majority: expected a share in [0, 1)")
    if len(votes) != len(fer):
        raise ParamsError(f"FER+ votes have {len(votes)} rows, FER2013 has {len(fer)}")
    rules = rules or CleaningRules()
    label_ferplus, status, soft = ferplus.relabel(votes, drop_single_votes, majority)
    winner = ferplus.majority_winner(votes, drop_single_votes, majority)
    label = fer.label if labels == "fer2013" else label_ferplus
    flags, duplicate_summary = flag_rows(fer, label, winner, has_name, rules)

    enabled = _enabled(rules, labels)
    remove = np.zeros(len(fer), dtype=bool)
    removed_by: dict[str, np.ndarray] = {}
    cleaned_splits = {"Training"} | ({"PublicTest", "PrivateTest"} if clean_test else set())
    in_cleaned = np.isin(fer.usage, [USAGES.index(name) for name in cleaned_splits])
    for rule in RULES:
        if not enabled[rule]:
            continue
        newly = flags[rule] & in_cleaned & ~remove
        removed_by[rule] = np.flatnonzero(newly)
        remove |= newly

    arrays_all = {
        "images": fer.images,
        "label": label.astype(np.int8),
        "label_fer2013": fer.label.astype(np.int8),
        "label_ferplus": label_ferplus,
        "ferplus_status": status,
        "soft_label": soft,
        "votes": votes.astype(np.uint8),
        "row_index": fer.row_index,
        **{f"flag_{rule}": mask for rule, mask in flags.items()},
    }
    class_names = np.asarray(list(classes), dtype="U16")
    flagged_any = cleaning.flagged_by_quality_rules(flags)
    splits: dict[str, dict[str, np.ndarray]] = {}
    split_report: dict[str, Any] = {}
    for index, name in enumerate(USAGES):
        in_split = fer.usage == index
        keep = in_split & ~remove
        splits[name] = {key: value[keep] for key, value in arrays_all.items()}
        splits[name]["classes"] = class_names
        split_report[name] = {
            "rows_in": int(in_split.sum()),
            "rows_out": int(keep.sum()),
            "removed": {rule: int(in_split[rows].sum()) for rule, rows in removed_by.items()},
            "flagged": {rule: int((mask & in_split).sum()) for rule, mask in flags.items()},
            "class_counts_before": class_counts(label[in_split], classes),
            "class_counts_after": class_counts(label[keep], classes),
        }
        if name != "Training":
            split_report[name]["clean_rows"] = int((keep & ~flagged_any).sum())
        logger.info("%s: %d rows in, %d out", name, in_split.sum(), keep.sum())

    report = {
        "labels": labels,
        "rules_applied": [rule for rule in RULES if enabled[rule]],
        "splits_cleaned": sorted(cleaned_splits),
        "splits": split_report,
        "duplicates": duplicate_summary,
        "ferplus_status": {
            split: {name: int(((status == code) & (fer.usage == index)).sum())
                    for code, name in enumerate(ferplus.STATUS_NAMES)}
            for index, split in enumerate(USAGES)
        },
    }
    return PreparedFer(splits=splits, report=report, label=label, removed=removed_by)


def plot_class_distribution(report: Mapping[str, Any], classes: Sequence[str], path: str) -> None:
    """Save per-split class counts before and after cleaning as one figure of bar panels."""
    panels = {}
    for split, entry in report["splits"].items():
        panels[f"{split} ({entry['rows_in']:,} → {entry['rows_out']:,})"] = {
            "before": [entry["class_counts_before"].get(name, 0) for name in classes],
            "after": [entry["class_counts_after"].get(name, 0) for name in classes],
        }
    panel_bars(list(classes), panels, path,
               title=f"Class distribution per split ({report['labels']} labels)")


def plot_removed_gallery(
    fer: Fer2013, label: np.ndarray, rows: np.ndarray, rule: str, classes: Sequence[str],
    path: str, limit: int,
) -> None:
    """Save a gallery of (up to ``limit``) images removed by one rule, captioned with row and label."""
    shown = rows[:limit]
    titles = [
        f"row {fer.row_index[i]} {classes[label[i]] if label[i] >= 0 else '(none)'}" for i in shown
    ]
    image_grid(fer.images[shown], titles, path, columns=6,
               title=f"Removed by '{rule}': {len(rows):,} image(s), first {len(shown)} shown")


def check_validation(path: Path) -> None:
    """Refuse to prepare data that the validate stage did not pass.

    Raises:
        DataError: The validation summary is missing, or says the datasets failed.
    """
    summary = read_json(path, "validate", what="validation summary")
    if summary.get("success") is not True:
        raise DataError(f"{path}: the datasets failed validation; see reports/validation/")


def write_prepared(result: PreparedFer, fer: Fer2013, external: Mapping[str, Mapping[str, np.ndarray]],
                   classes: Sequence[str], gallery_per_rule: int, *, out: Path, figures: Path,
                   galleries: Path) -> None:
    """Write the prepared arrays, the class-distribution chart and the galleries.

    Args:
        result: What :func:`prepare_fer2013` returned.
        fer: The parsed FER2013 (the galleries show its images).
        external: ``ckplus`` and ``jaffe`` arrays by name.
        classes: Class names in label order.
        gallery_per_rule: Images per removal rule in the galleries.
        out: Folder for the ``.npz`` arrays.
        figures: Folder for the chart (goes into git).
        galleries: Folder for figures that show dataset images (DVC-cached).
    """
    from ferops.external import plot_jaffe_crops

    for split, name in SPLIT_FILES.items():
        save_arrays(out / f"{name}.npz", result.splits[split])
    for name, arrays in external.items():
        save_arrays(out / f"{name}.npz", arrays)
    plot_class_distribution(result.report, classes, str(figures / "class_distribution.png"))
    for rule, rows in result.removed.items():
        plot_removed_gallery(fer, result.label, rows, rule, classes, str(galleries / f"removed_{rule}.png"),
                             gallery_per_rule)
    plot_jaffe_crops(external["jaffe"], result.report["jaffe"], galleries / "jaffe_crops.png")
