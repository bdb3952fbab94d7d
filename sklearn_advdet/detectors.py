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

import numpy as np

from ._skorch_base import _SkorchDetector
from ._validation import check_int
from .sample_weights import balanced_sample_weight

__all__ = ["SequenceLSTMDetector", "MLPDetector", "balanced_sample_weight"]


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
        check_int(self.n_steps, "n_steps", 1)
        check_int(self.num_layers, "num_layers", 1)
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
