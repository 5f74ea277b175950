"""DVC stage `oversample`: raise rare classes of the prepared Training split.

Usage: python stages/oversample.py --train data/prepared/train.npz
       --out data/oversampled/train.npz --report reports/oversample.json
       --figure reports/figures/oversample/class_counts.png
"""

from __future__ import annotations

import argparse

from ferops.config import BaseConfig
from ferops.figures import grouped_bars
from ferops.io import load_arrays, save_arrays, write_json
from ferops.oversample import OversampleConfig, oversample
from ferops.runtime import configure_logging, read_configs, run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train", required=True, help="prepared Training split (.npz)")
    parser.add_argument("--out", required=True, help="oversampled Training split (.npz)")
    parser.add_argument("--report", required=True, help="JSON report of class counts")
    parser.add_argument("--figure", required=True, help="before/after class-count figure (PNG)")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        configs = read_configs(args.params, base=BaseConfig, oversample=OversampleConfig)
        base, config = configs["base"], configs["oversample"]
        classes = list(base.classes)
        arrays, report = oversample(
            load_arrays(args.train),
            classes=classes,
            method=config.method,
            raise_classes=list(config.classes),
            target_ratio=config.target_ratio,
            seed=base.seed,
            smote_k_neighbors=config.smote_k_neighbors,
        )
        grouped_bars(
            classes,
            {"before": list(report["class_counts_before"].values()),
             "after": list(report["class_counts_after"].values())},
            args.figure,
            title=f"Training class counts, oversampling: {report['method']}",
        )
        save_arrays(args.out, arrays)
        write_json(args.report, report)

    return run_stage("oversample", body)


if __name__ == "__main__":
    raise SystemExit(main())
