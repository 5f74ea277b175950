"""The `ferops` command line: the user-facing tools around the DVC pipeline.

The pipeline itself runs with `dvc repro`; this command is for looking at and using what it
produces.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ferops import __version__
from ferops.errors import FeropsError
from ferops.io import load_arrays
from ferops.runtime import configure_logging

logger = logging.getLogger("ferops.cli")

_EPILOG = """\
The pipeline runs with DVC, not with this command:
  dvc repro                      download -> validate -> prepare -> oversample (see dvc.yaml)
  dvc exp run -S prepare.labels=ferplus   an experiment with one parameter changed
  dvc metrics show               counts and figures from reports/*.json
"""


def describe_arrays(arrays: dict[str, np.ndarray]) -> list[str]:
    """Describe a prepared-data file: every array's shape and dtype, and class counts.

    Args:
        arrays: Arrays as loaded by :func:`ferops.io.load_arrays`.

    Returns:
        Lines of text.
    """
    lines = [f"{name:<28} {str(value.shape):<18} {value.dtype}" for name, value in sorted(arrays.items())]
    if "label" in arrays:
        label = arrays["label"]
        classes = arrays["classes"].tolist() if "classes" in arrays else []
        counts = np.bincount(label[label >= 0], minlength=len(classes))
        lines.append(f"{len(label):,} images; per class:")
        for index, count in enumerate(counts):
            name = classes[index] if index < len(classes) else f"class {index}"
            lines.append(f"  {name:<10} {count:>7,}")
        if (label < 0).any():
            lines.append(f"  {'(no label)':<10} {int((label < 0).sum()):>7,}")
    return lines


def sample_gallery(arrays: dict[str, np.ndarray], per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Pick up to ``per_class`` random images of each class (seeded) with captions."""
    rng = np.random.default_rng(seed)
    label = arrays["label"]
    classes = arrays["classes"].tolist() if "classes" in arrays else []
    picks, titles = [], []
    for index in np.unique(label[label >= 0]):
        rows = np.flatnonzero(label == index)
        chosen = np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False))
        picks.extend(chosen)
        name = classes[index] if index < len(classes) else str(index)
        titles.extend(f"{name} #{row}" for row in chosen)
    return arrays["images"][np.asarray(picks, dtype=int)], titles


def _inspect(args: argparse.Namespace) -> None:
    arrays = load_arrays(args.path)
    sys.stdout.write("\n".join([str(args.path), *describe_arrays(arrays)]) + "\n")
    if args.gallery:
        from ferops.figures import image_grid

        if "images" not in arrays or "label" not in arrays:
            raise FeropsError(f"{args.path}: has no 'images' and 'label' arrays to draw")
        images, titles = sample_gallery(arrays, args.per_class, args.seed)
        image_grid(images, titles, args.gallery, columns=args.per_class,
                   title=f"{Path(args.path).name}: {args.per_class} random images per class")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the `ferops` command."""
    parser = argparse.ArgumentParser(
        prog="ferops",
        description="Facial expression recognition: tools around the ferops DVC pipeline.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ferops {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect", help="describe a prepared .npz file (arrays, class counts), optionally draw samples",
        description="Describe an array file written by the pipeline, e.g. data/prepared/train.npz: "
        "every array's shape and dtype and the images per class. With --gallery, save a PNG of "
        "random images per class to look at.",
    )
    inspect.add_argument("path", type=Path, help="an .npz file from data/prepared or data/oversampled")
    inspect.add_argument("--gallery", type=Path, help="save a PNG of sample images here")
    inspect.add_argument("--per-class", type=int, default=8, help="images per class (default 8)")
    inspect.add_argument("--seed", type=int, default=0, help="random seed for the sample")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `ferops` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    try:
        args.handler(args)
    except FeropsError as error:
        logger.error("%s", error)
        return 1
    return 0
