"""Is one registered model really better than another on a small test set? A paired comparison.

JAFFE has 213 images: one image is 0.47 points, and two models' accuracies can differ by a few
points through a handful of faces. This scores registered versions of the model (MLflow model
registry) on the same prepared test set, image by image, and for each version against the first
prints how many images only one of the two gets right and the exact McNemar test's p-value (the
two-sided binomial test of those discordant counts: what matters for paired predictions, not
the two accuracies' separate confidence intervals). Single view, the set's own labels (images
whose label the model has no output for, CK+'s contempt, left out as the evaluate stage does;
all seven outputs compete, so on CK+ this is the evaluate stage's "unmasked" figure).

    python benchmarks/paired_compare.py 1 11 14 [--data data/prepared/jaffe.npz]
        [--name ferops-fer2013] [--tracking-uri sqlite:///mlflow.db]

One run of a recipe is one draw: JAFFE moves by a few points between seeds of the same recipe.
To compare recipes rather than runs, give each as a group of versions (its seeds):

    python benchmarks/paired_compare.py --group new=11,15,20 --group old=19,18,21

prints each group's runs and mean accuracy, and the difference of the means with a 95 %
interval from a bootstrap over the test set's subjects (the people: JAFFE is 10 women with ~21
photos each, CK+ has several frames per sequence, so faces are not independent draws), each
group's per-face share of correct runs resampled together.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ferops.paired import group_difference, paired_difference

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", help="registry versions; the first is the reference")
    parser.add_argument("--group", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="a recipe as the versions of its runs (seeds); give two or more, "
                             "the first is the reference")
    parser.add_argument("--resamples", type=int, default=10_000,
                        help="bootstrap resamples of the subjects (with --group)")
    parser.add_argument("--data", type=Path, default=ROOT / "data/prepared/jaffe.npz",
                        help="a prepared .npz test set (images, label)")
    parser.add_argument("--name", default="ferops-fer2013", help="the registered model's name")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    args = parser.parse_args()
    groups = parse_groups(parser, args.group)
    if args.resamples < 1:
        parser.error(f"--resamples: expected a positive count, got {args.resamples}")
    if bool(args.versions) == bool(groups):
        parser.error("give either versions to compare run by run, or two or more --group")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    from ferops.io import load_arrays

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient(args.tracking_uri)
    arrays = load_arrays(args.data)
    images = arrays["images"].astype(np.float32)[..., None]
    labels = arrays["label"]
    if groups and "subject" not in arrays:
        parser.error(f"--group: {args.data} has no 'subject' array to resample people by "
                     "(jaffe.npz and ckplus.npz have one)")
    print(f"{args.data} ({len(labels)} images), registered model {args.name}, single view")
    correct, names = {}, {}
    # A version in several groups is scored once.
    for version in dict.fromkeys(args.versions or [v for vs in groups.values() for v in vs]):
        run_id = client.get_model_version(args.name, version).run_id
        names[version] = client.get_run(run_id).info.run_name if run_id else "?"
        # The model as saved (mixed precision where it was trained so), as the evaluate stage
        # scores it, so the figures match reports/metrics.json; ferops.inference.load_classifier
        # casts to float32 (what predict and serve run), which can move a face or two.
        model = mlflow.keras.load_model(f"models:/{args.name}/{version}")
        probabilities = model.predict(images, batch_size=256, verbose=0)
        # Labels the model has no output for (CK+'s contempt) are left out, as evaluate does.
        scored = labels < probabilities.shape[1]
        correct[version] = probabilities[scored].argmax(axis=1) == labels[scored]
        print(f"  v{version} {names[version]}: {correct[version].mean() * 100:.2f} % "
              f"({int(correct[version].sum())} of {len(correct[version])})")
    if groups:
        compare_groups(groups, correct, names, arrays["subject"][scored], args.resamples)
        return
    reference = args.versions[0]
    for version in args.versions[1:]:
        result = paired_difference(correct[version], correct[reference], resamples=args.resamples)
        print(f"v{reference} {names[reference]} vs v{version} {names[version]}: only v{reference} "
              f"right {result.only_old}, only v{version} right {result.only_new}, "
              f"exact McNemar p = {result.p_value:.3f}")


def parse_groups(parser: argparse.ArgumentParser, specs: list[str]) -> dict[str, list[str]]:
    """``["new=11,15", "old=1,18"]`` -> ``{"new": ["11", "15"], "old": ["1", "18"]}``."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, _, members = spec.partition("=")
        versions = [v.strip() for v in members.split(",") if v.strip()]
        if not name or not versions or not all(v.isdigit() for v in versions):
            parser.error(f"--group {spec!r}: expected NAME=V1,V2,... with registry version numbers")
        if name in groups:
            parser.error(f"--group {spec!r}: the name {name!r} is given twice")
        groups[name] = versions
    if len(groups) == 1:
        parser.error("--group: give at least two groups to compare")
    return groups


def compare_groups(groups: dict[str, list[str]], correct: dict, names: dict[str, str],
                   subjects, resamples: int) -> None:
    """Print each group's mean accuracy and the mean differences with subject-bootstrap intervals."""
    import numpy as np

    for group, members in groups.items():
        runs = ", ".join(f"v{v} {names[v]} {correct[v].mean() * 100:.2f}" for v in members)
        mean = np.mean([correct[v].mean() for v in members]) * 100
        print(f"{group}: mean {mean:.2f} % over {len(members)} runs ({runs})")
    reference = next(iter(groups))
    for group in list(groups)[1:]:
        difference, low, high = group_difference([correct[v] for v in groups[group]],
                                                 [correct[v] for v in groups[reference]], subjects,
                                                 resamples=resamples)
        print(f"{group} - {reference}: {difference:+.2f} points, 95 % interval "
              f"[{low:+.2f}, {high:+.2f}] (bootstrap over {len(np.unique(subjects))} subjects, "
              f"{resamples} resamples)")


if __name__ == "__main__":
    main()
