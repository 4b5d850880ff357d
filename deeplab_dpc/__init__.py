"""deeplab_dpc: DeepLab with the Dense Prediction Cell, in TensorFlow 2 / Keras."""

import importlib.machinery
import importlib.util
import os
import sys

__version__ = "0.1.0"

# The repository's program folders and the subpackages a wheel installs them
# as (setup.py's package_dir). In a checkout, and in an editable install of
# one (`pip install -e .`, whose finder cannot map a folder without an
# `__init__.py`), the folders beside this package serve as those
# subpackages, so that the console scripts and `python -m
# deeplab_dpc.datasets.build_seg_data` work there too. In a wheel they are
# real folders of the package and nothing happens here.
PROGRAM_FOLDERS = {
    "datasets": "datasets",
    "export_programs": "export",
    "configs": "configs",
}
# A file that marks each folder as the repository's (not, say, Hugging
# Face's `datasets` beside an installed copy of this package).
_MARKERS = {
    "datasets": "build_seg_data.py",
    "export": "export_model.py",
    "configs": "synthetic_mobilenetv2_dpc.flags",
}


def _map_program_folders():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    for subpackage, folder in PROGRAM_FOLDERS.items():
        name = f"{__name__}.{subpackage}"
        path = os.path.join(root, folder)
        if (
            name in sys.modules
            or os.path.isdir(os.path.join(here, subpackage))
            or not os.path.isfile(os.path.join(path, _MARKERS[folder]))
        ):
            continue
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [path]
        sys.modules[name] = importlib.util.module_from_spec(spec)


_map_program_folders()
