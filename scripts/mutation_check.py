"""The curated mutation check: break one guarded behaviour at a time (a minimal
edit in the package), run the tests meant to guard it, and report whether they
caught it. Not part of CI (each mutant costs a test run); run it before stopping
when you touched guarded code, and add a mutant whenever a behaviour gets a
guard.

  .venv/bin/python scripts/mutation_check.py            # every mutant
  .venv/bin/python scripts/mutation_check.py renew bn   # those whose name contains a word

Each mutant's tests run on the unchanged code first (once per set): a set that
fails there is reported, never counted as catching. A mutant left in place by
a killed run is restored when the next run starts. Exit status 1 when a mutant
survived (or an edit no longer applies: the code moved, so the list needs
updating; or a baseline failed).
"""
import dataclasses
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Mutant:
  name: str
  path: str       # a package file, relative to the repo
  old: str        # found exactly once in it
  new: str
  tests: tuple    # pytest node ids or files that must catch it


MUTANTS = (
    Mutant("#39: a resume at its very last step refused (< for <=)", "tpu_trainer/training.py",
           "  if step <= plan.total_steps:\n    return", "  if step < plan.total_steps:\n    return",
           ("tests/test_resume.py::test_sigterm_during_export_exits_143_and_the_rerun_finishes_"
            "the_export",)),
    Mutant("#39: the learning rate scaled by the inverse batch ratio", "tpu_trainer/scaling.py",
           "  ratio = batch_size / config.base_batch_size",
           "  ratio = config.base_batch_size / batch_size", ("tests/test_scaling.py",)),
    Mutant("#39: an in-memory epoch one batch longer (off by one)", "tpu_trainer/data/position.py",
           "      per_epoch = count // batch", "      per_epoch = count // batch + 1",
           ("tests/test_pipeline.py", "-k", "started_at_a_step")),
    Mutant("#39: the launcher streams every worker's log", "scripts/launch_tpu.sh",
           'run "${gc[@]}" ssh "$name" "${where[@]}" --worker=0 --command \\\n  "tail --pid',
           'run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command \\\n  "tail --pid',
           ("tests/test_launch.py::test_single_host",)),
    Mutant("#39: a rerun keeps a shard whose size matches", "tpu_trainer/data/convert.py",
           '(was.get("crc32c"), was.get("num_bytes")) ==\n                            (crc, present[job.file])',
           'was.get("num_bytes") ==\n                            present[job.file]',
           ("tests/test_convert.py", "-k", "damaged_in_place")),
    Mutant("#39: streamed files read in one order whatever the seed", "tpu_trainer/data/pipeline.py",
           "    ds = _records(files, pipelines, index, deterministic, seed, number)",
           "    ds = _records(files, pipelines, index, deterministic, None, number)",
           ("tests/test_pipeline.py", "-k", "seeds_order")),
    Mutant("#39: no loss scaling under mixed_float16", "tpu_trainer/loop.py",
           "      scaled_loss = optimizer.scale_loss(loss)", "      scaled_loss = loss",
           ("tests/test_train.py", "-k", "mixed_float16_run")),
    Mutant("#39: the JAX export fed image / 255", "tpu_trainer/backends/jax.py",
           "      probabilities = tf.cast(model_fn(image), tf.float32)",
           "      probabilities = tf.cast(model_fn(image / 255.0), tf.float32)",
           ("tests/test_jax_backend.py", "-k", "jax_export_scores")),
    Mutant("#39: JAX checkpoints without the optimizer's state", "tpu_trainer/backends/jax.py",
           "Checkpoints(self.model.variables + self.optimizer.variables, workdir,",
           "Checkpoints(self.model.variables + self.optimizer.variables[:1], workdir,",
           ("tests/test_exact_resume.py", "-k", "three_times and jax")),
    Mutant("#39: a finished write's wait never cleared", "tpu_trainer/watchdog.py",
           "          self._what = None", "          pass",
           ("tests/test_watchdog.py", "-k", "healthy")),
    Mutant("#39: HOST:PORT without grpc:// refused", "tpu_trainer/data/service.py",
           'text = address if "://" in address else f"grpc://{address}"', "text = address",
           ("tests/test_data_service.py", "-k", "address_forms")),
    Mutant("#42: an out-of-memory step an internal error", "tpu_trainer/training.py",
           "    except tf.errors.ResourceExhaustedError as e:", "    except ZeroDivisionError as e:",
           ("tests/test_train.py", "-k", "allocation_that_fails")),
    Mutant("#42: a full disk under a checkpoint's write said as out of memory",
           "tpu_trainer/training.py", "      if errors.disk_full_path(e) is not None:",
           "      if errors.disk_full_path(e) is None and False:",
           ("tests/test_full_disk.py", "-k", "training_onto")),
    Mutant("#42: an early explosion that recovers stopped as diverged", "tpu_trainer/controller.py",
           "step - exploded_since >= explosion_patience(plan)", "step - exploded_since >= 0",
           ("tests/test_cli.py", "-k", "explosion")),
    Mutant("#42: a loss exploded to the end exported", "tpu_trainer/controller.py",
           "step - exploded_since >= explosion_patience(plan) or done))",
           "step - exploded_since >= explosion_patience(plan)))",
           ("tests/test_jax_backend.py", "-k", "divergence")),
    Mutant("#42: a resume across mixed_float16 not named", "tpu_trainer/training.py",
           '  if (saved.precision == "mixed_float16") != (plan.precision == "mixed_float16"):',
           "  if False:", ("tests/test_rerun.py", "-k", "refused_resume")),
    Mutant("#42: a shard gone under a run an internal error", "tpu_trainer/training.py",
           "      raise manifest.explain_gone(dataset, e, watchdog.last_checkpoint) from None",
           "      raise", ("tests/test_train.py", "-k", "removed_under")),
    Mutant("#42: a dispatcher without its journal not named", "tpu_trainer/training.py",
           '      if config.input.service and "iteration client" in str(e):', "      if False:",
           ("tests/test_data_service.py", "-k", "without_its_journal")),
    Mutant("#42: a step past the memory attempted", "tpu_trainer/training.py",
           "  if need.total * replicas_here > have:", "  if False:",
           ("tests/test_train.py", "-k", "cannot_fit")),
    Mutant("#42: Orbax given a relative --workdir as typed", "tpu_trainer/backends/jax.py",
           "else os.path.abspath(self.directory)", "else self.directory",
           ("tests/test_jax_backend.py", "-k", "relative_workdir")),
    Mutant("#43: a finished run trained again", "tpu_trainer/training.py",
           "    if finished is not None:\n      return finished", "    if False:\n      pass",
           ("tests/test_rerun.py", "-k", "finished")),
    Mutant("#43: a resume past the config's last step accepted", "tpu_trainer/training.py",
           "  if step <= plan.total_steps:\n    return", "  if True:\n    return",
           ("tests/test_rerun.py", "-k", "past_the_configs")),
    Mutant("#43: class names compared as typed, not NFC", "tpu_trainer/data/manifest.py",
           '  return unicodedata.normalize("NFC", str(name))', "  return str(name)",
           ("tests/test_train.py", "-k", "composed_or_decomposed")),
    Mutant("#43: input threads unbounded", "tpu_trainer/data/pipeline.py",
           "  if input_config.threads > THREADS_PER_CORE * cores:", "  if False:",
           ("tests/test_pipeline.py", "-k", "machine_holds")),
    Mutant("#43: a shuffle buffer past the memory accepted", "tpu_trainer/data/pipeline.py",
           "  if buffered > MEMORY_SHARE * host:", "  if False:",
           ("tests/test_pipeline.py", "-k", "past_the_memory")),
    Mutant("#43: SIGTERM to a blocked step never acted on", "tpu_trainer/watchdog.py",
           "        if now - at >= grace:", "        if False:",
           ("tests/test_data_service.py", "-k", "serves_nothing and none and sigterm")),
    Mutant("#43: a second Ctrl-C to a blocked step ignored", "tpu_trainer/watchdog.py",
           "if sum(n == signal.SIGINT for n, _ in signals) >= 2:", "if False:",
           ("tests/test_data_service.py", "-k", "serves_nothing and unresolvable")),
    Mutant("#43: a step past the limit waited on", "tpu_trainer/watchdog.py",
           "      if limit and waited >= limit:", "      if False:",
           ("tests/test_tf_gcs.py", "-k", "data_dir_gone")),
    Mutant("#43: an IPv6 address without its brackets", "tpu_trainer/data/service.py",
           '  return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"',
           '  return f"{host}:{port}"', ("tests/test_data_service.py", "-k", "ipv6")),
    Mutant("#43: the doctor never checks config.input.service", "tpu_trainer/doctor.py",
           "    service.check_reachable(address, timeout_s=5.0)", "    pass",
           ("tests/test_doctor.py", "-k", "unreachable_service")),
    Mutant("#43: JAX processes that never join left to JAX's abort", "tpu_trainer/backends/jax.py",
           "  timer.start()\n", "",
           ("tests/test_jax_backend.py", "-k", "never_starts")),
    Mutant("#43: a lost JAX worker an internal error", "tpu_trainer/backends/jax.py",
           "  peer_errors = (jax.errors.JaxRuntimeError,)", "  peer_errors = ()",
           ("tests/test_jax_backend.py", "-k", "lost_jax")),
    Mutant("#43: a read-only workdir found only at the lock", "tpu_trainer/training.py",
           "    if not os.access(existing, os.W_OK | os.X_OK):", "    if False:",
           ("tests/test_rerun.py", "-k", "read_only")),
    Mutant("#43: launcher VM counts read as octal", "scripts/launch_tpu.sh",
           "data_workers=$((10#$data_workers))", "true",
           ("tests/test_launch.py", "-k", "decimal")),
    Mutant("#43: launcher ships a config file not committed", "scripts/launch_tpu.sh",
           '  git -C "$REPO" ls-files --error-unmatch -- "${config%%:*}" > /dev/null 2>&1 \\',
           "  true \\", ("tests/test_launch.py", "-k", "not_committed")),
    Mutant("#43: launcher gives up at one failed describe", "scripts/launch_tpu.sh",
           '      if ! state="$("${state_cmd[@]}")"; then',
           '      state="$("${state_cmd[@]}")"\n      if false; then',
           ("tests/test_launch.py", "-k", "describe")),
    Mutant("a NaN config value accepted", "tpu_trainer/config.py",
           "    if isinstance(value, float) and not math.isfinite(value):", "    if False:",
           ("tests/test_configs.py::test_a_nan_or_infinite_setting_is_one_line_before_any_work",)),
    Mutant("a raising config file's line not named", "tpu_trainer/cli/__init__.py",
           '  return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""',
           '  return ""',
           ("tests/test_cli.py::test_a_config_file_that_raises_is_one_line_naming_where",)),
    Mutant("a dataset known by its shard names, not its records", "tpu_trainer/data/manifest.py",
           'shards.get(os.path.basename(f), {}).get("crc32c")', "None",
           ("tests/test_train.py::test_the_same_records_converted_again_are_the_same_dataset",)),
    Mutant("adopted labels read without their offset", "tpu_trainer/data/records.py",
           "parsed[dataset.label_key] - dataset.label_offset", "parsed[dataset.label_key]",
           ("tests/test_adopt.py::test_imagenet_layout_adopted_in_place_reads_as_the_source",)),
    Mutant("an adopted shard's new content unnoticed", "tpu_trainer/data/manifest.py",
           '        if adopted or key == "num_bytes":', '        if key == "num_bytes":',
           ("tests/test_adopt.py::test_gcs_adopted_in_place_then_a_reuploaded_shard_is_refused",
            "tests/test_adopt.py::test_training_and_exact_eval_on_adopted_shards_then_a_"
            "changed_shard_is_refused")),
    Mutant("a label below the offset adopted", "tpu_trainer/data/adopt.py",
           "  if label < 0:\n", "  if False:\n",
           ("tests/test_adopt.py::test_a_bad_record_is_one_line_naming_file_and_index_and_"
            "nothing_is_written",)),
    Mutant("adopted varying sizes not center-cropped", "tpu_trainer/data/records.py",
           "      image = image[y:y + h, x:x + w]\n", "",
           ("tests/test_adopt.py::test_varying_sizes_are_center_cropped_to_the_training_shape",)),
    Mutant("adopted JPEGs cropped at the corner", "tpu_trainer/data/records.py",
           "    return (size[0] - crop_h) // 2, (size[1] - crop_w) // 2, crop_h, crop_w",
           "    return 0, 0, crop_h, crop_w",
           ("tests/test_adopt.py::test_varying_sizes_are_center_cropped_to_the_training_shape",)),
    Mutant("fingerprint without the content's crc", "tpu_trainer/data/sources.py",
           "parts.append(google_crc32c.value(f.read()))", "f.read()",
           ("tests/test_convert.py::test_a_source_rewritten_with_the_same_size_and_mtime_is_noticed",)),
    Mutant("labels above the class count accepted", "tpu_trainer/data/convert.py",
           "if low < 0 or high >= len(source.class_names):", "if low < 0:",
           ("tests/test_convert.py::test_labels_beyond_the_class_names_are_refused",)),
    Mutant("lock renew a no-op", "tpu_trainer/lock.py",
           "    if not self._write(self._owner(), self.generation if self.remote else self.token):"
           "\n      self._lost()\n", "    pass\n",
           ("tests/test_lock.py::test_renew_extends_the_lease",)),
    Mutant("a lost lock renewed anyway", "tpu_trainer/lock.py",
           'if current is None or current.get("token") != expected:', "if current is None:",
           ("tests/test_lock.py::test_a_run_that_lost_its_lock_stops_before_its_next_write",)),
    Mutant("logits trained as probabilities", "tpu_trainer/loop.py",
           "from_logits=from_logits, reduction=None)", "from_logits=False, reduction=None)",
           ("tests/test_own_model.py", "-k", "logits_and_probabilities and graph")),
    Mutant("logits served without the softmax", "tpu_trainer/export.py",
           "    if from_logits:\n      probabilities = tf.nn.softmax(probabilities)\n", "",
           ("tests/test_own_model.py", "-k", "logits_and_probabilities and graph")),
    Mutant("an unregistered layer found only at export", "tpu_trainer/training.py",
           "      custom.check_round_trip(model, config.model)", "      pass",
           ("tests/test_own_model.py", "-k", "contract and unregistered")),
    Mutant("a bfloat16 softmax accepted", "tpu_trainer/models/custom.py",
           'if kind == "probabilities" and spec.dtype != "float32":', "if False:",
           ("tests/test_own_model.py", "-k", "contract and bf16")),
    Mutant("0-1 images only up to exactly 1", "tpu_trainer/models/base.py",
           "ZERO_ONE_PEAK = 1.5", "ZERO_ONE_PEAK = 1.0",
           ("tests/test_train.py::test_the_exported_models_score_images_in_either_convention",)),
    Mutant("no bound on --image_size", "tpu_trainer/data/sources.py",
           "  if per_image > limit:", "  if False:",
           ("tests/test_convert.py", "-k", "cannot_fit")),
    Mutant("training never renews the lock", "tpu_trainer/controller.py",
           "      renew_lock()\n", "",
           ("tests/test_lock.py::test_training_renews_its_lease",)),
    Mutant("saved_model/ copied in place", "tpu_trainer/export.py",
           "    shutil.copytree(local_dir, incoming)\n",
           "    shutil.copytree(local_dir, final, dirs_exist_ok=True)\n    return\n",
           ("tests/test_export.py::test_a_directory_is_replaced_whole_or_not_at_all",)),
    Mutant("model.keras copied, not renamed", "tpu_trainer/storage.py",
           "      os.replace(local_tmp, final_path)", "      shutil.copyfile(local_tmp, final_path)",
           ("tests/test_export.py::test_a_file_is_published_by_rename",)),
    Mutant("input.augment ignored", "tpu_trainer/data/pipeline.py",
           "    if input_config.augment:", "    if False:",
           ("tests/test_pipeline.py::test_input_augment_reaches_the_training_batches",)),
    Mutant("model left out of the TensorFlow checkpoint (batch norm not restored)",
           "tpu_trainer/backends/tensorflow.py",
           "    variables = model.variables + optimizer.variables\n    self._checkpoint",
           "    variables = optimizer.variables\n    self._checkpoint",
           ("tests/test_train.py::test_resume_restores_batch_norm_statistics",)),
    Mutant("SIGTERM during the export ignored", "tpu_trainer/stopping.py",
           "    if self.received:\n      raise self.stopped(", "    if False:\n      raise self.stopped(",
           ("tests/test_export.py",)),
    Mutant("per-epoch checkpoints not spaced by checkpoint_min_secs", "tpu_trainer/controller.py",
           "return time.monotonic() - self._last_save >= self._min_secs", "return True",
           ("tests/test_train.py::test_checkpoints_per_epoch_at_most_every_checkpoint_min_secs",)),
    Mutant("TensorFlow: a finite explosion not counted as divergence", "tpu_trainer/loop.py",
           "    exploded = tf.logical_or(nonfinite, mean_example_loss > limit)",
           "    exploded = nonfinite",
           ("tests/test_cli.py::test_a_diverging_run_exits_3_with_one_line_and_exports_nothing",)),
    Mutant("TensorFlow: loss averaged per replica, not over the global batch",
           "tpu_trainer/loop.py", "global_batch_size=global_batch)",
           "global_batch_size=tf.shape(labels)[0])", ("tests/test_replicas.py",)),
    Mutant("JAX: a finite explosion not counted as divergence", "tpu_trainer/backends/jax.py",
           "    exploded = nonfinite | (mean_loss > limit)",
           "    exploded = nonfinite",
           ("tests/test_jax_backend.py::test_jax_divergence_exits_3_and_bad_settings_are_one_line",)),
    Mutant("JAX: checkpoint restore skipped", "tpu_trainer/backends/jax.py",
           "    for variable, value in zip(self._variables, saved.state):\n"
           "      variable.assign(value)", "    if False:\n      pass",
           ("tests/test_jax_backend.py::"
            "test_jax_run_stopped_by_sigterm_resumes_with_exactly_the_remaining_steps",)),
    Mutant("JAX: the optimizer's update dropped", "tpu_trainer/backends/jax.py",
           "    trainable, optimizer_variables = optimizer.stateless_apply(\n"
           "        optimizer_variables, grads, trainable)",
           "    _, optimizer_variables = optimizer.stateless_apply(\n"
           "        optimizer_variables, grads, trainable)",
           ("tests/test_jax_backend.py::test_tensorflow_and_jax_end_with_the_same_weights",)),
    Mutant("the first (compiling) execution counted in the speed", "tpu_trainer/controller.py",
           "      self._start_interval()\n      return\n", "      self._start_interval()\n",
           ("tests/test_train.py::test_the_first_execution_is_not_part_of_the_speed",)),
    Mutant("#41: the first execution's compilation counted as training", "tpu_trainer/controller.py",
           'phases.add("compile" if first else "training",', 'phases.add("training",',
           ("tests/test_cli.py", "-k", "where_its_time")),
    Mutant("#41: profiled ops summed per step's scope, not per op", "tpu_trainer/profiling.py",
           '  return [{"op": STEP_SCOPE.sub(r"\\1", r["operation"]), "type": r["type"],',
           '  return [{"op": r["operation"], "type": r["type"],',
           ("tests/test_profiling.py", "-k", "overview")),
    Mutant("no step markers in profiles", "tpu_trainer/controller.py",
           "return self.runner.trace_step(step) if self.active else contextlib.nullcontext()",
           "return contextlib.nullcontext()",
           ("tests/test_train.py::test_profile_steps_write_a_profile_of_those_steps",)),
    Mutant("workers with different settings train anyway", "tpu_trainer/training.py",
           "  if differ:\n    raise UserError(f\"The workers", "  if False:\n    raise UserError(f\"The workers",
           ("tests/test_multiworker.py::"
            "test_workers_started_with_different_settings_are_refused_naming_the_key",)),
    Mutant("a reconverted dataset resumes", "tpu_trainer/training.py",
           "  if saved.get(\"dataset_identity\", resolved.get(\"dataset_identity\")) not in (",
           "  if False and saved.get(\"dataset_identity\", resolved.get(\"dataset_identity\")) not in (",
           ("tests/test_train.py::test_a_dataset_is_known_by_its_content_not_its_path",)),
    Mutant("eval counts its padding", "tpu_trainer/data/pipeline.py",
           "weights = tf.pad(tf.ones([n], tf.float32), [[0, pad]])",
           "weights = tf.ones([batch], tf.float32)",
           ("tests/test_pipeline.py",)),
    Mutant("0-1 float images read as 0-255", "tpu_trainer/models/base.py",
           "ops.where(peak <= ZERO_ONE_PEAK, 255.0, 1.0)", "1.0",
           ("tests/test_train.py::test_the_exported_models_score_images_in_either_convention",)),
    Mutant("profiled executions keep their while loop", "tpu_trainer/loop.py",
           "    if unrolled:\n", "    if False:\n",
           ("tests/test_profiling.py::test_the_overview_page_has_steps_and_the_summary_reads_them",)),
    Mutant("input.service ignored", "tpu_trainer/data/pipeline.py",
           'if input_config.get("service"):', "if False:",
           ("tests/test_data_service.py::test_workers_do_the_work",)),
    Mutant("eval classes by index, not by name", "tpu_trainer/evaluation.py",
           "predict = _in_class_order(predict, order)", "pass",
           ("tests/test_train.py::test_eval_matches_classes_by_name_and_refuses_other_classes",)),
    Mutant("the storage watchdog never gives up", "tpu_trainer/watchdog.py",
           "if waited >= self.limit_s:", "if False:",
           ("tests/test_watchdog.py::test_a_wait_past_the_limit_ends_the_process_with_75",)),
    Mutant("a storage error left raw", "tpu_trainer/watchdog.py",
           "      if not is_storage_error(e):\n        raise\n", "      raise\n",
           ("tests/test_watchdog.py",)),
    Mutant("the same permutation every epoch", "tpu_trainer/data/pipeline.py",
           "seed=tf.stack([tf.constant(seed, tf.int64), number])",
           "seed=tf.stack([tf.constant(seed, tf.int64), 0 * number])",
           ("tests/test_pipeline.py",)),
    Mutant("input position not restored", "tpu_trainer/data/pipeline.py",
           "where.start(dataset, split, step, index)", "where.start(dataset, split, 0, index)",
           ("tests/test_pipeline.py::"
            "test_an_input_started_at_a_step_reads_on_exactly_where_the_run_was",)),
    Mutant("JAX: input position not restored", "tpu_trainer/backends/jax.py",
           "self._position.position, step)(self._input_context())",
           "self._position.position, 0)(self._input_context())",
           ("tests/test_exact_resume.py::test_preempted_three_times_ends_bit_identical_to_the_"
            "uninterrupted_run[jax-overrides1]",)),
    Mutant("JAX: an Orbax save never awaited", "tpu_trainer/backends/jax.py",
           "    self._manager.wait_until_finished()\n    self.written, self._saving = self._saving "
           "or self.written, None\n\n  def close(self) -> None:\n"
           "    self._manager.close()  # waits for the last save too",
           "    self.written, self._saving = self._saving or self.written, None\n\n"
           "  def close(self) -> None:\n    pass",
           ("tests/test_jax_backend.py::"
            "test_jax_run_stopped_by_sigterm_resumes_with_exactly_the_remaining_steps",)),
    Mutant("TF: an async save racing the next step (a thread writing the live variables)",
           "tpu_trainer/backends/tensorflow.py",
           "    self._manager.save(checkpoint_number=step, options=self._options)",
           "    __import__('threading').Thread(target=self._manager.save, args=(step,)).start()",
           ("tests/test_exact_resume.py::test_each_asynchronous_save_holds_its_own_steps_"
            "values[tensorflow]",)),
    Mutant("TF: a checkpoint still being written named to resume from",
           "tpu_trainer/backends/tensorflow.py",
           "    self._saving = step\n", "    self._saving = step\n"
           "    self.written = self._path(step)\n",
           ("tests/test_exact_resume.py::test_each_asynchronous_save_holds_its_own_steps_"
            "values[tensorflow]",)),
    Mutant("TF: an async save never awaited", "tpu_trainer/backends/tensorflow.py",
           "    self._manager.sync()\n", "    return\n",
           ("tests/test_exact_resume.py::test_each_asynchronous_save_holds_its_own_steps_"
            "values[tensorflow]",)),
    Mutant("TF: objects-format checkpoints no longer restored", "tpu_trainer/backends/tensorflow.py",
           "      checkpoint = tf.train.Checkpoint(**self._objects, **(",
           "      checkpoint = tf.train.Checkpoint(**(",
           ("tests/test_exact_resume.py::test_a_tensorflow_checkpoint_of_model_and_optimizer_"
            "objects_still_resumes",)),
    Mutant("GKE: a preemption fails the JobSet instead of restarting it", "tpu_trainer/gke.py",
           "RESTART_EXIT_CODES = (75, *range(128, 256))", "RESTART_EXIT_CODES = (75,)",
           ("tests/test_gke.py::test_exit_codes_decide_restart_or_failure",)),
    Mutant("GKE: TPU7x's workload policy named by chips, not TensorCores", "tpu_trainer/tpus.py",
           'f"{generation.name}-{chips * generation.devices_per_chip}-{torus}-placement-policy"',
           'f"{generation.name}-{chips}-{torus}-placement-policy"',
           ("tests/test_gke.py", "-k", "workload_policy or node_pool")),
    Mutant("GKE: multislice of one-VM slices accepted", "tpu_trainer/gke.py",
           "  if slices > 1 and node.vms == 1:", "  if slices > 1 and node.vms == 0:",
           ("tests/test_gke.py", "-k", "cannot_run")),
    Mutant("GKE: pods not joined into one job", "tpu_trainer/backends/jax.py",
           "  if gke and gke[1] > 1:", "  if False:",
           ("tests/test_gke.py::test_the_manifests_pods_form_one_job_that_trains_like_one_"
            "process",)),
    Mutant("a slower precision=auto never said", "tpu_trainer/benchmark.py",
           "  if ratio >= SAME_SPEED:\n", "  if True:\n",
           ("tests/test_benchmark.py::"
            "test_precision_verdict_names_the_faster_precision_when_auto_is_slower",)),
    Mutant("bf16 on a CPU for a model it slows", "tpu_trainer/backends/tensorflow.py",
           "      if model in CPU_BF16_SLOWER:\n", "      if False:\n",
           ("tests/test_strategy.py",)),
)


# While a mutant is in place: its file and the original text, so that a run
# killed midway (Ctrl-C twice, a closed terminal) is undone by the next one.
PENDING = os.path.join(REPO, ".mutation_check.pending.json")


def restore_pending() -> None:
  if not os.path.exists(PENDING):
    return
  with open(PENDING) as f:
    pending = json.load(f)
  with open(os.path.join(REPO, pending["path"]), "w") as f:
    f.write(pending["original"])
  os.remove(PENDING)
  print(f"restored {pending['path']} (a mutant left in place by a killed run)", flush=True)


def pytest(tests: tuple) -> int:
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                         *tests], cwd=REPO, capture_output=True, text=True,
                        check=False).returncode


def run(mutant: Mutant, baselines: dict) -> str:
  path = os.path.join(REPO, mutant.path)
  with open(path) as f:
    original = f.read()
  if original.count(mutant.old) != 1:
    return "STALE (the edit no longer applies)"
  if mutant.tests not in baselines:  # the tests on the unchanged code: they must pass
    baselines[mutant.tests] = pytest(mutant.tests)
  if baselines[mutant.tests] != 0:
    return f"BASELINE FAILS (pytest exit {baselines[mutant.tests]} on the unchanged code)"
  try:
    with open(PENDING, "w") as f:
      json.dump({"path": mutant.path, "original": original}, f)
    with open(path, "w") as f:
      f.write(original.replace(mutant.old, mutant.new))
    code = pytest(mutant.tests)
  finally:
    with open(path, "w") as f:
      f.write(original)
    os.remove(PENDING)
  return "caught" if code == 1 else (
      "SURVIVED" if code == 0 else f"ERROR (pytest exit {code})")


def main(words: list[str]) -> int:
  restore_pending()
  chosen = [m for m in MUTANTS if not words or any(w in m.name for w in words)]
  bad, baselines, began = 0, {}, time.perf_counter()
  for mutant in chosen:
    start = time.perf_counter()
    verdict = run(mutant, baselines)
    bad += verdict != "caught"
    print(f"{verdict:<10} {mutant.name} ({time.perf_counter() - start:.0f} s)", flush=True)
  print(f"{len(chosen) - bad} of {len(chosen)} caught in {time.perf_counter() - began:.0f} s "
        "(each mutant's tests passed on the unchanged code first)")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
