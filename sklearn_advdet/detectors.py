"""Neural detectors over pivot-distance trajectories (skorch inside).

:class:`SequenceLSTMDetector` reads each row of ``X`` as a sequence of
``n_steps`` steps of equal width (layer-major, as
:class:`~sklearn_advdet.PivotEmbedder` outputs it: ``L`` layers of ``C``
pivot distances) and classifies it with an LSTM; :class:`MLPDetector` is
the paper's baseline on the flattened vector.  Both are ordinary binary
scikit-learn classifiers (``y = 1`` adversarial, ``y = 0`` authentic) that
build their skorch net in ``fit`` (``net_``), so they work in a
:class:`~sklearn.pipeline.Pipeline`, in
:class:`~sklearn.model_selection.GridSearchCV` and with joblib persistence.

Attack balancing, as in the paper, is expressed as ``sample_weight``
(see :func:`balanced_sample_weight`); the detectors turn it into a
:class:`torch.utils.data.WeightedRandomSampler`.

torch and skorch are imported inside the methods that need them, so this
module imports without torch.
"""

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

__all__ = ["SequenceLSTMDetector", "MLPDetector", "balanced_sample_weight"]

# attributes validate_data may set before fit can still fail; restored on error
_INPUT_ATTRS = ("n_features_in_", "feature_names_in_")


# --------------------------------------------------------------------- helpers
def _check_binary_y(y, what="y"):
    """Return y as a float32 array of 0/1, or raise a ValueError."""
    check_classification_targets(y)
    y = np.asarray(y)
    if type_of_target(y, input_name=what) == "multiclass":
        raise ValueError(
            "Only binary classification is supported. The type of the target "
            f"is multiclass: {what} must hold only 0 (authentic) and 1 "
            f"(adversarial), got labels {np.unique(y)[:5].tolist()!r}: encode the "
            "detection labels as 0/1"
        )
    if y.dtype.kind not in "biuf":
        values = np.unique(y)
        raise ValueError(
            f"{what} must hold 0 (authentic) and 1 (adversarial), got labels "
            f"{values[:5].tolist()!r}: encode the detection labels as 0/1"
        )
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        values = np.unique(y[bad])
        raise ValueError(
            f"{what} must hold only 0 (authentic) and 1 (adversarial), got "
            f"also {values[:5].tolist()!r}: encode the detection labels as 0/1"
        )
    return (y == 1).astype(np.float32)


def _require_both_classes(y01, where):
    present = np.unique(y01)
    if present.size < 2:
        only = int(present[0]) if present.size else None
        raise ValueError(
            f"{where} holds one class only ({only!r}): a detector needs both "
            "authentic (y=0) and adversarial (y=1) samples to train"
        )


def _check_weights(sample_weight, n_samples):
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(
            f"sample_weight has shape {w.shape} but X has {n_samples} rows: "
            "pass one weight per row"
        )
    if not np.all(np.isfinite(w)):
        raise ValueError("sample_weight contains NaN or infinity")
    if np.any(w < 0):
        raise ValueError("sample_weight must be non-negative")
    if not np.any(w > 0):
        raise ValueError(
            "sample_weight is zero everywhere: at least one row must have a "
            "positive weight"
        )
    return w


def _check_int(value, name, low):
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or value < low
    ):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_real(value, name, low, high, low_open=False, high_open=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = np.isfinite(v) and (v > low if low_open else v >= low)
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lb}{low}, {high}{rb}, got {value!r}")


def _resolve_device(device):
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asks for CUDA but no CUDA device is available: "
            "use device='auto' (CUDA when present, else CPU) or device='cpu'"
        )
    return str(dev)


def balanced_sample_weight(y, attack):
    """Sample weights that represent authentic images and each attack equally.

    The rows fall into groups: all authentic rows (``y == 0``) form one
    group, and the adversarial rows (``y == 1``) form one group per attack
    name.  Every group receives the same total weight, and the weights sum
    to the number of rows (the convention of scikit-learn's
    ``class_weight="balanced"``): a row of group ``g`` weighs
    ``n_samples / (n_groups * n_g)``.  Passed as ``sample_weight`` to the
    detectors' ``fit``, this reproduces the paper's weighted random sampler.
    A ROC AUC weighted with these weights equals the macro AUC (the mean
    over attacks of each attack's AUC against all authentic rows).

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Detection labels: 0 authentic, 1 adversarial.
    attack : array-like of shape (n_samples,)
        Attack name of each row; ignored where ``y == 0``.

    Returns
    -------
    sample_weight : ndarray of shape (n_samples,), dtype float64

    Examples
    --------
    >>> from sklearn_advdet import balanced_sample_weight
    >>> y = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    >>> attack = ["", "", "", "", "fgsm", "fgsm", "fgsm", "fgsm", "pgd", "pgd"]
    >>> balanced_sample_weight(y, attack).round(4)
    array([0.8333, 0.8333, 0.8333, 0.8333, 0.8333, 0.8333, 0.8333, 0.8333,
           1.6667, 1.6667])
    """
    y01 = _check_binary_y(column_or_1d(y), what="y")
    attack = column_or_1d(np.asarray(attack, dtype=object))
    check_consistent_length(y01, attack)
    n = y01.shape[0]
    if n == 0:
        raise ValueError("y is empty: pass at least one row")
    # group ids: 0 = authentic, 1.. = attacks (names compared as strings)
    group = np.zeros(n, dtype=np.intp)
    adv = y01 == 1
    if adv.any():
        names = attack[adv].astype(str)
        _, inverse = np.unique(names, return_inverse=True)
        group[adv] = inverse + 1
    present, counts = np.unique(group, return_counts=True)
    per_row = n / (present.size * counts.astype(np.float64))
    lookup = np.zeros(present.max() + 1)
    lookup[present] = per_row
    return lookup[group]


# ------------------------------------------------------------------ base class
class _SkorchDetector(ClassifierMixin, BaseEstimator):
    """Shared fit/predict machinery; subclasses give the torch module."""

    # under metadata routing, ``groups`` handed to a search is meant for its
    # CV splitter: do not route it to fit unless set_fit_request(groups=True)
    __metadata_request__fit = {"groups": False}

    # ------------------------------------------------------------ subclass API
    def _module_spec(self, n_features):  # pragma: no cover - abstract
        """Return (module class, dict of module kwargs, dict of fitted attrs)."""
        raise NotImplementedError

    def _check_own_params(self):
        pass

    # ------------------------------------------------------------------- utils
    def _check_params(self):
        _check_int(self.hidden_size, "hidden_size", 1)
        _check_real(self.dropout, "dropout", 0.0, 1.0)
        _check_real(self.lr, "lr", 0.0, np.inf, low_open=True)
        _check_int(self.batch_size, "batch_size", 1)
        _check_int(self.max_epochs, "max_epochs", 1)
        if self.validation_fraction is not None:
            _check_real(
                self.validation_fraction,
                "validation_fraction (or None)",
                0.0,
                1.0,
                low_open=True,
            )
        _check_int(self.n_iter_no_change, "n_iter_no_change", 1)
        _check_int(self.verbose, "verbose", 0)
        self._check_own_params()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.allow_nan = False
        return tags

    # --------------------------------------------------------------------- fit
    def fit(self, X, y, sample_weight=None, groups=None):
        """Fit the detector.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Embedded trajectories (e.g. the output of
            :class:`~sklearn_advdet.PivotEmbedder`).
        y : array-like of shape (n_samples,)
            0 for authentic, 1 for adversarial rows.
        sample_weight : array-like of shape (n_samples,), default=None
            Relative sampling probability of each row: training batches are
            drawn with a :class:`torch.utils.data.WeightedRandomSampler`
            (with replacement, ``n`` draws per epoch).  Rows of weight 0 are
            dropped before training, so they never reach the net; equal
            weights mean plain shuffling.  :func:`balanced_sample_weight`
            gives the paper's attack balancing.  The validation AUC, if any,
            is weighted with it too; with :func:`balanced_sample_weight` that
            weighted AUC equals the macro AUC over attacks
            (:func:`sklearn_advdet.metrics.macro_auc`), the authors' model
            selection criterion.
        groups : array-like of shape (n_samples,), default=None
            Group of each row (e.g. the source image id), used only when
            ``validation_fraction`` is set: the validation split then keeps
            each group on one side (:class:`~sklearn.model_selection.GroupShuffleSplit`).
            Under scikit-learn's metadata routing ``groups`` is not requested
            by default (a search's ``groups`` is meant for its CV splitter):
            ask for it with ``set_fit_request(groups=True)``.

        Returns
        -------
        self : object
            The fitted detector.
        """
        saved = {k: self.__dict__[k] for k in _INPUT_ATTRS if k in self.__dict__}
        try:
            fitted = self._fit(X, y, sample_weight, groups)
        except BaseException:
            for k in _INPUT_ATTRS:
                self.__dict__.pop(k, None)
            self.__dict__.update(saved)
            raise
        for key, value in fitted.items():
            setattr(self, key, value)
        return self

    def _split(self, y01, keep, groups, seed):
        """Indices (into X) of the training and validation rows."""
        from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

        if self.validation_fraction is None:
            return keep, None
        y_keep = y01[keep]
        if groups is not None:
            splitter = GroupShuffleSplit(
                n_splits=1, test_size=self.validation_fraction, random_state=seed
            )
            n_groups = np.unique(groups[keep]).size
            if n_groups < 2:
                raise ValueError(
                    "validation_fraction with groups needs at least 2 distinct "
                    f"groups among the training rows, got {n_groups}"
                )
            tr, va = next(splitter.split(keep, y_keep, groups[keep]))
        else:
            splitter = StratifiedShuffleSplit(
                n_splits=1, test_size=self.validation_fraction, random_state=seed
            )
            try:
                tr, va = next(splitter.split(keep, y_keep))
            except ValueError as exc:
                raise ValueError(
                    f"cannot hold out validation_fraction={self.validation_fraction} "
                    f"of {keep.size} rows with both classes on each side ({exc}): "
                    "pass more data, a larger fraction, or validation_fraction=None"
                ) from None
        train_idx, valid_idx = keep[tr], keep[va]
        for idx, side in ((train_idx, "training"), (valid_idx, "validation")):
            if idx.size == 0 or np.unique(y01[idx]).size < 2:
                raise ValueError(
                    f"the {side} part of the validation split has a single "
                    "class: pass more groups or rows of each class, change "
                    "validation_fraction, or set validation_fraction=None"
                )
        return train_idx, valid_idx

    def _fit(self, X, y, sample_weight, groups):
        self._check_params()
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], y_numeric=False
        )
        y01 = _check_binary_y(y)
        n_samples, n_features = X.shape
        module_cls_name, module_kwargs, extra = self._module_spec(n_features)

        if sample_weight is not None:
            sw = _check_weights(sample_weight, n_samples)
            keep = np.flatnonzero(sw > 0)
        else:
            sw = None
            keep = np.arange(n_samples)
        if groups is not None:
            groups = column_or_1d(groups)
            check_consistent_length(X, groups)
        _require_both_classes(
            y01[keep], "y" if sw is None else "y (rows with sample_weight > 0)"
        )

        rng = check_random_state(self.random_state)
        torch_seed = int(rng.randint(np.iinfo(np.int32).max))
        split_seed = int(rng.randint(np.iinfo(np.int32).max))
        train_idx, valid_idx = self._split(y01, keep, groups, split_seed)

        # standardisation fitted on the training rows
        X_train = X[train_idx]
        mean = X_train.mean(axis=0, dtype=np.float64)
        scale = X_train.std(axis=0, dtype=np.float64)
        tiny = 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))
        scale = np.where(scale <= tiny, 1.0, scale)
        X_train = _standardise(X_train, mean, scale)

        device = _resolve_device(self.device)
        net = self._build_net(
            module_cls_name,
            module_kwargs,
            device,
            n_train=train_idx.size,
            train_weights=None if sw is None else sw[train_idx],
            X_valid=None if valid_idx is None else _standardise(X[valid_idx], mean, scale),
            y_valid=None if valid_idx is None else y01[valid_idx],
            valid_weights=None if (sw is None or valid_idx is None) else sw[valid_idx],
        )
        _fit_seeded(net, X_train, y01[train_idx], torch_seed, device)
        # keep neither the validation data nor the sampler inside the pickled net
        # (plain attributes: skorch's set_params would re-initialise the net)
        net.train_split = None
        net.iterator_train__sampler = None
        net.iterator_train__shuffle = False

        history = net.history
        fitted = {
            "classes_": np.array([0, 1]),
            "mean_": mean,
            "scale_": scale,
            "device_": device,
            "net_": net,
            "n_epochs_": len(history),
            "train_indices_": None if valid_idx is None else train_idx,
            "validation_indices_": valid_idx,
        }
        if valid_idx is None:
            fitted.update(
                validation_scores_=None, best_epoch_=None, best_validation_score_=None
            )
        else:
            scores = [float(s) for s in history[:, "valid_auc"]]
            best = int(np.argmax(scores))
            fitted.update(
                validation_scores_=scores,
                best_epoch_=best + 1,
                best_validation_score_=scores[best],
            )
        fitted.update(extra)
        return fitted

    def _build_net(
        self,
        module_cls_name,
        module_kwargs,
        device,
        n_train,
        train_weights,
        X_valid,
        y_valid,
        valid_weights,
    ):
        import torch
        from skorch import NeuralNetBinaryClassifier
        from skorch.callbacks import EarlyStopping, EpochScoring
        from skorch.dataset import Dataset
        from skorch.helper import predefined_split

        from . import _torch_nets

        kwargs = {f"module__{k}": v for k, v in module_kwargs.items()}
        if train_weights is None or np.all(train_weights == train_weights[0]):
            kwargs["iterator_train__shuffle"] = True
        else:
            kwargs["iterator_train__shuffle"] = False
            kwargs["iterator_train__sampler"] = torch.utils.data.WeightedRandomSampler(
                torch.as_tensor(train_weights, dtype=torch.float64),
                num_samples=int(n_train),
                replacement=True,
            )
        callbacks = []
        if X_valid is not None:
            train_split = predefined_split(Dataset(X_valid, y_valid))
            callbacks = [
                (
                    "valid_auc",
                    EpochScoring(
                        _torch_nets.WeightedValidAUC(y_valid, valid_weights),
                        lower_is_better=False,
                        name="valid_auc",
                        on_train=False,
                    ),
                ),
                (
                    "early_stopping",
                    EarlyStopping(
                        monitor="valid_auc",
                        lower_is_better=False,
                        patience=self.n_iter_no_change,
                        threshold=0.0,
                        load_best=True,
                    ),
                ),
            ]
        else:
            train_split = None
        return NeuralNetBinaryClassifier(
            module=getattr(_torch_nets, module_cls_name),
            criterion=torch.nn.BCEWithLogitsLoss,
            optimizer=torch.optim.Adam,
            lr=float(self.lr),
            batch_size=int(self.batch_size),
            max_epochs=int(self.max_epochs),
            train_split=train_split,
            callbacks=callbacks,
            device=device,
            verbose=int(self.verbose),
            **kwargs,
        )

    # ----------------------------------------------------------------- predict
    def decision_function(self, X):
        """Logit of the adversarial class (higher means more likely adversarial).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,), dtype float64
        """
        check_is_fitted(self, "net_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Xs = _standardise(X, self.mean_, self.scale_)
        return _predict_logits(self.net_, Xs)

    def predict_proba(self, X):
        """Probability of each class, columns ordered as ``classes_ = [0, 1]``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, 2)
        """
        from scipy.special import expit

        p1 = expit(self.decision_function(X))
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X):
        """Predicted labels: 1 (adversarial) where the logit is > 0, else 0.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "net_")
        return self.classes_[(self.decision_function(X) > 0).astype(np.intp)]


def _standardise(X, mean, scale):
    # computed in X's own dtype: no float64 temporary for a float32 X
    dtype = X.dtype
    out = (X - mean.astype(dtype)) / scale.astype(dtype)
    return out.astype(np.float32, copy=False)


# rows per forward pass at prediction time
_PREDICT_CHUNK = 4096


def _predict_logits(net, Xs):
    """Logits of the trained module on float32 rows, in eval mode.

    Runs the module directly (not through a DataLoader, whose iterators draw
    from the global torch generator), so prediction consumes no randomness.
    """
    import torch

    module = net.module_
    was_training = module.training
    module.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, Xs.shape[0], _PREDICT_CHUNK):
                xb = torch.from_numpy(Xs[start : start + _PREDICT_CHUNK]).to(net.device)
                out.append(module(xb).reshape(-1).cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(out).astype(np.float64)


def _fit_seeded(net, X, y, seed, device):
    """``net.fit`` with all torch randomness drawn from ``seed``.

    The global torch generators (CPU, and the CUDA device in use) are forked
    and restored afterwards, so fitting leaves the caller's torch random
    state untouched.
    """
    import torch

    dev = torch.device(device)
    cuda = []
    if dev.type == "cuda":
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        net.fit(X, y)
    return net


# ---------------------------------------------------------------- estimators
_COMMON_PARAMS_DOC = """\
    hidden_size : int, default=100
        Width of the hidden state (units of the hidden layer for the MLP).
    dropout : float, default=0.0
        Dropout probability before the output layer{extra_dropout}.
        The paper uses none; the authors' code used 0.5 in the MLP.
    lr : float, default=3e-4
        Adam learning rate.
    batch_size : int, default=128
        Mini-batch size of training (and of the per-epoch validation pass).
    max_epochs : int, default=100
        Number of training epochs (an upper bound with early stopping).
    validation_fraction : float or None, default=None
        Fraction of the training rows held out to monitor the validation
        ROC AUC (weighted with ``sample_weight``) after every epoch; training
        stops after ``n_iter_no_change`` epochs without improvement and the
        weights of the best epoch are restored.  The split is stratified, or
        grouped when ``groups`` is passed to ``fit`` (an image and its
        adversarial versions stay on one side).  ``None`` trains on all rows
        for ``max_epochs`` epochs.
    n_iter_no_change : int, default=10
        Patience of the early stopping, in epochs.
    device : str, default="auto"
        torch device; ``"auto"`` uses CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation, the batch sampling, dropout and the
        validation split.  Results are reproducible on the CPU (CUDA kernels
        may be non-deterministic).  The global torch random state is left
        unchanged.
    verbose : int, default=0
        0 is silent; a positive value makes skorch print a table of the
        epochs.
"""

_COMMON_ATTRS_DOC = """\
    classes_ : ndarray of shape (2,)
        ``[0, 1]``: authentic, adversarial.
    n_features_in_ : int
        Number of columns of X seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names, when X has string column names.
    mean_, scale_ : ndarray of shape (`n_features_in_`,)
        Per-column standardisation fitted on the training rows (a constant
        column gets scale 1).
    net_ : skorch.NeuralNetBinaryClassifier
        The trained net (it sees standardised float32 inputs).
    device_ : str
        The device the net was trained on.
    n_epochs_ : int
        Number of epochs run.
    train_indices_, validation_indices_ : ndarray or None
        Rows of X used for training and for validation when
        ``validation_fraction`` is set, else None.
    validation_scores_ : list of float or None
        Validation ROC AUC after every epoch.
    best_epoch_ : int or None
        Epoch (1-based) whose weights were kept.
    best_validation_score_ : float or None
        Validation ROC AUC of that epoch.
"""


class SequenceLSTMDetector(_SkorchDetector):
    __doc__ = (
        """LSTM detector over a trajectory of per-layer embeddings.

    Each row of ``X`` (``n_steps * C`` columns, layer-major) is read as a
    sequence of ``n_steps`` steps of ``C`` values; an LSTM runs over it, its
    last hidden state goes through a linear layer to a logit (sigmoid for
    the probability of the adversarial class), following Carrara et al.,
    "Adversarial examples detection in features distance spaces" (2018).
    Inputs are standardised per column with statistics from the training
    rows.

    Parameters
    ----------
    n_steps : int, default=None
        Number of steps of the sequence: the number of embedded layers ``L``
        of a :class:`~sklearn_advdet.PivotEmbedder` output.  Required (the
        default ``None`` raises in ``fit``); ``X``'s column count must be a
        multiple of it, the step width is ``n_features / n_steps``.  For a
        fitted PivotEmbedder ``emb``, ``n_steps=len(emb.layer_indices_)``.
    num_layers : int, default=1
        Number of stacked LSTM layers.
    bidirectional : bool, default=False
        Whether the LSTM also reads the sequence backwards (the final states
        of both directions are concatenated).
"""
        + _COMMON_PARAMS_DOC.format(extra_dropout=" (and between LSTM layers)")
        + """
    Attributes
    ----------
"""
        + _COMMON_ATTRS_DOC
        + """    n_steps_ : int
        Sequence length used.
    step_size_ : int
        Width ``C`` of one step.

    See Also
    --------
    MLPDetector : the baseline on the flattened vector.
    balanced_sample_weight : weights that balance authentic rows and attacks.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import SequenceLSTMDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(200, 12))  # 3 steps of 4 values
    >>> y = (X[:, 0] + X[:, 8] > 0).astype(int)
    >>> det = SequenceLSTMDetector(n_steps=3, lr=1e-2, max_epochs=30,
    ...                            random_state=0).fit(X, y)
    >>> det.predict_proba(X[:3]).shape
    (3, 2)
    >>> bool(det.score(X, y) > 0.9)
    True
    """
    )

    def __init__(
        self,
        n_steps=None,
        *,
        hidden_size=100,
        num_layers=1,
        bidirectional=False,
        dropout=0.0,
        lr=3e-4,
        batch_size=128,
        max_epochs=100,
        validation_fraction=None,
        n_iter_no_change=10,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.n_steps = n_steps
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_own_params(self):
        if self.n_steps is None:
            raise ValueError(
                "n_steps is required: pass the number of embedded layers L "
                "(X has L*C columns, layer-major, as PivotEmbedder outputs)"
            )
        _check_int(self.n_steps, "n_steps", 1)
        _check_int(self.num_layers, "num_layers", 1)
        if not isinstance(self.bidirectional, (bool, np.bool_)):
            raise ValueError(f"bidirectional must be a bool, got {self.bidirectional!r}")

    def _module_spec(self, n_features):
        n_steps = int(self.n_steps)
        if n_features % n_steps:
            raise ValueError(
                f"X has {n_features} columns, not a multiple of n_steps={n_steps}: "
                "the LSTM reads each row as n_steps steps of equal width "
                "(layer-major); pass the number of embedded layers as n_steps"
            )
        step = n_features // n_steps
        module_kwargs = {
            "n_steps": n_steps,
            "n_inputs": step,
            "hidden_size": int(self.hidden_size),
            "num_layers": int(self.num_layers),
            "bidirectional": bool(self.bidirectional),
            "dropout": float(self.dropout),
        }
        return "LSTMNet", module_kwargs, {"n_steps_": n_steps, "step_size_": step}


class MLPDetector(_SkorchDetector):
    __doc__ = (
        """MLP baseline detector on the flattened trajectory.

    ``n_features -> hidden_size`` ReLU units (optional dropout) ``-> 1``
    logit, the baseline of Carrara et al., "Adversarial examples detection
    in features distance spaces" (2018).  Inputs are standardised per
    column with statistics from the training rows.

    Parameters
    ----------
"""
        + _COMMON_PARAMS_DOC.format(extra_dropout="")
        + """
    Attributes
    ----------
"""
        + _COMMON_ATTRS_DOC
        + """
    See Also
    --------
    SequenceLSTMDetector : the paper's detector, reading the layers in order.
    balanced_sample_weight : weights that balance authentic rows and attacks.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import MLPDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(200, 12))
    >>> y = (X[:, 0] + X[:, 8] > 0).astype(int)
    >>> det = MLPDetector(lr=1e-2, max_epochs=30, random_state=0).fit(X, y)
    >>> det.decision_function(X[:3]).shape
    (3,)
    >>> bool(det.score(X, y) > 0.9)
    True
    """
    )

    def __init__(
        self,
        *,
        hidden_size=100,
        dropout=0.0,
        lr=3e-4,
        batch_size=128,
        max_epochs=100,
        validation_fraction=None,
        n_iter_no_change=10,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _module_spec(self, n_features):
        module_kwargs = {
            "n_inputs": int(n_features),
            "hidden_size": int(self.hidden_size),
            "dropout": float(self.dropout),
        }
        return "MLPNet", module_kwargs, {}
