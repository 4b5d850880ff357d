"""Fine-tuning from a checkpoint of the training program (DeepLab's flags).

DeepLab's `tf_initial_checkpoint`, `initialize_last_layer` and
`last_layers_contain_logits_only`: `restore_initial_checkpoint` initialises
a model's weights (not an optimizer's, not a step) from a checkpoint that
`trainer.run` wrote, matching variables by their Keras path, and can leave
the last layers (the logits, or the logits, head and decoder) freshly
initialised to fine-tune with another number of classes. The eval, vis and
export programs load trained models the same way.

It also takes DeepLab's own TF1 checkpoints (name-based, no object graph:
a model-zoo checkpoint or a backbone-only ImageNet one), through
`models.tf1_checkpoint`: the same last-layer semantics, and a checkpoint
that holds only a backbone leaves the head, decoder and logits initialised
(what DeepLab's `ignore_missing_vars` restore does with them).
"""

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from deeplab_dpc.models import deeplab
from deeplab_dpc.models import tf1_checkpoint

# The modules (`deeplab.MODULES`) that DeepLab's "last layers" cover.
LOGITS_MODULES = ("logits",)
LAST_LAYER_MODULES = ("logits", "head", "decoder")

# Names in the object graph of the checkpoints `trainer.run` writes.
_MODEL_KEY = "model"
_OPTIMIZER_KEY = "optimizer"
_OPTIMIZER_VARIABLES_KEY = "_trainable_variables"
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VARIABLE_VALUE = "VARIABLE_VALUE"


def resolve_initial_checkpoint(path):
    """The checkpoint prefix `--tf_initial_checkpoint` names.

    Args:
      path: str, a checkpoint prefix or a directory of checkpoints (its
        latest), or a folder holding one checkpoint and no `checkpoint`
        file (the contents of a DeepLab model-zoo tarball).

    Returns:
      str, the checkpoint prefix (for a directory, its latest checkpoint).

    Raises:
      FileNotFoundError: when there is no checkpoint at `path`.
    """
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            indexes = tf.io.gfile.glob(tf.io.gfile.join(path, "*.index"))
            if len(indexes) == 1:
                return indexes[0][: -len(".index")]
            raise FileNotFoundError(
                f"--tf_initial_checkpoint={path!r} is a directory without a "
                f"checkpoint (or with {len(indexes)} *.index files and no "
                "'checkpoint' file naming the latest)"
            )
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(
            f"--tf_initial_checkpoint={path!r}: no checkpoint there (neither a "
            f"directory of checkpoints nor a prefix with {path + '.index'!r})"
        )
    return path


def is_tf1_checkpoint(path):
    """True for a TF1 name-based checkpoint (DeepLab's), False for ours.

    Args:
      path: str, a checkpoint prefix.

    Returns:
      bool: the checkpoint has no object graph (TF2's `tf.train.Checkpoint`
      writes one, TF1's `Saver` does not).
    """
    return not tf.train.load_checkpoint(path).has_tensor(_OBJECT_GRAPH_KEY)


def tf1_excluded_modules(
    path, initialize_last_layer=True, last_layers_contain_logits_only=False
):
    """The modules a TF1 checkpoint leaves as initialised (DeepLab's flags).

    A checkpoint with only backbone variables (an ImageNet one) leaves the
    head, decoder and logits initialised whatever the flags say.
    """
    names = [
        n
        for n in tf.train.load_checkpoint(path).get_variable_to_shape_map()
        if not tf1_checkpoint.skip_reason(n)
    ]
    roots = set(tf1_checkpoint.NETWORK_SCOPES.values())
    if names and all(n.split("/")[0] in roots for n in names):
        return tf1_checkpoint.LAST_LAYER_MODULES
    return tf1_checkpoint.excluded_modules(
        initialize_last_layer, last_layers_contain_logits_only
    )


def _restore_tf1(model, path, model_variant, exclude_modules):
    """`restore_initial_checkpoint` for a TF1 checkpoint (DeepLab's names)."""
    if model_variant is None:
        raise ValueError(
            f"--tf_initial_checkpoint={path!r} is a TF1 checkpoint: its variable "
            "names depend on the backbone, pass model_variant"
        )
    try:
        report = tf1_checkpoint.import_tf1_checkpoint(
            model, path, model_variant, exclude_modules=exclude_modules
        )
    except tf1_checkpoint.CheckpointMismatchError as e:
        raise ValueError(f"--tf_initial_checkpoint={path!r}: {e}") from e
    logging.info("Initialised from DeepLab's TF1 checkpoint:\n%s", report.format_table())
    skipped = [
        layer.name
        for layer in model.layers
        if layer.weights and deeplab.module_of(layer.name) in exclude_modules
    ]
    restored = [
        layer.name
        for layer in model.layers
        if layer.weights and deeplab.module_of(layer.name) not in exclude_modules
    ]
    return {
        "checkpoint": report.checkpoint,
        "restored": restored,
        "skipped": skipped,
        "missing": [],
        "unused": [],
        "tf1_report": report,
    }


def _checkpoint_model_variables(reader):
    """The model variables of a checkpoint of the training program, by Keras path.

    Walks the checkpoint's object graph from its `model` and from the
    optimizer's `_trainable_variables` (Keras 3 saves each variable once, the
    trainable ones of sublayers held in Python lists only there) and reads
    each variable's `full_name`, the Keras variable path ("logits/kernel").

    Args:
      reader: a `tf.train.CheckpointReader`.

    Returns:
      dict: variable path -> checkpoint key.

    Raises:
      ValueError: when the checkpoint has no `model` object, or two of its
        variables share a path.
    """
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))

    def child(node_id, name):
        for ref in graph.nodes[node_id].children:
            if ref.local_name == name:
                return ref.node_id
        return None

    model_id = child(0, _MODEL_KEY)
    if model_id is None:
        raise ValueError(
            "--tf_initial_checkpoint is not a checkpoint of this training "
            f"program: it has no '{_MODEL_KEY}' object"
        )
    roots = [model_id]
    optimizer_id = child(0, _OPTIMIZER_KEY)
    if optimizer_id is not None:
        trainable_id = child(optimizer_id, _OPTIMIZER_VARIABLES_KEY)
        if trainable_id is not None:
            roots.append(trainable_id)
    paths, seen, stack = {}, set(roots), list(roots)
    while stack:
        node = graph.nodes[stack.pop()]
        for attribute in node.attributes:
            if attribute.name != _VARIABLE_VALUE or not attribute.full_name:
                continue
            key = attribute.checkpoint_key
            if paths.setdefault(attribute.full_name, key) != key:
                raise ValueError(
                    f"--tf_initial_checkpoint has two variables named "
                    f"{attribute.full_name!r}"
                )
        for ref in node.children:
            if ref.node_id not in seen:
                seen.add(ref.node_id)
                stack.append(ref.node_id)
    return paths


def _is_weight(variable):
    """True for the float variables (not e.g. a dropout's RNG state)."""
    return tf.as_dtype(variable.dtype).is_floating


def _check_shapes(layer, found, saved, shapes):
    """Raises ValueError when a checkpoint weight's shape differs from the model's."""
    for variable in found:
        shape = tuple(shapes[saved[variable.path]])
        if shape == tuple(variable.shape):
            continue
        message = (
            f"--tf_initial_checkpoint's {variable.path} has shape {shape} but "
            f"the model's has shape {tuple(variable.shape)}"
        )
        if layer.name == deeplab.LOGITS_LAYER:
            raise ValueError(
                f"{message} (another number of classes?); "
                "--initialize_last_layer=false fine-tunes with a new "
                "number of classes (the logits are then freshly initialised)"
            )
        raise ValueError(f"{message} (another architecture?)")


def _log_restore(path, restored, skipped, missing, unused):
    logging.info(
        "Initialised from %s: restored %d layers; skipped %d (%s).",
        path,
        len(restored),
        len(skipped),
        ", ".join(skipped) or "none",
    )
    if missing:
        logging.warning(
            "--tf_initial_checkpoint has no value for %d weights, left as "
            "initialised: %s",
            len(missing),
            ", ".join(missing),
        )
    if unused:
        logging.warning(
            "%d model variables of --tf_initial_checkpoint were not used: %s",
            len(unused),
            ", ".join(unused),
        )


def restore_initial_checkpoint(
    model,
    path,
    *,
    initialize_last_layer=True,
    last_layers_contain_logits_only=False,
    model_variant=None,
):
    """Initialises `model`'s weights from a checkpoint of the training program.

    Or from DeepLab's TF1 checkpoint (`is_tf1_checkpoint`), mapped by
    `tf1_checkpoint.import_tf1_checkpoint` (all or nothing: every variable
    of the restored modules must be there with its shape); a backbone-only
    one (ImageNet) restores the backbone alone (`tf1_excluded_modules`).

    Only the model is restored (not the optimizer nor the step). Variables
    are matched by their Keras path (`variable.path`, e.g. "logits/kernel"),
    which the checkpoint's object graph stores as each variable's
    `full_name`: the keys alone do not do, as Keras 3 saves a trainable
    variable once, often under `optimizer/_trainable_variables/<i>`. Weights
    a checkpoint lacks (e.g. the branches' batch-norm statistics in
    checkpoints written before `conv_bn.track_sublayers` made list-held
    sublayers visible to `tf.train.Checkpoint`) keep their initialisation and
    are logged as a warning. Layers of the skipped last layers keep their
    fresh initialisation.

    Args:
      model: a DeepLab Keras model (`deeplab.build_deeplab`).
      path: str, a checkpoint prefix or a directory (its latest checkpoint).
      initialize_last_layer: bool; False skips the last layers.
      last_layers_contain_logits_only: bool; the last layers are the logits
        layer only (True) or the logits, head and decoder (False), the
        modules of `deeplab.MODULES`.
      model_variant: str, the model's backbone; needed for TF1 checkpoints
        (DeepLab's variable names depend on it).

    Returns:
      dict with "checkpoint" (the path read), "restored" and "skipped"
      (layer names; layers without weights are in neither), "missing"
      (paths of weights of restored layers absent from the checkpoint) and
      "unused" (checkpoint model variables the model did not take); for
      a TF1 checkpoint also "tf1_report" (a `tf1_checkpoint.ImportReport`).

    Raises:
      FileNotFoundError: when there is no checkpoint at `path`.
      ValueError: when the checkpoint is not one of the training program, when the
        logits shapes differ and `initialize_last_layer` is True, or when
        the architectures differ (a restored layer with no weight in the
        checkpoint, or a weight of another shape).
    """
    path = resolve_initial_checkpoint(path)
    if is_tf1_checkpoint(path):
        exclude = tf1_excluded_modules(
            path, initialize_last_layer, last_layers_contain_logits_only
        )
        return _restore_tf1(model, path, model_variant, exclude)
    reader = tf.train.load_checkpoint(path)
    saved = _checkpoint_model_variables(reader)
    shapes = reader.get_variable_to_shape_map()
    skipped_modules = ()
    if not initialize_last_layer:
        skipped_modules = (
            LOGITS_MODULES if last_layers_contain_logits_only else LAST_LAYER_MODULES
        )
    restored, skipped, missing, used = [], [], [], set()
    for layer in model.layers:
        weights = [v for v in layer.variables if _is_weight(v)]
        if not weights:
            continue
        if deeplab.module_of(layer.name) in skipped_modules:
            skipped.append(layer.name)
            used.update(v.path for v in weights)
            continue
        found = [v for v in weights if v.path in saved]
        if not found:
            raise ValueError(
                f"--tf_initial_checkpoint={path!r} has no weight of layer "
                f"{layer.name!r} (another architecture?)"
            )
        _check_shapes(layer, found, saved, shapes)
        for variable in found:
            variable.assign(reader.get_tensor(saved[variable.path]))
            used.add(variable.path)
        missing.extend(v.path for v in weights if v.path not in saved)
        restored.append(layer.name)
    unused = sorted(set(saved) - used)
    _log_restore(path, restored, skipped, missing, unused)
    return {
        "checkpoint": path,
        "restored": restored,
        "skipped": skipped,
        "missing": missing,
        "unused": unused,
    }
