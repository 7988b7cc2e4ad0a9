#!/usr/bin/env bash
# The main job on a laptop: convert the built-in digits dataset to sharded
# TFRecords, train the seed CNN on 2 logical CPU replicas (the same
# multi-replica path a TPU runs), and evaluate the exported model.
#   scripts/dryrun.sh [OUTPUT_DIR] [--config.KEY=VALUE ...]
# OUTPUT_DIR defaults to $DRYRUN_DIR, else $TMPDIR/tpu_trainer_dryrun-$USER (one per user).
# Flags go to tpu-trainer-dryrun: scripts/dryrun.sh --help lists them.
case "${1:-}" in
  -h|--help|-help|-\?)
    sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'
    source "$(dirname "$0")/env.sh"
    exec python -m tpu_trainer.cli.dryrun --help ;;
esac
source "$(dirname "$0")/env.sh"
OUT="${DRYRUN_DIR:-${TMPDIR:-/tmp}/tpu_trainer_dryrun-$(id -un)}"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then OUT="$1"; shift; fi
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
