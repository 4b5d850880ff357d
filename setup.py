"""deeplab_dpc: the Dense Prediction Cell (Chen et al., NeurIPS 2018) in TF2."""

import setuptools

# The programs of the top-level folders `datasets/` (the data set converters)
# and `export/` (SavedModel, TFLite, their comparison, the serving client)
# stay there in the repository (`python datasets/build_seg_data.py`) and are
# installed inside the package, as `deeplab_dpc.datasets.<program>` and
# `deeplab_dpc.export_programs.<program>` (`deeplab_dpc.export` is the
# export library), never as top-level `datasets`/`export` packages, whose
# names others own (Hugging Face's `datasets`). deeplab_dpc/__init__.py maps
# the same folders in a checkout and an editable install (tested equal).
PROGRAM_FOLDERS = {
    "deeplab_dpc.datasets": "datasets",
    "deeplab_dpc.export_programs": "export",
    # The flagfile presets (the installed demo reads one).
    "deeplab_dpc.configs": "configs",
}
# Console script -> the installed module whose `run()` it calls.
PROGRAMS = {
    "deeplab_dpc_flops": "deeplab_dpc.flops",
    "deeplab_dpc_import_checkpoint": "deeplab_dpc.import_checkpoint",
    "deeplab_dpc_train": "deeplab_dpc.train",
    "deeplab_dpc_eval": "deeplab_dpc.eval",
    "deeplab_dpc_vis": "deeplab_dpc.vis",
    "deeplab_dpc_search": "deeplab_dpc.search.program",
    "deeplab_dpc_demo": "deeplab_dpc.demo",
    "deeplab_dpc_predict": "deeplab_dpc.predict",
    "deeplab_dpc_build_seg_data": "deeplab_dpc.datasets.build_seg_data",
    "deeplab_dpc_build_synthetic_data": "deeplab_dpc.datasets.build_synthetic_data",
    "deeplab_dpc_build_voc2012_data": "deeplab_dpc.datasets.build_voc2012_data",
    "deeplab_dpc_build_cityscapes_data": "deeplab_dpc.datasets.build_cityscapes_data",
    "deeplab_dpc_build_ade20k_data": "deeplab_dpc.datasets.build_ade20k_data",
    "deeplab_dpc_export_model": "deeplab_dpc.export_programs.export_model",
    "deeplab_dpc_export_tflite": "deeplab_dpc.export_programs.export_tflite",
    "deeplab_dpc_compare": "deeplab_dpc.export_programs.compare",
    "deeplab_dpc_serving_client": "deeplab_dpc.export_programs.serving_client",
}

setuptools.setup(
    name="deeplab_dpc",
    version="0.1.0",
    description=(
        "DeepLab with the Dense Prediction Cell and its architecture "
        "search, in TensorFlow 2 and Keras"
    ),
    packages=setuptools.find_packages(include=["deeplab_dpc", "deeplab_dpc.*"])
    + sorted(PROGRAM_FOLDERS),
    package_dir=PROGRAM_FOLDERS,
    package_data={"deeplab_dpc": ["cells/*.json"], "deeplab_dpc.configs": ["*.flags"]},
    python_requires=">=3.10",
    # Pinned to what is tested. The plain `tensorflow` wheel runs on the CPU
    # and pulls no CUDA; nothing here pulls PyTorch.
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "tf-keras>=2.21,<2.22",
        "tensorflow-model-optimization>=0.8,<0.9",
        "tensorflow-datasets>=4.9,<5",
        "tensorboard>=2.21,<2.22",
        "absl-py>=1.4,<3",
        # cityscapesscripts' official evaluator calls np.in1d, removed in NumPy 2.4.
        "numpy>=1.26,<2.4",
        "pillow>=10,<14",
        "tqdm>=4.60,<5",
        # The official Cityscapes label table and evaluator.
        "cityscapesscripts>=2.2,<3",
        # Studies of the architecture search (shared storage for workers).
        "optuna>=5,<6",
        "sqlalchemy>=2,<3",
        "psycopg2-binary>=2.9,<3",
        "matplotlib>=3.8,<4",
        "scipy>=1.11,<2",
        # The mobile runtime the TFLite files are checked and timed in.
        "ai-edge-litert>=2.3,<2.4",
        # TF Serving's PredictRequest/PredictResponse protos for the client.
        "tensorflow-serving-api>=2.21,<2.22",
        "grpcio>=1.60,<2",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"],
        # Open Source Vizier: google-vizier 0.1.24 pins an equinox that breaks
        # on current jax; the -dev build with a current equinox runs.
        "vizier": ["google-vizier-dev[jax]", "jax>=0.6", "equinox>=0.13"],
    },
    entry_points={
        "console_scripts": [
            f"{script}={module}:run" for script, module in PROGRAMS.items()
        ],
    },
)
