"""DVC stage `prepare`: parse, relabel and clean FER2013; prepare CK+48 and JAFFE as test sets.

Usage: python stages/prepare.py --raw data/raw --validation reports/validation.json
       --out data/prepared --report reports/prepare.json --figures reports/figures/prepare
       --galleries reports/galleries/prepare
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ferops.config import BaseConfig
from ferops.detector_model import YUNET_FILE
from ferops.external import load_ckplus, load_jaffe
from ferops.faces import FaceDetector
from ferops.fer2013 import USAGES, read_fer2013
from ferops.ferplus import read_ferplus
from ferops.io import atomic_directory, write_json
from ferops.prepare import PrepareConfig, check_validation, prepare_fer2013, write_prepared
from ferops.runtime import configure_logging, read_configs, run_stage


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
        configs = read_configs(args.params, base=BaseConfig, prepare=PrepareConfig)
        base, config = configs["base"], configs["prepare"]
        raw = Path(args.raw)
        check_validation(Path(args.validation))
        fer = read_fer2013(raw / "fer2013.csv", base.image_size, len(base.classes))
        votes, has_name = read_ferplus(raw / "fer2013new.csv", np.asarray(USAGES)[fer.usage])
        result = prepare_fer2013(fer, votes, has_name, classes=base.classes, labels=config.labels,
                                 drop_single_votes=config.ferplus.drop_single_votes,
                                 majority=config.ferplus.majority, rules=config.clean,
                                 clean_test=config.clean_test)
        ckplus = load_ckplus(raw / "ckplus")
        result.report["ckplus"] = {"images": int(len(ckplus["label"])),
                                   "subjects": int(len(np.unique(ckplus["subject"])))}
        crop = config.jaffe
        detector = FaceDetector(crop.detector, model=raw / YUNET_FILE if crop.detector == "yunet" else None)
        jaffe, result.report["jaffe"] = load_jaffe(raw / "jaffe", detector, margin=crop.margin,
                                                   min_face_size=crop.min_face_size, align=crop.align,
                                                   on_no_face=crop.on_no_face, size=base.image_size)
        with (atomic_directory(args.out) as out, atomic_directory(args.figures) as figures,
              atomic_directory(args.galleries) as galleries):
            write_prepared(result, fer, {"ckplus": ckplus, "jaffe": jaffe}, base.classes,
                           config.gallery_per_rule, out=out, figures=figures, galleries=galleries)
            write_json(args.report, result.report)

    return run_stage("prepare", body)


if __name__ == "__main__":
    raise SystemExit(main())
