r"""Segments images with a model served by TF Serving, over gRPC or REST.

  python export/serving_client.py --images='photos/*.jpg' --output_dir=OUT \
      [--server=localhost:8500] [--protocol=grpc|rest] [--model_name=deeplab] \
      [--model_version=N] [--signature_name=predict_images|serving_default] \
      [--colormap=pascal|cityscapes|ade20k] [--overwrite]

For a server started as

  tensorflow_model_server --port=8500 --rest_api_port=8501 \
      --model_name=deeplab --model_base_path=EXPORT_PATH

on a SavedModel of `export/export_model.py`. Sends one request per image:
`predict_images` sends the encoded file (base64 in REST JSON),
`serving_default` the decoded RGB pixels. Writes
`<output_dir>/<stem>_prediction.png` (class ids) and, with `--colormap`,
`<stem>_prediction_colored.png`. `--server` defaults to the server's default
port of the protocol (8500 gRPC, 8501 REST).
"""

import glob
import os

from absl import app
from absl import flags

from deeplab_dpc.data import registry
from deeplab_dpc.flags import cli

# The library's serving module (deeplab_dpc.export.serving) imports
# TensorFlow and gRPC: `main` imports it, after the flags are parsed, so that
# `--help` is quick. Its names, spelled here (tests/flags/test_cli.py checks
# them against the library's).
PREDICT_IMAGES = "predict_images"
SIGNATURES = ("serving_default", "predict_images")
GRPC_PORT = 8500
REST_PORT = 8501

_IMAGES = flags.DEFINE_list(
    "images", None, "Image files or glob patterns, comma separated."
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where the prediction PNGs are written."
)
_SERVER = flags.DEFINE_string(
    "server", None, "host:port of TF Serving; default localhost:8500 (gRPC) or :8501."
)
_PROTOCOL = flags.DEFINE_enum("protocol", "grpc", ["grpc", "rest"], "API to call.")
_MODEL_NAME = flags.DEFINE_string("model_name", "deeplab", "The server's --model_name.")
_MODEL_VERSION = flags.DEFINE_integer(
    "model_version", None, "Version to call; default the latest served.", lower_bound=0
)
_SIGNATURE_NAME = flags.DEFINE_enum(
    "signature_name", PREDICT_IMAGES, list(SIGNATURES), "Signature."
)
_COLORMAP = flags.DEFINE_enum(
    "colormap", None, list(registry.COLORMAPS), "Also write coloured labels."
)
_TIMEOUT = flags.DEFINE_float("timeout", 60.0, "Seconds per request.")
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Replace existing prediction PNGs."
)


def expand_images(patterns):
    """The image files of `--images`, in order, each once.

    Raises:
      app.UsageError: for a pattern that matches no file.
    """
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise app.UsageError(f"--images: no file matches {pattern!r}")
        paths += [m for m in matches if m not in paths]
    return paths


def check_outputs(paths):
    """Raises app.UsageError when two images share outputs or outputs exist."""
    from deeplab_dpc.export import serving  # pylint: disable=import-outside-toplevel

    seen = {}
    for path in paths:
        for output in serving.prediction_paths(
            _OUTPUT_DIR.value, path, _COLORMAP.value
        ):
            if output in seen:
                raise app.UsageError(
                    f"--images: {seen[output]} and {path} would both write {output}"
                )
            seen[output] = path
            if os.path.exists(output) and not _OVERWRITE.value:
                raise app.UsageError(f"{output} exists; pass --overwrite to replace it")


def predict(images):
    """Calls the server on a batch of images; returns its outputs."""
    from deeplab_dpc.export import serving  # pylint: disable=import-outside-toplevel

    default_port = GRPC_PORT if _PROTOCOL.value == "grpc" else REST_PORT
    server = _SERVER.value or f"localhost:{default_port}"
    if _PROTOCOL.value == "grpc":
        return serving.grpc_predict(
            server,
            _MODEL_NAME.value,
            images,
            signature_name=_SIGNATURE_NAME.value,
            model_version=_MODEL_VERSION.value,
            output_filter=(serving.SEMANTIC_PREDICTIONS,),
            timeout=_TIMEOUT.value,
        )
    return serving.rest_predict(
        serving.rest_url(server, _MODEL_NAME.value, _MODEL_VERSION.value),
        images,
        signature_name=_SIGNATURE_NAME.value,
        timeout=_TIMEOUT.value,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    # pylint: disable=import-outside-toplevel
    import grpc

    from deeplab_dpc.export import serving

    # pylint: enable=import-outside-toplevel
    paths = expand_images(_IMAGES.value)
    check_outputs(paths)
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    for path in paths:
        try:
            image = serving.read_image(path, _SIGNATURE_NAME.value)
            outputs = predict([image])
            written = serving.write_prediction(
                outputs[serving.SEMANTIC_PREDICTIONS][0],
                _OUTPUT_DIR.value,
                path,
                colormap=_COLORMAP.value,
            )
        except grpc.RpcError as e:
            raise SystemExit(
                f"error: {path}: the server answered {e.code().name}: {e.details()}"
            ) from e
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: {path}: {e}") from e
        print(f"{path} -> {', '.join(written)}")


def run():
    cli.run(main, __name__, required=["images", "output_dir"])


if __name__ == "__main__":
    run()
