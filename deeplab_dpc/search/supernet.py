"""A weight-sharing supernet over the Dense Prediction Cell space.

Every branch i of the supernet holds every op of the space (or of an `ops`
subset), once for each kind of input it may read: the backbone feature F
(`feature_channels` channels) and, from branch 1 on, an earlier branch's
`filters`-channel output; two weight sets per op, since the input channels
differ. Each op is the stand-alone layer itself (`make_branch_op`, as
`DensePredictionCell` builds it). The concat projection (with the cell's
dropout), DeepLab's logits and the upsampling are shared by all paths.

A path (a `CellSpec`) is an int32 `[num_branches, 2]` tensor (`encode`): the
op's index in `ops` and the input (-1 for F, else an earlier branch) per
branch. Each branch runs the chosen layer through `tf.switch_case`, so one
traced graph serves every path: training, recalibration and scoring never
retrace for another cell.

Only the path changes in a training step (`train_step`): the update is
DeepLab's SGD with momentum (Keras' `SGD` rule, `m = momentum * m - lr * g;
w += m`) applied inside the same `tf.switch_case`, so the unselected ops'
weights and momenta stay exactly as they were (a zero gradient never moves
them through momentum), weight decay (the layers' L2 losses) is counted
only for the path, and only the path's batch norms update their moving
statistics (a branch not taken runs no op). The shared layers update
every step.

`recalibrate(cell, batches)` resets the path's (and the projection's)
moving statistics and recomputes them on a few train batches in training
mode without dropout (so a cell's score is deterministic, and the
projection's statistics are those of its inputs at inference),
bias-corrected: after K batches from zero the moving average
`(1 - mu) * sum(mu**(K - k) * b_k)` is divided by `1 - mu**K`, i.e. the
batch statistics averaged with weights `mu**(K - k)` (all nearly 1 for
DeepLab's mu). Nothing but those statistics changes. `confusion` then
scores the path in the same graph; `inherit(cell)` returns the stand-alone
`proxy.build_proxy_model` model carrying the path's weights, which computes
the same function (tests/search/test_supernet.py).
"""

import dataclasses
import functools
import re
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.evaluation import metrics
from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.layers import fast_dropout
from deeplab_dpc.layers import pyramid_pooling
from deeplab_dpc.layers import resize
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import proxy
from deeplab_dpc.training import losses as losses_lib

# `tf.switch_case` gives every branch function a placeholder for every
# other branch's captured variables: quadratic in the branches. Choices are
# made by a tree of switches of at most this many branches instead.
_SWITCH_ARITY = 4
KIND_FEATURE = "F"
KIND_BRANCH = "B"
_STATS = ("moving_mean", "moving_variance")


def normalize_ops(ops=None) -> tuple:
    """The ops of a supernet as `BranchSpec`s with `input=-1`.

    Args:
      ops: None (all 81 ops, `cell_spec.all_ops()` order), or a sequence of
        op tokens (`cell_spec.op_token`, e.g. "sep3x3@6x21") or `BranchSpec`s.

    Raises:
      ValueError: for an unknown token, a repeated op or an empty sequence.
    """
    if ops is None:
        return cell_spec.all_ops()
    by_token = {cell_spec.op_token(op): op for op in cell_spec.all_ops()}
    out = []
    for op in ops:
        if isinstance(op, cell_spec.BranchSpec):
            op = cell_spec.op_token(op)
        if op not in by_token:
            raise ValueError(f"op {op!r} is not one of the 81 op tokens")
        out.append(by_token[op])
    if not out or len(set(out)) != len(out):
        raise ValueError(f"ops must be distinct and not empty, got {list(ops)!r}")
    return tuple(out)


def _layer_name(branch, kind, op):
    token = re.sub(r"[^A-Za-z0-9]", "_", cell_spec.op_token(op))
    return f"b{branch}_{kind}_{token}"


def tree_switch(index, branch_fns, arity=_SWITCH_ARITY):
    """`tf.switch_case(index, branch_fns)` as a tree of small switches.

    Same result; the graph grows as `n log n` in the branches, not `n**2`.
    """
    if len(branch_fns) <= arity:
        return tf.switch_case(index, branch_fns)
    size = -(-len(branch_fns) // arity)
    chunks = [branch_fns[j : j + size] for j in range(0, len(branch_fns), size)]
    return tf.switch_case(
        index // size,
        [
            functools.partial(tree_switch, index - j * size, chunk, arity)
            for j, chunk in enumerate(chunks)
        ],
    )


def _stats(layer):
    return [v for v in layer.non_trainable_variables if v.name in _STATS]


class Supernet:
    """All cells of `num_branches` branches over `ops` on cached features.

    Args:
      options: `deeplab.ModelOptions` of the proxy (`proxy.model_options(cache,
        None, ...)`): crop, output stride, classes, weight decay and batch
        norm settings (its head fields are ignored).
      feature_channels: int, channels of the cached feature F.
      num_branches: int >= 1, B.
      ops: see `normalize_ops`.
      dropout_rate: float, the cell's dropout before the projection.
      ignore_label: int, the label `confusion` skips.
      seed: int or None, seeds the layers' initialisation.

    Example:
    >>> net = Supernet(options, 320, num_branches=2, ops=["conv1x1", "pool@2x2"])
    >>> logits = net.forward(features, net.encode(cell), training=False)
    """

    def __init__(
        self,
        options,
        feature_channels: int,
        *,
        num_branches: int = 5,
        ops: Optional[Sequence] = None,
        dropout_rate: float = 0.1,
        ignore_label: int = 255,
        seed: Optional[int] = None,
    ):
        if isinstance(num_branches, bool) or int(num_branches) < 1:
            raise ValueError(f"num_branches is {num_branches!r}; it must be >= 1")
        if seed is not None:
            tf.keras.utils.set_random_seed(seed)
        self.options = options
        self.num_branches = int(num_branches)
        self.ops = normalize_ops(ops)
        self.feature_channels = int(feature_channels)
        self.feature_size = pyramid_pooling.feature_size(
            options.crop_size, options.output_stride
        )
        self.dropout_rate = float(dropout_rate)
        self.ignore_label = int(ignore_label)
        self._op_index = {op: j for j, op in enumerate(self.ops)}
        filters = 256
        self.filters = filters
        norm = dict(
            norm_momentum=options.norm_momentum,
            norm_epsilon=options.norm_epsilon,
            synchronized=options.synchronized,
        )
        feature_shape = [None, *self.feature_size, self.feature_channels]
        branch_shape = [None, *self.feature_size, filters]
        self.op_layers = []  # op_layers[i][k]: k < len(ops) reads F, else a branch.
        for i in range(self.num_branches):
            layers = []
            kinds = ((KIND_FEATURE, feature_shape),)
            if i > 0:
                kinds += ((KIND_BRANCH, branch_shape),)
            for kind, shape in kinds:
                for op in self.ops:
                    layer = dense_prediction_cell.make_branch_op(
                        op,
                        options.crop_size,
                        options.output_stride,
                        filters,
                        options.weight_decay,
                        options.image_pooling_crop_size,
                        name=_layer_name(i, kind, op),
                        **norm,
                    )
                    layer.build(tf.TensorShape(shape))
                    layers.append(layer)
            self.op_layers.append(layers)
        self.dropout = fast_dropout.dropout_class()(
            self.dropout_rate, name="concat_projection_dropout"
        )
        self.projection = conv_bn.ConvBN(
            filters,
            1,
            weight_decay=options.weight_decay,
            name="concat_projection",
            **norm,
        )
        self.projection.build(
            tf.TensorShape([None, *self.feature_size, filters * self.num_branches])
        )
        self.logits = deeplab.build_logits(options)
        self.logits.build(tf.TensorShape(branch_shape))
        self.upsample = resize.ResizeBilinear(
            options.crop_size, name=deeplab.UPSAMPLE_LAYER
        )
        self.shared_layers = (self.projection, self.logits)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self._slots = {}
        self._train_fn = None
        self._recalibrate_fn = None
        self._confusion_fn = None

    # -- paths ---------------------------------------------------------------

    @property
    def path_spec(self):
        return tf.TensorSpec([self.num_branches, 2], tf.int32, name="path")

    def encode(self, cell) -> np.ndarray:
        """The path of a cell: int32 `[B, 2]` of (op index in `ops`, input).

        Raises:
          ValueError: if the cell has another number of branches or an op
            outside `ops`.
        """
        cell = cell_spec.as_cell(cell)
        if len(cell) != self.num_branches:
            raise ValueError(
                f"the cell has {len(cell)} branches; the supernet has "
                f"{self.num_branches}"
            )
        path = np.zeros([self.num_branches, 2], np.int32)
        for i, branch in enumerate(cell):
            op = dataclasses.replace(branch, input=-1)
            if op not in self._op_index:
                raise ValueError(
                    f"branch {i}: op {cell_spec.op_token(op)} is not in the "
                    "supernet's ops"
                )
            path[i] = (self._op_index[op], branch.input)
        return path

    def layer_index(self, branch_index: int, branch) -> int:
        """Index in `op_layers[branch_index]` of the layer a `BranchSpec` uses."""
        k = self._op_index[dataclasses.replace(branch, input=-1)]
        return k if branch.input < 0 else len(self.ops) + k

    def path_layers(self, cell) -> list:
        """The op layers a cell uses, one per branch."""
        cell = cell_spec.as_cell(cell)
        self.encode(cell)  # Validates.
        return [self.op_layers[i][self.layer_index(i, b)] for i, b in enumerate(cell)]

    def _switch(self, path, fn):
        """Per branch, runs `fn(layer, source_kind_index)` for the path's layer.

        Returns the per-branch outputs of `tf.switch_case`; `fn` gets the
        layer and must return the same structure for every layer.
        """
        results = []
        n = len(self.ops)
        for i, layers in enumerate(self.op_layers):
            op, source = path[i, 0], path[i, 1]
            index = op if i == 0 else tf.where(source >= 0, n + op, op)
            results.append(
                tree_switch(
                    index, [functools.partial(fn, i, k, l) for k, l in enumerate(layers)]
                )
            )
        return results

    # -- the function --------------------------------------------------------

    def forward(
        self, features, path, training=False, return_losses=False, dropout=None
    ):
        """Logits `[batch, crop_h, crop_w, classes]` of the path's cell.

        Args:
          features: float32 `[batch, fh, fw, feature_channels]`.
          path: int32 `[B, 2]` (`encode`).
          training: bool (Python), batch norm and dropout mode.
          return_losses: also return the path's regularisation loss (the L2
            losses of the path's op layers and of the shared layers).
          dropout: bool or None (as `training`), whether the cell's dropout
            acts.
        """
        features = tf.convert_to_tensor(features, tf.float32)
        path = tf.convert_to_tensor(path, tf.int32)
        n = len(self.ops)
        outputs, reg = [], []
        for i, layers in enumerate(self.op_layers):
            op, source = path[i, 0], path[i, 1]
            if i == 0:
                index, src = op, None
            else:
                index = tf.where(source >= 0, n + op, op)
                src = tf.gather(tf.stack(outputs), tf.maximum(source, 0))

            def run(layer, x):
                y = layer(x, training=training)
                losses = layer.losses
                return y, (tf.add_n(losses) if losses else tf.zeros([]))

            branches = [
                functools.partial(run, layer, features if k < n else src)
                for k, layer in enumerate(layers)
            ]
            y, r = tree_switch(index, branches)
            y.set_shape([None, *self.feature_size, self.filters])
            outputs.append(y)
            reg.append(r)
        dropout = training if dropout is None else dropout
        x = self.dropout(tf.concat(outputs, axis=-1), training=dropout)
        x = self.projection(x, training=training)
        logits = self.upsample(self.logits(x), training=training)
        if not return_losses:
            return logits
        for layer in self.shared_layers:
            reg.extend(layer.losses)
        return logits, tf.add_n(reg)

    # -- variables -------------------------------------------------------------

    @property
    def all_layers(self):
        return [l for layers in self.op_layers for l in layers] + list(
            self.shared_layers
        )

    def get_layer(self, name):
        """The op or shared layer of that name.

        Raises:
          ValueError: if there is none.
        """
        for layer in self.all_layers:
            if layer.name == name:
                return layer
        raise ValueError(f"the supernet has no layer {name!r}")

    @property
    def variables(self):
        """Every weight of every layer (trainable, then moving statistics)."""
        return [v for layer in self.all_layers for v in layer.weights]

    def get_weights(self) -> dict:
        """{"<layer>:<j>": array} of every layer's `get_weights()`."""
        return {
            f"{layer.name}:{j}": w
            for layer in self.all_layers
            for j, w in enumerate(layer.get_weights())
        }

    def set_weights(self, weights: dict) -> None:
        """Sets every layer's weights from `get_weights()`'s dict.

        Raises:
          ValueError: naming a missing layer weight.
        """
        for layer in self.all_layers:
            values = []
            for j in range(len(layer.weights)):
                key = f"{layer.name}:{j}"
                if key not in weights:
                    raise ValueError(f"supernet weights lack {key}")
                values.append(weights[key])
            layer.set_weights(values)

    def save(self, path) -> None:
        """Writes the weights (and the step count) to an .npz file."""
        np.savez(path, __step__=int(self.step.numpy()), **self.get_weights())

    def load(self, path) -> None:
        """Reads weights written by `save`."""
        with np.load(path) as data:
            self.set_weights({k: data[k] for k in data.files if k != "__step__"})
            self.step.assign(int(data["__step__"]))

    # -- training --------------------------------------------------------------

    def _slot(self, variable):
        key = id(variable)
        if key not in self._slots:
            self._slots[key] = tf.Variable(
                tf.zeros_like(variable), trainable=False, name="momentum"
            )
        return self._slots[key]

    def make_train_step(self, schedule, momentum):
        """`step(features, labels, path) -> loss`, one masked SGD update.

        Args:
          schedule: callable(step) -> learning rate (e.g.
            `trainer.DeepLabLearningRate`); called with the steps taken.
          momentum: float, SGD momentum.

        The loss (the proxy's: pixel loss skipping `ignore_label`, plus the
        L2 losses of the path and the shared layers) is back-propagated by
        hand, branch by branch in reverse order: inside the branch's
        `tf.switch_case`, the chosen layer is run again under its own tape
        (its moving statistics put back, so they update once a step), gives
        the gradients of its weights and input, and is updated there.
        `tf.GradientTape` through a `tf.switch_case` would instead build, for
        every branch, zero gradients of every other branch's weights: a
        graph quadratic in the ops (a 2-branch, 16-op supernet took 35 s to
        trace that way, a 5-branch, 81-op one would take most of an hour).
        """
        for layer in self.all_layers:
            for v in layer.trainable_variables:
                self._slot(v)
        label_spec = tf.TensorSpec([None, *self.options.crop_size], tf.int32)
        feature_spec = tf.TensorSpec(
            [None, *self.feature_size, self.feature_channels], tf.float32
        )
        n = len(self.ops)

        def update(layer, grads, lr):
            for v, g in zip(layer.trainable_variables, grads):
                if g is None:
                    continue
                slot = self._slot(v)
                slot.assign(slot * momentum - lr * g)
                v.assign_add(slot)

        def forward_op(layer, x):
            y = layer(x, training=True)
            losses = layer.losses
            return y, (tf.add_n(losses) if losses else tf.zeros([]))

        def backward_op(layer, x, upstream, lr, needs_input_grad):
            saved = [tf.identity(v) for v in _stats(layer)]
            with tf.GradientTape() as tape:
                tape.watch(x)
                y, reg = forward_op(layer, x)
            variables = layer.trainable_variables
            grads = tape.gradient(
                [y, reg], [x] + variables, output_gradients=[upstream, tf.ones([])]
            )
            for v, value in zip(_stats(layer), saved):
                v.assign(value)
            update(layer, grads[1:], lr)
            if needs_input_grad:
                return grads[0]
            return tf.zeros_like(upstream)

        @tf.function(autograph=False, input_signature=[feature_spec, label_spec, self.path_spec])
        def train_step(features, labels, path):
            lr = tf.cast(schedule(self.step), tf.float32)
            outputs, sources, indices, regs = [], [], [], []
            for i, layers in enumerate(self.op_layers):
                op, source = path[i, 0], path[i, 1]
                if i == 0:
                    index, src = op, features
                else:
                    index = tf.where(source >= 0, n + op, op)
                    src = tf.gather(tf.stack(outputs), tf.maximum(source, 0))
                y, reg = tree_switch(
                    index,
                    [
                        functools.partial(forward_op, layer, features if k < n else src)
                        for k, layer in enumerate(layers)
                    ],
                )
                y.set_shape([None, *self.feature_size, self.filters])
                outputs.append(y)
                sources.append((source, src))
                indices.append(index)
                regs.append(reg)
            shared = [v for layer in self.shared_layers for v in layer.trainable_variables]
            with tf.GradientTape() as tape:
                tape.watch(outputs)
                x = self.dropout(tf.concat(outputs, axis=-1), training=True)
                x = self.projection(x, training=True)
                logits = self.upsample(self.logits(x), training=True)
                loss_sum, count = losses_lib.pixel_loss_sum(
                    logits, labels, ignore_label=self.ignore_label
                )
                loss = tf.math.divide_no_nan(loss_sum, count)
                for layer in self.shared_layers:
                    loss += tf.add_n(layer.losses) if layer.losses else 0.0
            grads = tape.gradient(loss, outputs + shared)
            upstream, shared_grads = list(grads[: len(outputs)]), grads[len(outputs) :]
            for layer in self.shared_layers:
                count_vars = len(layer.trainable_variables)
                update(layer, shared_grads[:count_vars], lr)
                shared_grads = shared_grads[count_vars:]
            for i in reversed(range(self.num_branches)):
                source, src = sources[i]
                branches = [
                    functools.partial(
                        backward_op,
                        layer,
                        features if k < n else src,
                        upstream[i],
                        lr,
                        k >= n,
                    )
                    for k, layer in enumerate(self.op_layers[i])
                ]
                input_grad = tree_switch(indices[i], branches)
                for j in range(i):
                    upstream[j] += tf.where(
                        tf.equal(source, j), input_grad, tf.zeros_like(input_grad)
                    )
            self.step.assign_add(1)
            return loss + tf.add_n(regs)

        self._train_fn = train_step
        return train_step

    @property
    def train_traces(self) -> int:
        """How many times the training step was traced (0 before any step)."""
        if self._train_fn is None:
            return 0
        return self._train_fn.experimental_get_tracing_count()

    # -- batch-norm recalibration and scoring --------------------------------

    def _path_stats(self, path, fn):
        def each(i, k, layer):
            del i, k
            fn(_stats(layer))
            return tf.constant(0)

        self._switch(path, each)
        fn(_stats(self.projection))

    def recalibrate(self, cell_or_path, batches):
        """Recomputes the path's batch-norm statistics on `batches`.

        Args:
          cell_or_path: a `CellSpec` or an `encode`d path.
          batches: float32 `[K, batch, fh, fw, feature_channels]`, K >= 1 train
            feature batches (the same ones for every cell ranks them fairly).

        Only the moving mean and variance of the path's op layers and of
        the projection change (module docstring).
        """
        path = self._as_path(cell_or_path)
        if self._recalibrate_fn is None:
            spec = tf.TensorSpec(
                [None, None, *self.feature_size, self.feature_channels], tf.float32
            )
            momentum = float(self.options.norm_momentum)

            @tf.function(autograph=False, input_signature=[self.path_spec, spec])
            def recalibrate(path, batches):
                self._path_stats(
                    path, lambda stats: [v.assign(tf.zeros_like(v)) for v in stats]
                )
                count = tf.shape(batches)[0]

                def body(k):
                    with tf.control_dependencies(
                        [self.forward(batches[k], path, training=True, dropout=False)]
                    ):
                        return k + 1

                tf.while_loop(lambda k: k < count, body, [tf.constant(0)])
                scale = 1.0 / (1.0 - tf.pow(momentum, tf.cast(count, tf.float32)))
                self._path_stats(path, lambda stats: [v.assign(v * scale) for v in stats])
                return tf.constant(0)

            self._recalibrate_fn = recalibrate
        self._recalibrate_fn(path, tf.convert_to_tensor(batches, tf.float32))

    def confusion(self, cell_or_path, features, labels):
        """The path's int64 confusion matrix on one batch (inference mode)."""
        path = self._as_path(cell_or_path)
        if self._confusion_fn is None:
            options = self.options
            feature_spec = tf.TensorSpec(
                [None, *self.feature_size, self.feature_channels], tf.float32
            )
            label_spec = tf.TensorSpec([None, *options.crop_size], tf.int32)

            @tf.function(autograph=False, input_signature=[self.path_spec, feature_spec, label_spec])
            def confusion(path, features, labels):
                logits = self.forward(features, path, training=False)
                predictions = tf.argmax(logits, -1, output_type=tf.int32)
                return metrics.confusion_matrix(
                    labels,
                    predictions,
                    num_classes=options.num_classes,
                    ignore_label=self.ignore_label,
                )

            self._confusion_fn = confusion
        return self._confusion_fn(path, features, labels)

    @property
    def score_traces(self) -> int:
        """Traces of the recalibration and scoring functions together."""
        return sum(
            fn.experimental_get_tracing_count()
            for fn in (self._recalibrate_fn, self._confusion_fn)
            if fn is not None
        )

    def _as_path(self, cell_or_path):
        if isinstance(cell_or_path, (cell_spec.CellSpec, list, tuple)):
            return tf.constant(self.encode(cell_or_path))
        return tf.convert_to_tensor(cell_or_path, tf.int32)

    # -- the stand-alone cell ------------------------------------------------

    def inherit(self, cell):
        """The stand-alone proxy model of `cell` with the supernet's weights.

        Returns:
          `proxy.build_proxy_model(options with the cell, feature shape)`,
          its branches, projection and logits holding the weights (and
          moving statistics) of the path's layers.
        """
        cell = cell_spec.as_cell(cell)
        layers = self.path_layers(cell)
        options = dataclasses.replace(self.options, dense_prediction_cell=cell)
        model = proxy.build_proxy_model(
            options, (*self.feature_size, self.feature_channels)
        )
        head = model.get_layer(deeplab.DPC_LAYER)
        for target, source in zip(head.branch_layers, layers):
            target.set_weights(source.get_weights())
        head.concat_projection.set_weights(self.projection.get_weights())
        model.get_layer(deeplab.LOGITS_LAYER).set_weights(self.logits.get_weights())
        return model
