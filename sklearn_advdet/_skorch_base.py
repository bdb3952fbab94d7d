"""Shared fit / predict machinery of the skorch detectors (torch imported lazily)."""

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import (check_consistent_length, check_is_fitted,
                                      column_or_1d, validate_data)

from ._device import resolve_device
from ._validation import (check_binary_y, check_int, check_real, check_sample_weight,
                          require_both_classes)

# attributes validate_data may set before fit can still fail; restored on error
_INPUT_ATTRS = ("n_features_in_", "feature_names_in_")


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
        check_int(self.hidden_size, "hidden_size", 1)
        check_real(self.dropout, "dropout", 0.0, 1.0)
        check_real(self.lr, "lr", 0.0, np.inf, low_open=True)
        check_int(self.batch_size, "batch_size", 1)
        check_int(self.max_epochs, "max_epochs", 1)
        if self.validation_fraction is not None:
            check_real(
                self.validation_fraction,
                "validation_fraction (or None)",
                0.0,
                1.0,
                low_open=True,
            )
        check_int(self.n_iter_no_change, "n_iter_no_change", 1)
        check_int(self.verbose, "verbose", 0)
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
        y01 = check_binary_y(y)
        n_samples, n_features = X.shape
        module_cls_name, module_kwargs, extra = self._module_spec(n_features)

        if sample_weight is not None:
            sw = check_sample_weight(sample_weight, n_samples)
            keep = np.flatnonzero(sw > 0)
        else:
            sw = None
            keep = np.arange(n_samples)
        if groups is not None:
            groups = column_or_1d(groups)
            check_consistent_length(X, groups)
        require_both_classes(
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

        device = str(resolve_device(self.device))
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
