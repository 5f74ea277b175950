"""The README's ablation table from MLflow: the runs of `benchmarks/ablation.sh`, one row each.

Each DVC experiment named ``abl-e<EPOCHS>-<technique>`` is an MLflow run of that name (the train
stage names its run after ``DVC_EXP_NAME``). For the newest run of each name this prints, as a
Markdown table: the technique, the overrides that differ from the baseline run, the best PublicTest
accuracy (original labels; PrivateTest is never read), its difference to the baseline's, and
the median of the per-epoch training images/s (a median: this VM has occasional epochs at half
speed whatever runs).

    python benchmarks/ablation_table.py [--prefix abl-e6-] [--tracking-uri sqlite:///mlflow.db]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="abl-e6-", help="run-name prefix of one ablation")
    parser.add_argument("--baseline", default="baseline", help="the technique the deltas refer to")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--experiment", default="ferops")
    args = parser.parse_args()

    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[args.experiment],
                              filter_string=f"attributes.run_name LIKE '{args.prefix}%'",
                              order_by=["attributes.start_time DESC"])
    if runs.empty:
        raise SystemExit(f"no MLflow runs named {args.prefix}* in {args.tracking_uri}")
    runs = runs.drop_duplicates("tags.mlflow.runName")  # the newest run of each name
    runs = runs.set_index(runs["tags.mlflow.runName"].str.removeprefix(args.prefix))
    params = [column for column in runs.columns
              if column.startswith(("params.train.", "params.model.", "params.base.seed"))
              and "max_minutes" not in column]
    if args.baseline not in runs.index:
        raise SystemExit(f"no baseline run {args.prefix}{args.baseline}")
    # A key the baseline run did not have yet (added to params.yaml later) is compared with the
    # value most runs had.
    reference = {column: (runs.loc[args.baseline, column] if runs.loc[args.baseline, column] is not None
                          and str(runs.loc[args.baseline, column]) != "nan"
                          else runs[column].mode().iloc[0]) for column in params}
    client = mlflow.MlflowClient()
    print("| technique | overrides | PublicTest | delta | images/s |")
    print("|---|---|---:|---:|---:|")
    for name, run in runs.iloc[::-1].iterrows():
        changed = [f"{column.removeprefix('params.')}={run[column]}" for column in params
                   if str(run[column]) not in (str(reference[column]), "nan", "None")]
        accuracy = run["metrics.best_val_accuracy"]
        delta = accuracy - runs.loc[args.baseline, "metrics.best_val_accuracy"]
        speeds = [m.value for m in client.get_metric_history(run["run_id"], "images_per_second")]
        print(f"| {name} | {', '.join(changed) or '-'} | {accuracy:.2%} | "
              f"{'' if name == args.baseline else f'{delta * 100:+.2f}'} | {statistics.median(speeds):.0f} |")


if __name__ == "__main__":
    main()
