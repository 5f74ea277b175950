#!/usr/bin/env bash
# The epochs-to-accuracy ablation of the README: each technique alone at a short proxy budget,
# as DVC experiments of the train stage (logged to MLflow like any run), scored on PublicTest.
#
#   bash benchmarks/ablation.sh [EPOCHS] [NAME=OVERRIDES ...]
#
# With no NAME=OVERRIDES, runs the README's list. Each experiment starts from the committed
# params.yaml plus its overrides (`;`-separated -S values); PrivateTest is never read (only the
# train stage runs). Then: dvc exp show --only-changed, or python benchmarks/ablation_table.py.
# Run it alone on an idle machine: images/s is part of the table.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs="${1:-6}"
shift || true
if [ "$#" -eq 0 ]; then
  set -- \
    "baseline=" \
    "smooth02=train.label_smoothing=0.2" \
    "ema099=train.ema_momentum=0.99" \
    "blend05=train.target=blend;train.blend_alpha=0.5" \
    "blend10=train.target=blend;train.blend_alpha=1.0" \
    "noaffine=train.augment.rotation=0;train.augment.zoom=0" \
    "mixup02=train.mixup=0.2" \
    "gelu=model.arch=resnet_s2d_gelu"
fi
for spec in "$@"; do
  name="abl-e${epochs}-${spec%%=*}"
  overrides="${spec#*=}"
  args=(-S "train.epochs=${epochs}")
  IFS=';' read -ra parts <<< "$overrides"
  for part in "${parts[@]}"; do
    [ -n "$part" ] && args+=(-S "$part")
  done
  git checkout -q HEAD -- params.yaml
  echo "== $(date +%T) $name: ${args[*]}"
  dvc exp run -n "$name" "${args[@]}" train
done
git checkout -q HEAD -- params.yaml
