"""Which columns of ``X`` belong to which hooked layer, and where the logits are.

``X`` is always a 2-D float array: one row per image, the globally pooled
features of every hooked layer concatenated in forward order, optionally
followed by the classifier's logits as the last block.  A
:class:`FeatureLayout` names those blocks; estimators take it (or a plain
tuple of block sizes) as their ``layer_sizes`` parameter.
"""

from numbers import Integral

import numpy as np

__all__ = ["FeatureLayout", "check_layout", "LAYOUT_SHORTHANDS"]


class FeatureLayout:
    """Column layout of a deep-feature matrix.

    Parameters
    ----------
    sizes : sequence of int
        Width of every block of ``X`` in column order, the logits block
        included when ``has_logits`` is True.
    names : sequence of str, default=None
        One name per block. Defaults to ``layer0``, ``layer1``, ... and
        ``logits`` for the logits block.
    has_logits : bool, default=False
        Whether the last block holds the classifier's logits.

    Attributes
    ----------
    n_features : int
        Total number of columns (sum of ``sizes``).
    n_layers : int
        Number of hidden-layer blocks (the logits block not counted).

    Examples
    --------
    >>> from sklearn_advdet import FeatureLayout
    >>> layout = FeatureLayout([16, 32, 10], has_logits=True)
    >>> layout.n_layers, layout.n_features
    (2, 58)
    >>> layout.layer_names
    ['layer0', 'layer1']
    >>> layout.slice_of(1)
    slice(16, 48, None)
    """

    def __init__(self, sizes, names=None, has_logits=False):
        sizes = tuple(sizes)
        if len(sizes) == 0:
            raise ValueError("a FeatureLayout needs at least one block size")
        for s in sizes:
            if not isinstance(s, Integral) or isinstance(s, bool) or s <= 0:
                raise ValueError(
                    f"block sizes must be positive integers, got {sizes!r}"
                )
        sizes = tuple(int(s) for s in sizes)
        has_logits = bool(has_logits)
        if names is None:
            n_hidden = len(sizes) - int(has_logits)
            names = [f"layer{i}" for i in range(n_hidden)]
            if has_logits:
                names.append("logits")
        names = [str(n) for n in names]
        if len(names) != len(sizes):
            raise ValueError(
                f"got {len(names)} names for {len(sizes)} block sizes: pass one "
                "name per block (logits block included)"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"block names must be unique, got {names!r}")
        self.sizes = sizes
        self.names = tuple(names)
        self.has_logits = has_logits

    # ------------------------------------------------------------------ basics
    @property
    def n_features(self):
        return int(sum(self.sizes))

    @property
    def n_layers(self):
        return len(self.sizes) - int(self.has_logits)

    @property
    def layer_sizes(self):
        """Sizes of the hidden-layer blocks (logits excluded)."""
        return self.sizes[: self.n_layers]

    @property
    def layer_names(self):
        """Names of the hidden-layer blocks (logits excluded)."""
        return list(self.names[: self.n_layers])

    @property
    def n_logits(self):
        """Width of the logits block (0 when there is none)."""
        return self.sizes[-1] if self.has_logits else 0

    def _offsets(self):
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    def slice_of(self, block):
        """Column slice of one block, given by index or name."""
        i = self._block_index(block, allow_logits=True)
        off = self._offsets()
        return slice(int(off[i]), int(off[i + 1]))

    @property
    def logits_slice(self):
        if not self.has_logits:
            raise ValueError(
                "this layout has no logits block: build X with the logits "
                "appended (the feature store does so by default) and pass "
                "FeatureLayout(..., has_logits=True)"
            )
        return self.slice_of(len(self.sizes) - 1)

    def _block_index(self, block, allow_logits=False):
        n_blocks = len(self.sizes) if allow_logits else self.n_layers
        if isinstance(block, str):
            names = self.names[:n_blocks]
            if block not in names:
                raise ValueError(
                    f"unknown layer {block!r}; known layers are {list(names)!r}"
                )
            return names.index(block)
        if isinstance(block, Integral) and not isinstance(block, bool):
            i = int(block)
            if not -n_blocks <= i < n_blocks:
                raise ValueError(
                    f"layer index {i} out of range for {n_blocks} layers"
                )
            return i % n_blocks
        raise TypeError(
            f"layers are selected by index or name, got {block!r} "
            f"of type {type(block).__name__}"
        )

    def select(self, layers="all"):
        """Indices of the hidden layers named by ``layers``.

        Parameters
        ----------
        layers : "all", int, str or sequence of int/str, default="all"
            ``"all"`` selects every hidden layer (never the logits block).
            Negative indices count from the last hidden layer.

        Returns
        -------
        list of int
        """
        if isinstance(layers, str) and layers == "all":
            return list(range(self.n_layers))
        if isinstance(layers, (str, Integral)):
            layers = [layers]
        try:
            layers = list(layers)
        except TypeError:
            raise TypeError(
                f"layers must be 'all', an index, a name or a list of them, "
                f"got {layers!r}"
            ) from None
        if not layers:
            raise ValueError("layers selects no layer: pass 'all' or a non-empty list")
        idx = [self._block_index(b) for b in layers]
        if len(set(idx)) != len(idx):
            raise ValueError(f"layers lists a layer twice: {layers!r}")
        return idx

    def check_n_features(self, n_features):
        """Raise a ValueError that says what to do when widths disagree."""
        if n_features != self.n_features:
            raise ValueError(
                f"X has {n_features} columns but layer_sizes sum to "
                f"{self.n_features}: pass the layer sizes of the feature store "
                "that produced X"
            )

    # ------------------------------------------------------------ conversions
    def to_dict(self):
        return {
            "sizes": list(self.sizes),
            "names": list(self.names),
            "has_logits": self.has_logits,
        }

    @classmethod
    def from_dict(cls, d):
        return cls(d["sizes"], names=d.get("names"), has_logits=d.get("has_logits", False))

    def __eq__(self, other):
        if not isinstance(other, FeatureLayout):
            return NotImplemented
        return (self.sizes, self.names, self.has_logits) == (
            other.sizes,
            other.names,
            other.has_logits,
        )

    def __hash__(self):
        return hash((self.sizes, self.names, self.has_logits))

    def __repr__(self):
        return (
            f"FeatureLayout(sizes={list(self.sizes)!r}, names={list(self.names)!r}, "
            f"has_logits={self.has_logits})"
        )


LAYOUT_SHORTHANDS = ("single", "logits")


def check_layout(layer_sizes, n_features=None, *, need_logits=False,
                 need_layers=True, estimator=None):
    """Turn an estimator's ``layer_sizes`` parameter into a FeatureLayout.

    The one rule of the package, the same in every estimator:

    - a :class:`FeatureLayout` is taken as it is;
    - a plain sequence of ints is ``FeatureLayout(sizes)``: hidden layers
      only, **no logits block** (pass ``FeatureLayout(sizes,
      has_logits=True)`` when the logits are the last block of ``X``);
    - ``"single"``: all of ``X`` is one hidden-layer block, no logits;
    - ``"logits"``: all of ``X`` is the logits block, no hidden layer;
    - ``None`` is refused: the width of ``X`` never decides the layout.

    Parameters
    ----------
    layer_sizes : FeatureLayout, sequence of int, "single" or "logits"
    n_features : int, default=None
        When given, the layout must cover exactly this many columns.
    need_logits : bool, default=False
        The estimator reads the logits block (e.g. the DNN's predicted
        class): a layout without one raises a ValueError naming the fix.
    need_layers : bool, default=True
        The estimator reads hidden layers: a logits-only layout raises.
    estimator : str, default=None
        Name used in the error messages.

    Returns
    -------
    FeatureLayout
    """
    who = estimator or "this estimator"
    if isinstance(layer_sizes, FeatureLayout):
        layout = layer_sizes
    elif isinstance(layer_sizes, str) and layer_sizes in LAYOUT_SHORTHANDS:
        if n_features is None:
            raise ValueError(f"layer_sizes={layer_sizes!r} needs the number of columns of X")
        layout = (FeatureLayout([n_features]) if layer_sizes == "single"
                  else FeatureLayout([n_features], names=["logits"], has_logits=True))
    elif layer_sizes is None:
        raise ValueError(
            f"{who} needs layer_sizes: pass the FeatureLayout of the feature store "
            "that produced X (e.g. data.layout), a tuple of hidden-layer sizes "
            "(no logits), or 'single' to treat all of X as one hidden layer"
        )
    elif isinstance(layer_sizes, (str, bytes, dict)) or np.isscalar(layer_sizes):
        raise TypeError(
            "layer_sizes must be a FeatureLayout, a sequence of positive ints, "
            f"'single' or 'logits', got {layer_sizes!r}"
        )
    else:
        layout = FeatureLayout(layer_sizes)
    if n_features is not None:
        layout.check_n_features(n_features)
    if need_logits and not layout.has_logits:
        raise ValueError(
            f"{who} needs the logits block of X (the DNN's predicted class) but "
            f"the layout {list(layout.sizes)} has none: a plain tuple means hidden "
            "layers only, so pass FeatureLayout(sizes, has_logits=True) with the "
            "logits as the last block (the feature store's layout does this)"
        )
    if need_layers and layout.n_layers == 0:
        raise ValueError(
            f"{who} reads hidden layers but the layout holds the logits only: "
            "pass the layout of the hidden layers and the logits"
        )
    return layout
