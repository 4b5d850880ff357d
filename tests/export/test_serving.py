"""The TF Serving client: request and response conversion (gRPC protos and
REST JSON) checked against a real SavedModel, and the client over real
gRPC/HTTP connections to a stand-in server.

`tensorflow_model_server` cannot be installed here, so `_serve_grpc` and
`_serve_rest` do what it does for `Predict` (decode the request's tensors,
call the signature, encode the outputs) with the same protos; the checks
are that what the client sends reaches the SavedModel as the same tensors
and that what comes back equals a direct call. The SavedModel is of a small
pixel-wise Keras model (the conversions do not depend on the model; it
exports in a second).
"""

import base64
from concurrent import futures
import http.server
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import urllib.error

import grpc
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from deeplab_dpc.data import registry
from deeplab_dpc.export import saved_model
from deeplab_dpc.export import serving
from deeplab_dpc.models import deeplab

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL_NAME = "deeplab"
OPTIONS = deeplab.ModelOptions(
    model_variant="mobilenet_v2",
    depth_multiplier=0.35,
    crop_size=(33, 33),
    output_stride=16,
    num_classes=7,
)


@pytest.fixture(name="loaded", scope="module")
def _loaded(tmp_path_factory):
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((33, 33, 3))
    x = tf.keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(7, 3, padding="same")(x))
    path = saved_model.export_saved_model(
        model, OPTIONS, str(tmp_path_factory.mktemp("export"))
    )
    return tf.saved_model.load(path)


def _images(seed, batch, height=20, width=30):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _direct(loaded, signature_name, images):
    """The SavedModel called directly, as numpy arrays."""
    name, array = serving.signature_input(images, signature_name)
    outputs = loaded.signatures[signature_name](**{name: tf.constant(array)})
    return {key: value.numpy() for key, value in outputs.items()}


def _serve_grpc(loaded, request):
    """What tensorflow_model_server does with a PredictRequest."""
    signature = loaded.signatures[request.model_spec.signature_name]
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    outputs = signature(**inputs)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for key, value in outputs.items():
        if not request.output_filter or key in request.output_filter:
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


def _serve_rest(loaded, body):
    """What tensorflow_model_server does with a REST row-format body."""
    signature_name = body.get("signature_name", serving.SERVING_DEFAULT)
    instances = body["instances"]
    if all(isinstance(i, dict) and set(i) == {"b64"} for i in instances):
        array = tf.constant([base64.b64decode(i["b64"]) for i in instances])
    else:
        array = tf.constant(np.array(instances, dtype=np.uint8))
    name = serving.INPUTS[signature_name]
    outputs = loaded.signatures[signature_name](**{name: array})
    rows = len(instances)
    return {
        "predictions": [
            {key: value[i].numpy().tolist() for key, value in outputs.items()}
            for i in range(rows)
        ]
    }


def _assert_outputs_equal(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], key)


@pytest.mark.parametrize("signature_name", serving.SIGNATURES)
def test_predict_request_and_response_round_trip(loaded, signature_name):
    images = _images(1, 2)
    if signature_name == serving.PREDICT_IMAGES:
        images = [_png(image) for image in images]
    request = serving.predict_request(
        MODEL_NAME, images, signature_name=signature_name, model_version=1
    )
    received = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert received.model_spec.name == MODEL_NAME
    assert received.model_spec.signature_name == signature_name
    assert received.model_spec.version.value == 1
    assert list(received.inputs) == [serving.INPUTS[signature_name]]
    response = _serve_grpc(loaded, received)
    parsed = serving.parse_predict_response(
        predict_pb2.PredictResponse.FromString(response.SerializeToString())
    )
    want = _direct(loaded, signature_name, images)
    assert want[serving.SEMANTIC_PREDICTIONS].shape == (2, 20, 30)
    _assert_outputs_equal(parsed, want)


def test_predict_request_sends_the_pixels_and_bytes_unchanged():
    images = _images(2, 3)
    request = serving.predict_request(MODEL_NAME, images, output_filter=["x"])
    proto = request.inputs[serving.IMAGE_TENSOR]
    assert proto.dtype == tf.uint8.as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(proto), images)
    assert list(request.output_filter) == ["x"]
    assert not request.model_spec.HasField("version")  # the latest version
    encoded = [_png(image) for image in images]
    request = serving.predict_request(
        MODEL_NAME, encoded, signature_name=serving.PREDICT_IMAGES
    )
    assert list(tf.make_ndarray(request.inputs[serving.ENCODED_IMAGES])) == encoded


@pytest.mark.parametrize("signature_name", serving.SIGNATURES)
def test_rest_json_round_trip(loaded, signature_name):
    images = _images(3, 2)
    if signature_name == serving.PREDICT_IMAGES:
        images = [_png(image) for image in images]
    body = json.loads(
        json.dumps(serving.rest_request_body(images, signature_name=signature_name))
    )
    assert body["signature_name"] == signature_name
    if signature_name == serving.PREDICT_IMAGES:
        assert [base64.b64decode(i["b64"]) for i in body["instances"]] == images
    else:
        np.testing.assert_array_equal(np.array(body["instances"]), images)
    response = json.loads(json.dumps(_serve_rest(loaded, body)))
    _assert_outputs_equal(
        serving.parse_rest_response(response), _direct(loaded, signature_name, images)
    )


def test_parse_rest_response_layouts_and_errors():
    columnar = {"outputs": {serving.SEMANTIC_PREDICTIONS: [[[1, 2]]]}}
    parsed = serving.parse_rest_response(columnar)
    assert parsed[serving.SEMANTIC_PREDICTIONS].dtype == np.int32
    with pytest.raises(ValueError, match="server answered with an error: boom"):
        serving.parse_rest_response({"error": "boom"})
    with pytest.raises(ValueError, match="expected a REST predict response"):
        serving.parse_rest_response({"predictions": [[1, 2]]})


def test_bad_images_are_refused_before_sending():
    four = np.zeros([4, 4, 3], np.uint8)
    cases = [
        (np.zeros([1, 4, 4, 3], np.float32), "serving_default", "uint8 images"),
        (four, "serving_default", r"got uint8 \[4, 4, 3\]"),
        (np.zeros([1, 4, 4, 4], np.uint8), "serving_default", r"\[1, 4, 4, 4\]"),
        ([four, np.zeros([5, 4, 3], np.uint8)], "serving_default", "one size"),
        ([], "serving_default", "no image"),
        (four[None], "predict_images", "encoded JPEG/PNG"),
        (b"\x89PNG", "predict_images", "list of encoded"),
        ([], "predict_images", "no image"),
        ([b"x"], "classify", "unknown signature"),
    ]
    for images, signature_name, message in cases:
        with pytest.raises(ValueError, match=message):
            serving.predict_request(MODEL_NAME, images, signature_name=signature_name)
        with pytest.raises(ValueError, match=message):
            serving.rest_request_body(images, signature_name=signature_name)


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, loaded):
        self.loaded = loaded

    def Predict(self, request, context):  # pylint: disable=invalid-name
        if request.model_spec.name != MODEL_NAME:
            context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found")
        return _serve_grpc(self.loaded, request)


class _RestHandler(http.server.BaseHTTPRequestHandler):
    loaded = None

    def do_POST(self):  # pylint: disable=invalid-name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pattern = rf"/v1/models/{MODEL_NAME}(/versions/\d+)?:predict"
        if not re.fullmatch(pattern, self.path):
            self._reply(404, {"error": f"Servable not found for {self.path}"})
        else:
            self._reply(200, _serve_rest(self.loaded, body))

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        del args


@pytest.fixture(name="servers", scope="module")
def _servers(loaded):
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionService(loaded), grpc_server
    )
    grpc_port = grpc_server.add_insecure_port("localhost:0")
    grpc_server.start()
    handler = type("Handler", (_RestHandler,), {"loaded": loaded})
    http_server = http.server.ThreadingHTTPServer(("localhost", 0), handler)
    thread = threading.Thread(target=http_server.serve_forever, daemon=True)
    thread.start()
    yield {
        "grpc": f"localhost:{grpc_port}",
        "rest": f"localhost:{http_server.server_address[1]}",
    }
    http_server.shutdown()
    http_server.server_close()
    thread.join()
    grpc_server.stop(grace=None)


def test_grpc_and_rest_predict_over_connections(loaded, servers):
    images = _images(4, 2)
    want = _direct(loaded, serving.SERVING_DEFAULT, images)
    got = serving.grpc_predict(
        servers["grpc"],
        MODEL_NAME,
        images,
        model_version=1,
        output_filter=(serving.SEMANTIC_PREDICTIONS,),
    )
    assert list(got) == [serving.SEMANTIC_PREDICTIONS]  # probabilities not sent
    np.testing.assert_array_equal(
        got[serving.SEMANTIC_PREDICTIONS], want[serving.SEMANTIC_PREDICTIONS]
    )
    url = serving.rest_url(servers["rest"], MODEL_NAME, 1)
    assert url == f"http://{servers['rest']}/v1/models/deeplab/versions/1:predict"
    _assert_outputs_equal(serving.rest_predict(url, images), want)
    with pytest.raises(grpc.RpcError) as error:
        serving.grpc_predict(servers["grpc"], "other", images)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ValueError, match="HTTP 404.*Servable not found"):
        serving.rest_predict(serving.rest_url(servers["rest"], "other"), images)
    with pytest.raises(urllib.error.URLError):
        serving.rest_predict("http://localhost:1/v1/models/x:predict", images)


def test_write_prediction(tmp_path):
    labels = np.array([[0, 1], [2, 255]], np.int32)
    paths = serving.write_prediction(
        labels, str(tmp_path), "a/b.jpg", colormap="pascal"
    )
    assert paths == [
        str(tmp_path / "b_prediction.png"),
        str(tmp_path / "b_prediction_colored.png"),
    ]
    np.testing.assert_array_equal(np.array(Image.open(paths[0])), labels)
    colors = registry.colormap("pascal")
    np.testing.assert_array_equal(np.array(Image.open(paths[1])), colors[labels])
    many = np.array([[0, 300]], np.int32)  # more than 256 classes: 16-bit
    (path,) = serving.write_prediction(many, str(tmp_path), "c.png")
    np.testing.assert_array_equal(np.array(Image.open(path)), many)
    with pytest.raises(ValueError, match="class 300 has no colour"):
        serving.write_prediction(many, str(tmp_path), "d.png", colormap="pascal")
    assert sorted(os.listdir(tmp_path)) == [
        "b_prediction.png",
        "b_prediction_colored.png",
        "c_prediction.png",
    ]


def test_client_program_over_rest(loaded, servers, tmp_path):
    images = {"first": _images(5, 1)[0], "second": _images(6, 1, 25, 15)[0]}
    for name, image in images.items():
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    args = [
        sys.executable,
        str(REPO / "export/serving_client.py"),
        f"--images={tmp_path / '*.png'}",
        f"--output_dir={tmp_path / 'out'}",
        f"--server={servers['rest']}",
        "--protocol=rest",
        "--colormap=cityscapes",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, image in images.items():
        assert f"{tmp_path / name}.png -> " in proc.stdout
        want = _direct(loaded, serving.PREDICT_IMAGES, [_png(image)])
        labels = np.array(Image.open(tmp_path / f"out/{name}_prediction.png"))
        np.testing.assert_array_equal(labels, want[serving.SEMANTIC_PREDICTIONS][0])
        colored = np.array(Image.open(tmp_path / f"out/{name}_prediction_colored.png"))
        np.testing.assert_array_equal(colored, registry.colormap("cityscapes")[labels])
