"""tpu-trainer-convert: a dataset -> a TFDS dataset directory (sharded TFRecords,
dataset_info.json, features.json) that TFDS and tpu-trainer-train both read.

Examples:
  tpu-trainer-convert --source=digits --output_dir=/tmp/digits
  tpu-trainer-convert --source=folder:flower_photos --image_size=224,224 \\
      --output_dir=gs://my-bucket/flowers
  tpu-trainer-convert --verify --output_dir=gs://my-bucket/flowers
  tpu-trainer-convert --source=tfrecord:gs://b/imagenet --image_size=224,224 \
      --output_dir=gs://b/imagenet      # imagenet_to_gcs.py's shards, adopted in place
  tpu-trainer-convert --source=folder:gs://b/imagenet/train --image_size=224,224 \\
      --output_dir=gs://b/imagenet-tfds --runner=DataflowRunner -- --project=P \\
      --region=us-central2 --temp_location=gs://b/tmp --setup_file=./setup.py

Beam pipeline options (--direct_num_workers=2, --project=...) go after `--`.
"""
from absl import flags

from tpu_trainer import cli
from tpu_trainer.data import sources
from tpu_trainer.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, sources.SPECS)
flags.DEFINE_string("output_dir", None, "Local directory or gs://bucket/prefix.", required=True)
flags.DEFINE_bool("verify", False, "Read every shard of --output_dir back and check record "
                  "counts and checksums against the metadata; convert nothing.")
flags.DEFINE_enum("encoding", "auto", ["auto", "raw", "png", "jpeg"],
                  "auto: raw for small images, jpeg for colour photos, png otherwise.")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality when encoding=jpeg.")
flags.DEFINE_integer("num_shards", 0, "Shards per split; 0 = from --shard_bytes.")
flags.DEFINE_integer("shard_bytes", 100 << 20, "Target shard size in bytes.")
flags.DEFINE_integer("min_shards", 16, "At least this many shards per split (so every host "
                     "of a pod slice gets files), fewer only for tiny splits.")
flags.DEFINE_integer("seed", 0, "Seed of the example shuffle before sharding (and of the "
                     "digits train/test split).")
flags.DEFINE_integer("workers", 0, "Parallel shard writers; 0 = number of cores.")
flags.DEFINE_list("image_size", None, "H,W: resize every image (folder:, tfds:).")
flags.DEFINE_float("test_fraction", 0.1, "folder: fraction of images held out as 'test'.")
flags.DEFINE_string("tfds_data_dir", "", "tfds: where TFDS keeps downloaded data.")
flags.DEFINE_bool("rewrite", False, "tfrecord: write our own shards from the records instead "
                  "of adopting them in place (other sharding, mixed formats).")
flags.DEFINE_string("image_key", None, "tfrecord: the feature holding the image (encoded "
                    "bytes, or raw uint8 pixels with --image_size).")
flags.DEFINE_string("label_key", None, "tfrecord: the int64 feature holding the label.")
flags.DEFINE_integer("label_offset", None, "tfrecord: the label of the first class (1 for "
                     "1-based labels such as imagenet_to_gcs's).")
flags.DEFINE_string("class_name_key", None, "tfrecord: a bytes feature naming each record's "
                    "class (image/class/synset).")
flags.DEFINE_string("class_names", None, "tfrecord: a file of class names, one per line, line "
                    "i naming class i.")
flags.DEFINE_string("runner", "", "Convert as an Apache Beam pipeline on this runner "
                    "(DirectRunner, DataflowRunner, ...); default: local worker processes.")


def main(argv):
  pipeline_args = argv[1:]  # after `--`: Beam's options
  if pipeline_args and not FLAGS.runner:
    raise UserError(f"Unexpected arguments {' '.join(pipeline_args)}: Beam pipeline "
                    "options need --runner=DirectRunner|DataflowRunner.")
  from tpu_trainer.data import convert  # pylint: disable=g-import-not-at-top
  from tpu_trainer.data import manifest  # pylint: disable=g-import-not-at-top
  output_dir = cli.expand_path(FLAGS.output_dir)
  if FLAGS.verify:
    result = manifest.verify(output_dir)
    print(f"OK: {result['shards']} shards, {result['examples']} examples in "
          f"{output_dir} ({result['checksums']})")
    return
  if not FLAGS.source:
    raise UserError(f"--source is required: {sources.SPECS}.")
  image_size = None
  if FLAGS.image_size:
    try:
      image_size = tuple(int(v) for v in FLAGS.image_size)
      assert len(image_size) == 2 and min(image_size) > 0
    except (ValueError, AssertionError):
      raise UserError(f"--image_size={','.join(FLAGS.image_size)} must be H,W, "
                      "e.g. 224,224.") from None
  spec = sources.expand(FLAGS.source)
  mapping = {"image_key": FLAGS.image_key, "label_key": FLAGS.label_key,
             "label_offset": FLAGS.label_offset, "class_name_key": FLAGS.class_name_key,
             "class_names": cli.expand_path(FLAGS.class_names or "")}
  tfrecord = spec.startswith("tfrecord:")
  given = sorted(f"--{k}" for k, v in mapping.items() if v not in (None, ""))
  if not tfrecord and (given or FLAGS.rewrite):
    raise UserError(f"{' '.join(given or ['--rewrite'])} apply to --source=tfrecord:... only.")
  if tfrecord and not FLAGS.rewrite:
    if FLAGS.runner:
      raise UserError("Adopting TFRecords in place writes only metadata: drop --runner, or "
                      "add --rewrite to convert them with Beam.")
    from tpu_trainer.data import adopt  # pylint: disable=g-import-not-at-top
    if image_size:
      sources.check_image_size(image_size)
    dataset = adopt.adopt(spec.partition(":")[2], output_dir,
                          flags={**mapping, "image_size": image_size}, workers=FLAGS.workers)
    cli.print_written(dataset, output_dir)
    return
  load_args = {"tfds_data_dir": cli.expand_path(FLAGS.tfds_data_dir), "image_size": image_size,
               "test_fraction": FLAGS.test_fraction, "seed": FLAGS.seed,
               "tfrecord": mapping}
  shards = {"encoding": FLAGS.encoding, "num_shards": FLAGS.num_shards,
            "shard_bytes": FLAGS.shard_bytes, "min_shards": FLAGS.min_shards,
            "seed": FLAGS.seed, "jpeg_quality": FLAGS.jpeg_quality}
  if FLAGS.runner:
    from tpu_trainer.data import beam  # pylint: disable=g-import-not-at-top
    dataset = beam.convert_with_beam(spec, output_dir, runner=FLAGS.runner,
                                     pipeline_args=pipeline_args, load_args=load_args,
                                     **shards)
  else:
    dataset = convert.convert(sources.load(spec, **load_args), output_dir,
                              workers=FLAGS.workers, **shards)
  cli.print_written(dataset, output_dir)


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
