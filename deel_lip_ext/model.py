"""Lipschitz `Sequential` and functional `Model`, and the generic export to plain Keras.

`vanilla_model(model)` folds every parametrized layer into stock Keras layers
(`Dense`, `Conv2D`, preceded by `CircularPadding2D` for a circular conv) with
its freshly computed constrained kernel; parameter-free Lipschitz layers
(GroupSort, pooling, ...) and ordinary Keras layers are copied with their
weights. The result is a standard Keras model that no longer shares anything
with the original and can be saved with `model.export(path)` as a TF SavedModel.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras
from keras import ops

from deel_lip_ext import _autodiff as autodiff
from deel_lip_ext._validation import ArgumentTypeError, check_k_coef_lip
from deel_lip_ext.layers._call_overrides import check_exported_call
from deel_lip_ext.layers.base import LipschitzLayer, ParametrizedLayer
from deel_lip_ext.layers.batch_chunks import batch_chunks, chunked_conv_sort_pool
from deel_lip_ext.layers.fused import (
    fusable,
    fused,
    pairs_as_halves,
    sorted_then_l2_norm_pooled,
    windows_as_channels,
)
from deel_lip_ext.layers.dense_sort_fold import folded_sorts_between_denses
from deel_lip_ext.layers.sort_fold import folded_sorts_between_convs
from deel_lip_ext.losses.state import carry_loss_state, compile_from_saved_config
from deel_lip_ext.lipschitz import _computes_its_graph, half_unit_roundoff, runs_its_graph
from deel_lip_ext.utils import layer_lipschitz_constant

__all__ = ["Sequential", "Model", "vanilla_model", "vanillaModel", "is_known_lipschitz"]


def is_known_lipschitz(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is known to be 1-Lipschitz in L2 (`k_coef_lip`-Lipschitz for deel-lip-ext layers).

    Asks the Lipschitz protocol (`deel_lip_ext.utils.layer_lipschitz_constant`);
    an unbuilt parametrized layer is k-Lipschitz by construction times its
    activation's constant, unless its constraint does not hold for every raw
    value (`ParametrizedLayer.lipschitz_by_construction`: e.g. FrobeniusDense
    with disjoint neurons, SVCMConv2D before a projection, LiResNetBlock).
    Unknown constants (and unbuilt stock layers with weights) give False.

    Args:
        layer: a Keras layer (of the library, or stock).
    """
    target = layer.k_coef_lip if isinstance(layer, LipschitzLayer) else 1.0
    try:
        if isinstance(layer, ParametrizedLayer) and not layer.built:
            if not layer.lipschitz_by_construction():
                return False
            constant = layer.k_coef_lip * layer.activation_constant()
        else:
            constant = layer_lipschitz_constant(layer, "l2")
    except ValueError:
        return False
    # Under half precision a layer multiplies by its constants rounded (k = 1.26 becomes 1.2598 or 1.2607 in
    # float16): k up to that rounding (at most four roundings in series, `_rounded_constants`) is still k.
    return constant <= target * (1 + 1e-4) * (1 + half_unit_roundoff(layer.compute_dtype)) ** 4


def _copy_layer(layer):
    """A new layer with the same config and a copy of the weights, or a new operation (a `keras.ops` call
    of a functional model: `Tanh`, `Reshape`, ...; stateless, with no weights) with the same config."""
    # Safe mode off: the config comes from an object alive in this process, so deserializing it runs no
    # code that is not already here (safe mode refuses the function of a `keras.layers.Lambda`). The class
    # is passed along, so that unregistered layer classes load too.
    config = keras.saving.serialize_keras_object(layer)
    own_class = {config.get("registered_name") or config["class_name"]: type(layer)}
    try:
        clone = keras.saving.deserialize_keras_object(config, custom_objects=own_class, safe_mode=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"vanilla_model cannot copy layer {layer.name!r} ({type(layer).__name__}): its config does not load "
            "back into a new layer (the error above says why). Keras rebuilds no lambda given as an `activation` "
            "from a config: pass a named function registered with keras.saving.register_keras_serializable, or "
            "wrap the lambda in a keras.layers.Lambda layer."
        ) from error
    if isinstance(layer, keras.layers.Layer) and layer.weights:
        input_shape = getattr(layer, "_build_shapes_dict", None)
        if not clone.built:
            clone.build(**input_shape) if input_shape else clone.build(layer.input.shape)
        clone.set_weights(layer.get_weights())
    return clone


def _exported_layers(layer):
    """The plain layers replacing `layer` in an export (a list, in call order)."""
    if isinstance(layer, keras.Model):
        return [vanilla_model(layer)]
    if hasattr(layer, "vanilla_export"):
        check_exported_call(layer)
        return list(layer.vanilla_export())
    return [_copy_layer(layer)]


def vanilla_model(model: keras.Model) -> keras.Model:
    """Export any Keras model built from deel-lip-ext (or stock) layers to plain Keras.

    Every parametrized layer becomes the stock layer(s) computing the same
    function with its constrained kernel, computed now from the current
    variables (never a stale cache). Layer names are kept. A `GroupSort2`
    read only by a `ScaledL2NormPooling2D` becomes one
    `GroupSort2L2NormPooling2D`; where a `Conv2D` feeds it and a `Conv2D`
    (or `Flatten` + `Dense`) reads it, each output read only by the next layer, the pairs are
    moved to the two halves of the channels by permuting those kernels
    (`deel_lip_ext.layers.fused.pairs_as_halves`), and a one-channel `Conv2D`
    feeding it writes each pooling window to the channels of one pixel
    (`deel_lip_ext.layers.fused.windows_as_channels`); a stock `Conv2D`, a
    `GroupSort2`, a `Conv2D` and such a pooling in a row, the first convolution with
    few input channels, become one `ConvGroupSort2Conv2D`
    (`deel_lip_ext.layers.sort_fold.folded_sorts_between_convs`), and a stock `Dense`, a `GroupSort2`
    and a `Dense` with fewer outputs, one `DenseGroupSort2Dense`
    (`deel_lip_ext.layers.dense_sort_fold.folded_sorts_between_denses`): the same function, faster.

    Args:
        model: a built `keras.Sequential` or functional `keras.Model`.

    Returns:
        A new `keras.Sequential` or functional `keras.Model` independent of `model`: the other layers
        (stock, `keras.layers.Lambda`, unregistered classes) and the `keras.ops` calls of a functional
        model are copied from their configs.

    Raises:
        ValueError: `model` is not built, its class overrides `call`, a library layer's subclass
            overrides `call` but not `vanilla_export`, or a layer's config does not load back into a
            new layer (Keras rebuilds no lambda given as an `activation`).

    Examples:
        >>> plain = vanilla_model(model)
        >>> plain.export("/tmp/plain_model", format="tf_saved_model")
    """
    if not model.built:
        raise ValueError("vanilla_model needs a built model: call it on data or give it an Input first.")
    has_graph = isinstance(model, keras.Sequential) or getattr(model, "_functional", False)
    if not (has_graph or hasattr(model, "_operations")):
        raise ArgumentTypeError(f"vanilla_model needs a Sequential or functional model, got {type(model).__name__}.")
    if not runs_its_graph(model):
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) overrides `call`, so it may compute something else than "
            "its graph, which is all that vanilla_model exports: put that computation in layers of the graph "
            "(e.g. keras.layers.Rescaling for an input normalization)."
        )
    if isinstance(model, keras.Sequential):
        layers, pending = [], list(model.layers)
        while pending:
            layer = pending.pop(0)
            if pending and fusable(layer, pending[0]):
                layers.append(fused(layer, pending.pop(0)))
            else:
                layers.extend(_exported_layers(layer))
        inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
        rewritten = _faster_layouts(layers, tuple(inputs.shape))
        return keras.Sequential([inputs] + rewritten, name=model.name)

    sorts_to_fuse = _fusable_pairs(model)  # id(pooling) -> the GroupSort2 it is fused with
    fused_sorts = {id(layer) for layer in sorts_to_fuse.values()}
    prefixes, passed_through = {}, set()

    def clone_function(layer):
        if id(layer) in fused_sorts:  # runs inside the next layer: called as the identity
            placeholder = keras.layers.Identity(name=layer.name)
            passed_through.add(id(placeholder))
            return placeholder
        if id(layer) in sorts_to_fuse:
            return fused(sorts_to_fuse[id(layer)], layer)
        exported = _exported_layers(layer)
        prefixes[id(exported[-1])] = exported[:-1]
        return exported[-1]

    def call_function(layer, *args, **kwargs):
        if id(layer) in passed_through:
            return args[0]
        prefix = prefixes.get(id(layer), [])
        if prefix:
            x = args[0]
            for pre in prefix:
                x = pre(x)
            args = (x,) + args[1:]
        return layer(*args, **kwargs)

    exported = keras.models.clone_model(model, clone_function=clone_function, call_function=call_function)
    rewritten = {}  # id(layer) -> its replacement, from the layout rewrites of each chain of the graph
    for chain in _single_use_chains(exported):
        for layer, replacement in zip(chain, _faster_layouts(chain, _chain_input_shape(chain))):
            if replacement is not layer:
                rewritten[id(layer)] = replacement
    if rewritten:  # new copies of the other layers too: each layer of an export is called once, in its graph
        exported = keras.models.clone_model(
            exported,
            clone_function=lambda layer: rewritten[id(layer)] if id(layer) in rewritten else _copy_layer(layer),
        )
    # A plain keras.Model (not our subclass), keeping single inputs/outputs unwrapped.
    return keras.Model(_unwrap(exported.inputs), _unwrap(exported.outputs), name=model.name)


def _faster_layouts(layers, input_shape):
    """The exact rewrites of `vanilla_model` on layers called in a row from `input_shape` (same list length)."""
    layers = folded_sorts_between_convs(windows_as_channels(pairs_as_halves(layers), input_shape), input_shape)
    return folded_sorts_between_denses(layers, input_shape)


def _chain_input_shape(chain):
    """The shape the first layer of a `_single_use_chains` chain is called on in its graph (an InputLayer: its
    own), the size it runs at, which its build size may not be (a stock layer built elsewhere first)."""
    node = chain[0]._inbound_nodes[0]
    return tuple((node.input_tensors or node.output_tensors)[0].shape)


def _single_use_chains(model):
    """The layers of a functional `model` as maximal chains, in call order, for the Sequential rewrites.

    Each layer of a chain after the first is called once, on the output of the layer before it
    alone, and that output is read by nothing else (no other layer, not a model output): permuting
    the channels between two layers of a chain, or changing how one writes them, changes no other
    part of the graph.
    """
    outputs = {id(tensor) for tensor in model.outputs}

    def successor(layer):
        if len(layer._inbound_nodes) != 1 or len(layer._outbound_nodes) != 1 or id(layer.output) in outputs:
            return None
        following = layer._outbound_nodes[0].operation
        nodes = following._inbound_nodes
        return following if len(nodes) == 1 and len(nodes[0].parent_nodes) == 1 else None

    successors = {id(layer): successor(layer) for layer in model.layers}
    followers = {id(layer) for layer in successors.values() if layer is not None}
    chains = []
    for layer in model.layers:
        if id(layer) in followers:
            continue
        chain = [layer]
        while successors.get(id(chain[-1])) is not None:
            chain.append(successors[id(chain[-1])])
        chains.append(chain)
    return chains


def _fusable_pairs(model):
    """{id(pooling): sort} for each GroupSort2 of `model` whose only use is one `fusable` L2 pooling."""
    pairs = {}
    for layer in model.layers:
        nodes = layer._inbound_nodes
        if len(nodes) != 1 or len(nodes[0].parent_nodes) != 1:
            continue
        producer = nodes[0].parent_nodes[0].operation
        used_once = len(producer._inbound_nodes) == 1 and len(producer._outbound_nodes) == 1
        if used_once and fusable(producer, layer) and not any(output is producer.output for output in model.outputs):
            pairs[id(layer)] = producer
    return pairs


def _unwrap(tensors):
    return tensors[0] if len(tensors) == 1 else tensors


class LipschitzModelMixin:
    """`condense()` and `vanilla_export()` for Lipschitz models; `compile` carries the loss's state on JAX."""

    def compile(self, *args, **kwargs) -> None:
        """`keras.Model.compile`; on JAX the loss's variables (e.g. `MulticlassSoftHKR`'s running mean)
        then move during `fit` without any callback (see `deel_lip_ext.losses.carry_loss_state`).

        Args:
            *args: passed to `keras.Model.compile`.
            **kwargs: passed to `keras.Model.compile`.

        Examples:
            >>> model.compile(optimizer="adam", loss=MulticlassSoftHKR())
        """
        super().compile(*args, **kwargs)
        carry_loss_state(self)

    def compile_from_config(self, config: dict) -> None:
        """Compile from a saved config (Keras skips an overridden `compile` when loading)."""
        compile_from_saved_config(self, config)

    def condense(self):
        """Overwrite every raw kernel with its constrained value (see `ParametrizedLayer.condense`)."""
        for layer in self._flatten_layers(include_self=False, recursive=True):
            if hasattr(layer, "condense") and layer is not self:
                layer.condense()

    def vanilla_export(self):
        """Plain Keras copy of the model (see `vanilla_model`)."""
        return vanilla_model(self)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class Sequential(LipschitzModelMixin, keras.Sequential):
    """A `keras.Sequential` that is `k_coef_lip`-Lipschitz as a whole.

    The global constant is split evenly: each Lipschitz layer given at
    construction gets `k_coef_lip ** (1 / n)` (n = number of such layers),
    which replaces its own `k_coef_lip`. Layers not known to be 1-Lipschitz
    raise a warning. Layers added later with `add()` keep their own constant.

    A `GroupSort2` directly followed by a `ScaledL2NormPooling2D` runs as one
    function (`deel_lip_ext.layers.fused.sorted_then_l2_norm_pooled`): the two
    layers' values and gradients, with one pass less over the sorted tensor each
    way; a convolution with few multiply-adds per output before the two runs with them over
    parts of a large batch (`deel_lip_ext.layers.batch_chunks`: same values, faster where the
    block's tensors exceed the cache). The model's graph, which the bounds and the export read,
    keeps the layers.

    Args:
        layers: list of layers.
        trainable: whether the model's weights are trainable (as in `keras.Sequential`).
        name: model name.
        k_coef_lip: Lipschitz constant of the whole model.

    Examples:
        >>> model = Sequential([keras.Input((28, 28, 1)), SpectralConv2D(16, 3), GroupSort2(),
        ...                     keras.layers.Flatten(), SpectralDense(10)], k_coef_lip=1.0)
        >>> plain = model.vanilla_export()
    """

    def __init__(
        self,
        layers: Sequence[keras.layers.Layer] | None = None,
        trainable: bool = True,
        name: str | None = None,
        k_coef_lip: float = 1.0,
    ) -> None:
        self.k_coef_lip = check_k_coef_lip(k_coef_lip)
        layers = list(layers or [])
        lipschitz_layers = [layer for layer in layers if isinstance(layer, LipschitzLayer)]
        if lipschitz_layers and self.k_coef_lip != 1.0:
            share = self.k_coef_lip ** (1.0 / len(lipschitz_layers))
            for layer in lipschitz_layers:
                layer.set_klip_factor(share)
        for layer in layers:
            if isinstance(layer, keras.layers.Layer) and not is_known_lipschitz(layer):
                warnings.warn(
                    f"Layer {layer.name!r} ({type(layer).__name__}) is not known to be 1-Lipschitz: "
                    "the model's Lipschitz constant is not guaranteed.",
                    stacklevel=2,
                )
        super().__init__(layers=layers, trainable=trainable, name=name)

    def set_klip_factor(self, klip_factor: float) -> None:
        """Set the model's Lipschitz constant: each Lipschitz layer gets `klip_factor ** (1 / n)` (deel-lip).

        n is the number of Lipschitz layers in the model now (layers added
        with `add()` included). Compiled train/test/predict functions hold the
        old constants, so this must be called before the first `fit`,
        `evaluate` or `predict`; eager calls, `certify` and the attacks before
        are fine (the kernel caches and the library's compiled functions are
        dropped). A function you compiled yourself around the model keeps the
        old constants.

        Args:
            klip_factor: Lipschitz constant of the whole model (> 0).

        Examples:
            >>> model = Sequential([keras.Input((4,)), SpectralDense(4), GroupSort2(), SpectralDense(1)])
            >>> model.set_klip_factor(8.0)  # each of the 3 layers gets 2
        """
        k_coef_lip = check_k_coef_lip(klip_factor)
        traced = [name for name in ("train_function", "test_function", "predict_function") if getattr(self, name, None)]
        if traced:
            raise RuntimeError(
                f"set_klip_factor must be called before fit/evaluate/predict: {traced} already use the current "
                "constants. Build a new model (or call it before the first fit)."
            )
        lipschitz_layers = [layer for layer in self.layers if isinstance(layer, LipschitzLayer)]
        share = k_coef_lip ** (1.0 / len(lipschitz_layers)) if lipschitz_layers else 1.0
        for layer in lipschitz_layers:
            # Built layers (a model with an Input is built at construction) take the constant directly; their
            # inference kernel caches are marked stale, and the library's compiled functions (certify's forward,
            # the attacks' runs), whose traces hold the old constants, are dropped.
            layer._set_built_k_coef_lip(share)
        autodiff.forget_compiled()
        self.k_coef_lip = k_coef_lip

    @_computes_its_graph
    def call(self, inputs, training: bool | None = None, mask=None, **kwargs):
        """The layers in a row, as `keras.Sequential`; each `fusable` sort + L2-norm pooling as one function.

        A `GroupSort2` followed by a `ScaledL2NormPooling2D` runs as
        `deel_lip_ext.layers.fused.sorted_then_l2_norm_pooled`: the two layers' values and
        gradients, one pass less over the sorted tensor each way; a memory-bound convolution
        before the two runs with them over parts of a large batch, so that the block's tensors
        stay in cache (`deel_lip_ext.layers.batch_chunks`). Anything else (masks, extra call
        arguments, inputs that Keras would convert first) runs through `keras.Sequential`.
        """
        sorts = self._fusable_sorts(inputs) if mask is None and not kwargs else set()
        if not sorts:
            return super().call(inputs, training=training, mask=mask, **kwargs)
        layers, outputs, index = self.layers, inputs, 0
        while index < len(layers):
            layer = layers[index]
            chunks = batch_chunks(layer, outputs) if index + 1 in sorts else 1
            if chunks > 1 and layer.compute_dtype == layers[index + 1].compute_dtype:
                outputs = chunked_conv_sort_pool(outputs, *layers[index : index + 3], chunks, training=training)
                index += 3
                continue
            if index in sorts and keras.backend.standardize_dtype(outputs.dtype) == layer.compute_dtype:
                outputs = sorted_then_l2_norm_pooled(outputs, layer, layers[index + 1])
                index += 2
                continue
            with_training = layer._call_has_training_arg and training is not None
            outputs = layer(outputs, training=training) if with_training else layer(outputs)
            index += 1
        return outputs

    def _fusable_sorts(self, inputs):
        """Positions i in `layers` where a pairwise sort (i) and the L2-norm pooling after it (i + 1) run as one."""
        graph_inputs = getattr(self._functional, "inputs", None)
        if not graph_inputs or len(graph_inputs) != 1 or not ops.is_tensor(inputs):
            return set()
        expected = graph_inputs[0]
        if len(inputs.shape) != len(expected.shape) or keras.backend.standardize_dtype(inputs.dtype) != expected.dtype:
            return set()  # Keras converts such inputs first (`Functional.call`)
        layers = self.layers
        if any(layer._call_has_mask_arg for layer in layers):
            return set()
        return {
            index
            for index, (layer, following) in enumerate(zip(layers, layers[1:]))
            if fusable(layer, following) and layer.compute_dtype == following.compute_dtype
        }

    def get_config(self) -> dict:
        config = super().get_config()
        config["k_coef_lip"] = self.k_coef_lip
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        config = dict(config)
        k_coef_lip = config.pop("k_coef_lip", 1.0)
        # The layers' configs already hold their share of the constant.
        model = super().from_config(config, custom_objects=custom_objects)
        model.k_coef_lip = check_k_coef_lip(k_coef_lip)
        return model


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class Model(LipschitzModelMixin, keras.Model):
    """Functional `keras.Model` with `condense()` and `vanilla_export()`.

    Branches make a global split of k ambiguous, so each layer keeps its own
    `k_coef_lip`; `deel_lip_ext.utils.model_lipschitz_bound` computes the
    constant of the whole graph (sums over `Add` branches).

    Examples:
        >>> inputs = keras.Input((16,))
        >>> h = SpectralDense(16)(inputs)
        >>> model = Model(inputs, keras.layers.Add()([h, SpectralDense(16)(inputs)]))
        >>> plain = model.vanilla_export()
    """


# deel-lip's name of `vanilla_model`.
vanillaModel = vanilla_model
