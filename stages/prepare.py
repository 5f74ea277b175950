"""DVC stage `prepare`: parse, relabel and clean FER2013; prepare CK+48 and JAFFE as test sets.

Usage: python stages/prepare.py --raw data/raw --validation reports/validation.json
       --out data/prepared --report reports/prepare.json --figures reports/figures/prepare
       --galleries reports/galleries/prepare
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from ferops.errors import DataError
from ferops.external import load_ckplus, load_jaffe, plot_jaffe_crops
from ferops.faces import FaceDetector
from ferops.fer2013 import USAGES, read_fer2013
from ferops.ferplus import read_ferplus
from ferops.io import atomic_directory, save_arrays, write_json
from ferops.prepare import (
    SPLIT_FILES,
    CleaningRules,
    plot_class_distribution,
    plot_removed_gallery,
    prepare_fer2013,
)
from ferops.runtime import configure_logging, read_params, require_choice, run_stage

logger = logging.getLogger("ferops.stages.prepare")


def check_validation(path: Path) -> None:
    """Refuse to prepare data that the validate stage did not pass."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataError(f"{path}: not found; run the validate stage first (dvc repro)") from error
    if summary.get("success") is not True:
        raise DataError(f"{path}: the datasets failed validation; see reports/validation/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", required=True, help="raw-data directory (download stage)")
    parser.add_argument("--validation", required=True, help="validation summary JSON")
    parser.add_argument("--out", required=True, help="directory for the prepared .npz arrays")
    parser.add_argument("--report", required=True, help="JSON report of counts")
    parser.add_argument("--figures", required=True, help="directory for the charts")
    parser.add_argument("--galleries", required=True,
                        help="directory for image galleries (they show dataset images)")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        sections = read_params(args.params, "base", "prepare")
        base, params = sections["base"], sections["prepare"]
        classes = list(base["classes"])
        raw = Path(args.raw)
        check_validation(Path(args.validation))
        labels = require_choice(params["labels"], ["fer2013", "ferplus"], "prepare.labels")
        rules = CleaningRules.from_params(params["clean"])
        jaffe_params = params["jaffe"]
        require_choice(jaffe_params["on_no_face"], ["center_crop", "drop"], "prepare.jaffe.on_no_face")

        fer = read_fer2013(raw / "fer2013.csv", int(base["image_size"]), len(classes))
        votes, has_name = read_ferplus(raw / "fer2013new.csv", np.asarray(USAGES)[fer.usage])
        result = prepare_fer2013(
            fer, votes, has_name,
            classes=classes,
            labels=labels,
            drop_single_votes=bool(params["ferplus"]["drop_single_votes"]),
            majority=float(params["ferplus"]["majority"]),
            rules=rules,
            clean_test=bool(params["clean_test"]),
        )
        ckplus = load_ckplus(raw / "ckplus")
        jaffe, jaffe_report = load_jaffe(
            raw / "jaffe",
            FaceDetector(),
            margin=float(jaffe_params["margin"]),
            min_face_size=int(jaffe_params["min_face_size"]),
            on_no_face=jaffe_params["on_no_face"],
            size=int(base["image_size"]),
        )
        report = dict(result.report)
        report["ckplus"] = {"images": int(len(ckplus["label"])),
                            "subjects": int(len(np.unique(ckplus["subject"])))}
        report["jaffe"] = jaffe_report

        with (atomic_directory(args.out) as out, atomic_directory(args.figures) as figures,
              atomic_directory(args.galleries) as galleries):
            for split, name in SPLIT_FILES.items():
                save_arrays(out / f"{name}.npz", result.splits[split])
            save_arrays(out / "ckplus.npz", ckplus)
            save_arrays(out / "jaffe.npz", jaffe)
            plot_class_distribution(report, classes, str(figures / "class_distribution.png"))
            for rule, rows in result.removed.items():
                plot_removed_gallery(fer, result.label, rows, rule, classes,
                                     str(galleries / f"removed_{rule}.png"),
                                     int(params["gallery_per_rule"]))
            plot_jaffe_crops(jaffe, jaffe_report, galleries / "jaffe_crops.png")
            write_json(args.report, report)

    return run_stage("prepare", body)


if __name__ == "__main__":
    raise SystemExit(main())
