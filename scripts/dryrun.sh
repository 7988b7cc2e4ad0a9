#!/usr/bin/env bash
# The main job on a laptop: convert the built-in digits dataset to sharded
# TFRecords, train the seed CNN on 2 logical CPU replicas (the same
# multi-replica path a TPU runs), and evaluate the exported model.
#   scripts/dryrun.sh [OUTPUT_DIR [--config.KEY=VALUE ...]]   (default /tmp/tpu_trainer_dryrun)
source "$(dirname "$0")/env.sh"
OUT="${1:-${DRYRUN_DIR:-/tmp/tpu_trainer_dryrun}}"
if [ $# -gt 0 ]; then shift; fi
start=$(date +%s)

# Convert digits, train the cnn recipe's defaults on 2 logical CPU replicas, and
# evaluate the exported model: tpu-trainer-convert / -train / -eval's library
# calls, in one process (one TensorFlow start-up instead of three).
python -m tpu_trainer.cli.dryrun --output_dir="$OUT" "$@"
cat <<MSG

Dry run done in $(( $(date +%s) - start )) s.
  shards + manifest:  $OUT/data
  TensorBoard logs:   $OUT/workdir/train, $OUT/workdir/validation
  checkpoints:        $OUT/workdir/checkpoints
  exported model:     $OUT/workdir/model.keras, $OUT/workdir/saved_model
  metrics:            $OUT/workdir/metrics.json, eval_test.json
  pictures:           $OUT/workdir/learning_curves.png, eval_test_confusion.png, eval_test_predictions.png
Open TensorBoard:     scripts/tensorboard.sh $OUT/workdir
MSG
