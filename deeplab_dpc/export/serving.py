"""The TF Serving contract of exported models, and a client for it.

A SavedModel of `saved_model.export_saved_model` has two signatures:

- `serving_default`: `ImageTensor`, uint8 `[batch, height, width, 3]`;
- `predict_images`: `images`, string `[batch]` of encoded JPEG/PNG files of
  one size;

both giving `SemanticPredictions` (int32 `[batch, height, width]`) and
`SemanticProbabilities` (float32 `[batch, height, width, num_classes]`) at
the images' own size.

This module turns images into TF Serving requests (gRPC `PredictRequest`
protos of `tensorflow-serving-api`, or REST JSON bodies with base64 strings)
and responses back into numpy arrays; `grpc_predict` and `rest_predict` call
a running `tensorflow_model_server`. `read_image` and `write_prediction` are
the file ends of `export/serving_client.py`.
"""

import base64
import io
import json
import os
import urllib.error
import urllib.request

import grpc
import numpy as np
from PIL import Image
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from deeplab_dpc import file_io
from deeplab_dpc.data import registry

SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"
SIGNATURES = (SERVING_DEFAULT, PREDICT_IMAGES)
IMAGE_TENSOR = "ImageTensor"
ENCODED_IMAGES = "images"
SEMANTIC_PREDICTIONS = "SemanticPredictions"
SEMANTIC_PROBABILITIES = "SemanticProbabilities"
# The input of each signature.
INPUTS = {SERVING_DEFAULT: IMAGE_TENSOR, PREDICT_IMAGES: ENCODED_IMAGES}
# The dtype of each output (REST returns JSON numbers).
OUTPUT_DTYPES = {SEMANTIC_PREDICTIONS: np.int32, SEMANTIC_PROBABILITIES: np.float32}
# tensorflow_model_server's default ports.
GRPC_PORT = 8500
REST_PORT = 8501


def signature_input(images, signature_name=SERVING_DEFAULT):
    """The input tensor of a signature, checked.

    Args:
      images: for `serving_default`, a uint8 `[batch, height, width, 3]`
        array or a list of `[height, width, 3]` uint8 arrays of one size; for
        `predict_images`, a list of encoded JPEG/PNG files (bytes) of images
        of one size.
      signature_name: one of `SIGNATURES`.

    Returns:
      (input name, numpy array: uint8 `[batch, height, width, 3]` or object
      `[batch]` of bytes).

    Raises:
      ValueError: for an unknown signature, no image, or images of another
        dtype, rank or channel count, naming what was expected.
    """
    if signature_name not in SIGNATURES:
        raise ValueError(
            f"unknown signature {signature_name!r}; choose one of {SIGNATURES}"
        )
    if signature_name == PREDICT_IMAGES:
        if isinstance(images, bytes) or not all(
            isinstance(image, bytes) for image in images
        ):
            raise ValueError(
                f"{PREDICT_IMAGES} takes a list of encoded JPEG/PNG files (bytes)"
            )
        if not images:
            raise ValueError(f"{PREDICT_IMAGES}: no image given")
        return ENCODED_IMAGES, np.array(list(images), dtype=object)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{SERVING_DEFAULT}: no image given")
        shapes = {np.shape(image) for image in images}
        if len(shapes) > 1:
            raise ValueError(
                f"{SERVING_DEFAULT}: the images of one request must have one "
                f"size, got shapes {sorted(shapes)}; send them one by one"
            )
        images = np.stack(images)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{SERVING_DEFAULT} takes {IMAGE_TENSOR}: uint8 images [batch, "
            f"height, width, 3], got {images.dtype} {list(images.shape)}"
        )
    if not images.shape[0]:
        raise ValueError(f"{SERVING_DEFAULT}: no image given")
    return IMAGE_TENSOR, images


def predict_request(
    model_name,
    images,
    *,
    signature_name=SERVING_DEFAULT,
    model_version=None,
    output_filter=(),
):
    """A gRPC `PredictRequest` for a batch of images.

    Args:
      model_name: str, the served model's `--model_name`.
      images: see `signature_input`.
      signature_name: one of `SIGNATURES`.
      model_version: int or None (the latest version the server has).
      output_filter: names of the outputs to return (empty: all); e.g.
        (`SEMANTIC_PREDICTIONS`,) skips the large probabilities.

    Returns:
      A `predict_pb2.PredictRequest`.

    Raises:
      ValueError: for bad images (see `signature_input`).
    """
    name, array = signature_input(images, signature_name)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if model_version is not None:
        request.model_spec.version.value = int(model_version)
    dtype = tf.string if signature_name == PREDICT_IMAGES else tf.uint8
    request.inputs[name].CopyFrom(
        tf.make_tensor_proto(array, dtype=dtype, shape=array.shape)
    )
    request.output_filter.extend(output_filter)
    return request


def parse_predict_response(response):
    """The outputs of a `PredictResponse` as numpy arrays, by output name."""
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def rest_request_body(images, *, signature_name=SERVING_DEFAULT):
    """The JSON body of a REST `:predict` call (row format, "instances").

    Encoded images go as `{"b64": ...}` strings, pixel arrays as nested lists.

    Args:
      images: see `signature_input`.
      signature_name: one of `SIGNATURES`.

    Returns:
      A dict for `json.dumps`.

    Raises:
      ValueError: for bad images (see `signature_input`).
    """
    _, array = signature_input(images, signature_name)
    if signature_name == PREDICT_IMAGES:
        instances = [{"b64": base64.b64encode(data).decode("ascii")} for data in array]
    else:
        instances = array.tolist()
    return {"signature_name": signature_name, "instances": instances}


def parse_rest_response(body):
    """The outputs of a REST `:predict` response as numpy arrays, by name.

    Args:
      body: the parsed JSON: `{"predictions": [{output: value}, ...]}` (row
        format, one dict per image) or `{"outputs": {output: values}}`
        (columnar format).

    Returns:
      dict: output name -> array (`OUTPUT_DTYPES` for the known outputs).

    Raises:
      ValueError: for an error response or an unknown layout.
    """
    if "error" in body:
        raise ValueError(f"the server answered with an error: {body['error']}")
    if "outputs" in body and isinstance(body["outputs"], dict):
        columns = body["outputs"]
    elif "predictions" in body and all(
        isinstance(row, dict) for row in body["predictions"]
    ):
        rows = body["predictions"]
        names = rows[0] if rows else {}
        columns = {name: [row[name] for row in rows] for name in names}
    else:
        raise ValueError(
            "expected a REST predict response with 'predictions' (a list of "
            f"dicts of outputs) or 'outputs', got keys {sorted(body)}"
        )
    return {
        name: np.asarray(value, dtype=OUTPUT_DTYPES.get(name))
        for name, value in columns.items()
    }


def rest_url(host_port, model_name, model_version=None):
    """The REST predict URL of a model (its latest version when None)."""
    version = "" if model_version is None else f"/versions/{int(model_version)}"
    return f"http://{host_port}/v1/models/{model_name}{version}:predict"


def grpc_predict(
    host_port,
    model_name,
    images,
    *,
    signature_name=SERVING_DEFAULT,
    model_version=None,
    output_filter=(),
    timeout=60.0,
):
    """Calls `Predict` on a TF Serving gRPC endpoint.

    Args:
      host_port: str, e.g. "localhost:8500".
      model_name, images, signature_name, model_version, output_filter: see
        `predict_request`.
      timeout: float, seconds.

    Returns:
      dict: output name -> numpy array.

    Raises:
      ValueError: for bad images.
      grpc.RpcError: when the call fails (server down, unknown model, bad
        input), with the server's message.
    """
    request = predict_request(
        model_name,
        images,
        signature_name=signature_name,
        model_version=model_version,
        output_filter=output_filter,
    )
    # Probabilities of large images exceed gRPC's default 4 MB message limit.
    options = [
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
    ]
    with grpc.insecure_channel(host_port, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    return parse_predict_response(response)


def rest_predict(url, images, *, signature_name=SERVING_DEFAULT, timeout=60.0):
    """Calls a TF Serving REST `:predict` URL (see `rest_url`).

    Args:
      url: str, e.g. "http://localhost:8501/v1/models/deeplab:predict".
      images, signature_name: see `rest_request_body`.
      timeout: float, seconds.

    Returns:
      dict: output name -> numpy array.

    Raises:
      ValueError: for bad images, or when the server answers with an error
        (its message included).
      urllib.error.URLError: when the server cannot be reached.
    """
    data = json.dumps(rest_request_body(images, signature_name=signature_name))
    request = urllib.request.Request(
        url,
        data=data.encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")
        raise ValueError(f"{url}: HTTP {error.code}: {detail}") from error
    return parse_rest_response(body)


def read_image(path, signature_name=SERVING_DEFAULT):
    """An image file as a signature takes it.

    Args:
      path: str, a JPEG/PNG (or any Pillow-readable) file.
      signature_name: one of `SIGNATURES`.

    Returns:
      For `serving_default`, the RGB pixels (uint8 `[height, width, 3]`); for
      `predict_images`, the file's bytes (decoded by the server).

    Raises:
      OSError: when the file cannot be read or decoded, naming it.
    """
    with open(path, "rb") as f:
        data = f.read()
    if signature_name == PREDICT_IMAGES:
        return data
    try:
        return np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    except OSError as error:
        raise OSError(f"{path}: not an image Pillow can read ({error})") from error


def prediction_paths(output_dir, image_path, colormap=None):
    """Where `write_prediction` puts an image's outputs.

    Returns:
      [`<output_dir>/<stem>_prediction.png`] plus
      `<stem>_prediction_colored.png` when a colormap is given.
    """
    stem = os.path.splitext(os.path.basename(image_path))[0]
    paths = [os.path.join(output_dir, f"{stem}_prediction.png")]
    if colormap:
        paths.append(os.path.join(output_dir, f"{stem}_prediction_colored.png"))
    return paths


def _write_png(array, path):
    """Writes a PNG through a temporary file renamed into place."""
    png = io.BytesIO()
    Image.fromarray(array).save(png, format="PNG")
    file_io.write_bytes(path, png.getvalue())


def write_prediction(labels, output_dir, image_path, *, colormap=None):
    """Writes predicted labels as PNG files (see `prediction_paths`).

    Args:
      labels: int `[height, width]` class ids (`SemanticPredictions[i]`).
      output_dir: str, an existing folder.
      image_path: str, the input image (names the outputs).
      colormap: None, or a name of `registry.COLORMAPS` to also write the
        labels in colour.

    Returns:
      list of the paths written. The label PNG is 8-bit, or 16-bit when a
      class id exceeds 255.

    Raises:
      ValueError: for a colormap of a class id beyond its 256 colours.
    """
    labels = np.asarray(labels)
    paths = prediction_paths(output_dir, image_path, colormap)
    colors = None
    if colormap:
        if labels.max(initial=0) > 255:
            raise ValueError(
                f"{image_path}: class {labels.max()} has no colour in the "
                f"{colormap!r} colormap (256 colours)"
            )
        colors = registry.colormap(colormap)[labels]
    dtype = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
    _write_png(labels.astype(dtype), paths[0])
    if colors is not None:
        _write_png(colors, paths[1])
    return paths
