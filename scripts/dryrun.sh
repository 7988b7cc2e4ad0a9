#!/usr/bin/env bash
# The main job on a laptop: convert the built-in digits dataset to sharded
# TFRecords, train the seed CNN on 2 logical CPU replicas (the same
# multi-replica path a TPU runs), and evaluate the exported model.
#   scripts/dryrun.sh [OUTPUT_DIR]     (default /tmp/tpu_trainer_dryrun)
source "$(dirname "$0")/env.sh"
OUT="${1:-${DRYRUN_DIR:-/tmp/tpu_trainer_dryrun}}"
rm -rf "$OUT/workdir"
start=$(date +%s)

tpu-trainer-convert --source=digits --output_dir="$OUT/data"
# The seed CNN recipe with its defaults: batch size and learning rate chosen for
# the dataset (1,437 training images), over 2 logical CPU replicas.
tpu-trainer-train --config="$REPO/configs/cnn.py" --workdir="$OUT/workdir" \
  --config.data_dir="$OUT/data" --config.cpu_devices=2
tpu-trainer-eval --workdir="$OUT/workdir"

cat <<MSG

Dry run done in $(( $(date +%s) - start )) s.
  shards + manifest:  $OUT/data
  TensorBoard logs:   $OUT/workdir/train, $OUT/workdir/validation
  checkpoints:        $OUT/workdir/checkpoints
  exported model:     $OUT/workdir/model.keras, $OUT/workdir/saved_model
  metrics:            $OUT/workdir/metrics.json, learning_curves.png
Open TensorBoard:     scripts/tensorboard.sh $OUT/workdir
MSG
