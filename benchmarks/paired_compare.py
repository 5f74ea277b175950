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
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="registry versions; the first is the reference")
    parser.add_argument("--data", type=Path, default=ROOT / "data/prepared/jaffe.npz",
                        help="a prepared .npz test set (images, label)")
    parser.add_argument("--name", default="ferops-fer2013", help="the registered model's name")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from scipy.stats import binomtest

    from ferops.io import load_arrays

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient(args.tracking_uri)
    arrays = load_arrays(args.data)
    images = arrays["images"].astype(np.float32)[..., None]
    labels = arrays["label"]
    print(f"{args.data} ({len(labels)} images), registered model {args.name}, single view")
    correct, names = {}, {}
    for version in args.versions:
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
    reference = args.versions[0]
    for version in args.versions[1:]:
        only_reference = int((correct[reference] & ~correct[version]).sum())
        only_other = int((~correct[reference] & correct[version]).sum())
        discordant = only_reference + only_other
        p_value = binomtest(only_reference, discordant).pvalue if discordant else 1.0
        print(f"v{reference} {names[reference]} vs v{version} {names[version]}: only v{reference} "
              f"right {only_reference}, only v{version} right {only_other}, "
              f"exact McNemar p = {p_value:.3f}")


if __name__ == "__main__":
    main()
