"""Shared machinery of the peer detectors: one score column, higher = more adversarial."""

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

__all__ = ["PeerScorer"]


class PeerScorer(TransformerMixin, BaseEstimator):
    """Base of the peers: ``transform`` gives one column, higher = more adversarial.

    A peer composes with :class:`~sklearn_advdet.ScoreThresholdDetector`
    (``direction="high"``) or with any classifier (e.g. a
    :class:`~sklearn.linear_model.LogisticRegression`) in a Pipeline.
    Subclasses set ``_score_name`` and implement ``fit`` and ``_score``.
    """

    _score_name = "score"

    def transform(self, X):
        """The peer's score of every row, as one column (higher = more adversarial).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        S : ndarray of shape (n_samples, 1), float64
        """
        check_is_fitted(self)
        return np.asarray(self._score(X), dtype=np.float64).reshape(-1, 1)

    def score_samples(self, X):
        """The score as a 1-D array (the column of :meth:`transform`)."""
        return self.transform(X)[:, 0]

    def get_feature_names_out(self, input_features=None):
        """``[<score name>]``.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against the input seen in ``fit``.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        _check_feature_names_in(self, input_features)
        return np.asarray([self._score_name], dtype=object)
