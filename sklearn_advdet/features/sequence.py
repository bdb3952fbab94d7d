"""Stack per-layer transformers into one (steps, channels) sequence.

Read more in the :ref:`User Guide <features>`.
"""

from numbers import Integral

import numpy as np
from sklearn.base import TransformerMixin, _fit_context, clone
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import _BaseComposition
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["LayerSequenceUnion"]


def _layer_names(transformer):
    """Names of the hidden layers a fitted transformer covers, or None.

    Read from ``layers_`` (or PivotEmbedder's ``layer_indices_``) and
    ``layout_``; a FrozenEstimator forwards them; a Pipeline is read
    through its last step.
    """
    if isinstance(transformer, Pipeline):
        transformer = transformer[-1]
    layout = getattr(transformer, "layout_", None)
    layers = getattr(transformer, "layers_", None)
    if layers is None:
        layers = getattr(transformer, "layer_indices_", None)
    if layout is None or layers is None:
        return None
    return [layout.names[i] for i in layers]


def _output_names(transformer, width):
    try:
        names = np.asarray(transformer.get_feature_names_out(), dtype=object)
    except (AttributeError, ValueError, TypeError):
        return None
    return names if names.shape == (width,) else None


class LayerSequenceUnion(TransformerMixin, _BaseComposition):
    """Per-layer outputs of several transformers, interleaved layer by layer.

    Each *per-layer* transformer outputs ``L * c_t`` columns, ``c_t`` per
    hidden layer, layer-major (a :class:`~sklearn_advdet.PivotEmbedder`:
    ``c_t = C`` class distances; :class:`~sklearn_advdet.KNNClassScorer`
    with ``layers="all"``, :class:`~sklearn_advdet.MahalanobisScorer`,
    :class:`~sklearn_advdet.LIDScorer`: ``c_t = 1``).  The output puts
    **all channels of layer l together**: row ``r`` is the flattened
    ``(n_steps, n_channels)`` array, step-major, whose step ``l`` is
    ``[t_1's c_1 columns of layer l, t_2's c_2 columns of layer l, ...]``
    — exactly how :class:`~sklearn_advdet.SequenceLSTMDetector` reshapes a
    row (``X.reshape(n, n_steps, n_channels)``).  Pass
    ``SequenceLSTMDetector(n_steps=union.n_steps_)``.

    A plain :class:`~sklearn.pipeline.FeatureUnion` would put the blocks
    side by side, and reshaping that mixes layers.  Here the layers are
    checked instead: every per-layer transformer that says which layers it
    covers (``layers_`` or ``layer_indices_`` with ``layout_``, as every
    transformer of this package does, also behind a
    :class:`~sklearn.frozen.FrozenEstimator` or as a Pipeline's last step)
    must cover the same layers in the same order, and its output names must
    name the layer of their step; a width that is not a multiple of the
    number of layers is an error.

    *Static* transformers (named in ``static``; e.g.
    :class:`~sklearn_advdet.LogitFeatures`) give per-image features, not
    per-layer ones.  The LSTM reads a sequence only, so they enter it in
    one of two ways:

    - ``static_as="step"``: appended as extra step(s) after the last layer,
      zero-padded to the step width (``ceil(K / n_channels)`` steps for ``K``
      static columns).  The LSTM reads them last, right before its final
      hidden state goes to the output layer.
    - ``static_as="broadcast"``: repeated as extra channels at every step,
      so the LSTM sees them alongside each layer.

    Read more in the :ref:`User Guide <features>`.

    Parameters
    ----------
    transformers : list of (str, transformer)
        Named transformers, in channel order.  Their parameters are reachable
        as ``<name>__<param>`` (Pipeline, GridSearchCV).  Fitted reference
        transformers (fitted on the classifier's training set) are best
        wrapped in :class:`~sklearn.frozen.FrozenEstimator`: ``fit`` then
        leaves them as they are; the others are cloned and fitted on the
        ``X, y`` given to ``fit``.
    static : list of str, default=()
        Names of the transformers whose output is per image (not per layer).
    static_as : {"step", "broadcast"}, default="step"
        How static features enter the sequence (see above).
    n_layers : int, default=None
        Number of layers ``L``.  ``None`` takes it from the transformers'
        ``layers_``; pass it when no per-layer transformer exposes them.

    Attributes
    ----------
    transformers_ : list of (str, transformer)
        The fitted transformers (FrozenEstimators as given, the others
        fitted clones).
    n_layers_ : int
        Number of hidden layers ``L``.
    layer_names_ : list of str
        Names of the layers (from the transformers' layouts; ``step<l>``
        when unknown), one per layer step.
    channel_widths_ : dict of str to int
        Columns per step of each per-layer transformer (``c_t``).
    static_widths_ : dict of str to int
        Columns of each static transformer; ``K`` is their sum.
    n_steps_ : int
        Steps of the output sequence: ``L`` (+ ``ceil(K / C)`` with
        ``static_as="step"``).
    n_channels_ : int
        Values per step: ``C = sum(c_t)`` (+ ``K`` with ``"broadcast"``).
    n_features_in_ : int
        Number of columns of ``X``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names of ``X``, when it had string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.frozen import FrozenEstimator
    >>> from sklearn_advdet import (FeatureLayout, LayerSequenceUnion, LogitFeatures,
    ...                             MahalanobisScorer, PivotEmbedder)
    >>> rng = np.random.RandomState(0)
    >>> y_ref = np.repeat([0, 1], 20)
    >>> layout = FeatureLayout([3, 4, 2], has_logits=True)   # 2 layers + logits
    >>> X_ref = np.hstack([rng.normal(size=(40, 7)) + y_ref[:, None], np.eye(2)[y_ref]])
    >>> pivots = PivotEmbedder(layout).fit(X_ref, y_ref)        # 2 per layer
    >>> maha = MahalanobisScorer(layout).fit(X_ref, y_ref)       # 1 per layer
    >>> union = LayerSequenceUnion(
    ...     [("piv", FrozenEstimator(pivots)), ("maha", FrozenEstimator(maha)),
    ...      ("logit", LogitFeatures(layout, features=["margin", "entropy"]))],
    ...     static=["logit"]).fit(X_ref, y_ref)
    >>> union.n_steps_, union.n_channels_
    (3, 3)
    >>> union.transform(X_ref).shape
    (40, 9)
    >>> union.get_feature_names_out()[:4].tolist()
    ['piv__layer0_class0', 'piv__layer0_class1', 'maha__mahalanobis_layer0', 'piv__layer1_class0']
    """

    _parameter_constraints = {
        "transformers": [list],
        "static": [list, tuple],
        "static_as": [StrOptions({"step", "broadcast"})],
        "n_layers": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, transformers, *, static=(), static_as="step", n_layers=None):
        self.transformers = transformers
        self.static = static
        self.static_as = static_as
        self.n_layers = n_layers

    def get_params(self, deep=True):
        """Parameters of the union and, with ``deep``, of its transformers."""
        return self._get_params("transformers", deep=deep)

    def set_params(self, **params):
        """Set the union's parameters, or a transformer's as ``<name>__<param>``."""
        self._set_params("transformers", **params)
        return self

    # ------------------------------------------------------------------ checks
    def _check_transformers(self):
        try:
            names, ests = zip(*self.transformers)
        except (TypeError, ValueError):
            raise TypeError(
                "transformers must be a non-empty list of (name, transformer) pairs"
            ) from None
        self._validate_names(names)
        self._check_estimators_are_instances(ests)
        unknown = [s for s in self.static if s not in names]
        if unknown:
            raise ValueError(
                f"static names {unknown!r} that are not in transformers {list(names)!r}"
            )
        if all(n in self.static for n in names):
            raise ValueError(
                "every transformer is static: a sequence needs at least one "
                "per-layer transformer (pivots, kNN, LID or Mahalanobis scores)"
            )
        return list(names), list(ests)

    def _layer_plan(self, named, outputs):
        """Number of layers, their names and each per-layer transformer's width."""
        covered = {n: _layer_names(t) for n, t in named if n not in self.static}
        known = {n: c for n, c in covered.items() if c is not None}
        first = next(iter(known), None)
        for n, c in known.items():
            if c != known[first]:
                raise ValueError(
                    f"transformer {first!r} covers layers {known[first]} but {n!r} "
                    f"covers {c}: give every per-layer transformer the same layers "
                    "(e.g. layers='all'), in the same order"
                )
        L = len(known[first]) if first is not None else self.n_layers
        if L is None:
            raise ValueError(
                "no per-layer transformer says which layers it covers (layers_): "
                "pass n_layers, the number of hidden layers of each output"
            )
        if self.n_layers is not None and self.n_layers != L:
            raise ValueError(
                f"n_layers={self.n_layers} but the transformers cover {L} layers "
                f"{known[first]}: leave n_layers=None or make them agree"
            )
        names = known[first] if first is not None else [f"step{i}" for i in range(L)]
        widths = {}
        for n, t in named:
            if n in self.static:
                continue
            w = outputs[n].shape[1]
            if w % L:
                raise ValueError(
                    f"transformer {n!r} outputs {w} columns, not a multiple of the "
                    f"{L} layers: if it gives per-image features, name it in "
                    "static=; if it scores one layer, give it layers='all'"
                )
            widths[n] = w // L
            self._check_names_follow_layers(n, t, w, names if n in known else None)
        return L, names, widths

    @staticmethod
    def _check_names_follow_layers(name, transformer, width, layer_names):
        out_names = _output_names(transformer, width) if layer_names else None
        if out_names is None:
            return
        per = width // len(layer_names)
        for i, layer in enumerate(layer_names):
            chunk = out_names[i * per:(i + 1) * per]
            if not all(layer in str(f) for f in chunk):
                raise ValueError(
                    f"transformer {name!r}'s output is not layer-major: columns "
                    f"{list(chunk)} should all belong to layer {layer!r}; a "
                    "per-layer transformer must give each layer's columns together"
                )

    # --------------------------------------------------------------------- fit
    def _transform_all(self, named, X):
        return {n: np.asarray(t.transform(X), dtype=np.float64) for n, t in named}

    @_fit_context(prefer_skip_nested_validation=False)
    def fit_transform(self, X, y=None):
        """Fit the transformers, check their layers and return the sequence.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            Passed to the transformers' ``fit`` (FrozenEstimators ignore it).

        Returns
        -------
        S : ndarray of shape (n_samples, `n_steps_ * n_channels_`), float64
        """
        names, ests = self._check_transformers()
        validate_data(self, X, skip_check_array=True)
        fitted = []
        for n, t in zip(names, ests):
            t = clone(t)
            outs = t.fit(X, y).transform(X)  # y passed even when None
            fitted.append((n, t, np.asarray(outs, dtype=np.float64)))
        named = [(n, t) for n, t, _ in fitted]
        outputs = {n: o for n, _, o in fitted}
        L, layer_names, widths = self._layer_plan(named, outputs)
        static_widths = {n: outputs[n].shape[1] for n in names if n in self.static}
        K = sum(static_widths.values())
        C = sum(widths.values())
        extra = -(-K // C) if self.static_as == "step" else 0
        self.transformers_ = named
        self.n_layers_ = L
        self.layer_names_ = list(layer_names)
        self.channel_widths_ = widths
        self.static_widths_ = static_widths
        self.n_steps_ = int(L + extra)
        self.n_channels_ = int(C if self.static_as == "step" else C + K)
        return self._assemble(outputs)

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the transformers and check that their outputs line up by layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            Passed to the transformers' ``fit`` (FrozenEstimators ignore it).

        Returns
        -------
        self : LayerSequenceUnion
        """
        self.fit_transform(X, y)
        return self

    def transform(self, X):
        """Interleave the transformers' per-layer outputs, step-major.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        S : ndarray of shape (n_samples, `n_steps_ * n_channels_`), float64
            Row ``r`` reshaped to ``(n_steps_, n_channels_)`` is the sequence.
        """
        check_is_fitted(self)
        outputs = self._transform_all(self.transformers_, X)  # they check X first
        validate_data(self, X, skip_check_array=True, reset=False)
        for n, t in self.transformers_:
            if n in self.static:
                continue
            expect = self.channel_widths_[n] * self.n_layers_
            if outputs[n].shape[1] != expect:
                raise ValueError(
                    f"transformer {n!r} output {outputs[n].shape[1]} columns in "
                    f"transform but {expect} in fit"
                )
        return self._assemble(outputs)

    def _assemble(self, outputs):
        n = next(iter(outputs.values())).shape[0]
        L, C = self.n_layers_, self.n_channels_
        out = np.zeros((n, self.n_steps_ * C))
        seq = out.reshape(n, self.n_steps_, C)  # a view: rows are step-major
        off = 0
        for name, _ in self.transformers_:
            if name in self.static:
                continue
            c = self.channel_widths_[name]
            seq[:, :L, off:off + c] = outputs[name].reshape(n, L, c)
            off += c
        if self.static_widths_:
            S = np.hstack([outputs[name] for name, _ in self.transformers_
                           if name in self.static])
            if self.static_as == "step":
                out[:, L * C:L * C + S.shape[1]] = S
            else:
                seq[:, :, off:] = S[:, None, :]
        return out

    # ------------------------------------------------------------------ names
    def get_feature_names_out(self, input_features=None):
        """``<transformer>__<its name>`` in the output's step-major order.

        Static columns are ``<transformer>__<name>`` (``static_as="step"``,
        then ``pad__<j>`` for the zero padding) or
        ``<layer>__<transformer>__<name>`` (``"broadcast"``).

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Ignored; the transformers name their own outputs.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        L = self.n_layers_
        per_layer, static_names = [], []
        for name, t in self.transformers_:
            if name in self.static:
                own = _output_names(t, self.static_widths_[name])
                if own is None:
                    own = [str(j) for j in range(self.static_widths_[name])]
                static_names.extend(f"{name}__{f}" for f in own)
                continue
            width = self.channel_widths_[name] * L
            own = _output_names(t, width)
            if own is None:
                own = [f"{self.layer_names_[i // self.channel_widths_[name]]}_{i}"
                       for i in range(width)]
            per_layer.append((name, np.asarray(own, dtype=object).reshape(L, -1)))
        names = []
        for i in range(L):
            for name, own in per_layer:
                names.extend(f"{name}__{f}" for f in own[i])
            if self.static_as == "broadcast":
                names.extend(f"{self.layer_names_[i]}__{f}" for f in static_names)
        if self.static_as == "step":
            names.extend(static_names)
            pad = (self.n_steps_ - L) * self.n_channels_ - len(static_names)
            names.extend(f"pad__{j}" for j in range(pad))
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            tags.target_tags.required = any(
                get_tags(t).target_tags.required for _, t in self.transformers
            )
        except (TypeError, ValueError, AttributeError):
            pass
        return tags
