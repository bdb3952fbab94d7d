"""The recommended default detector, as one function.

Read more in the :ref:`User Guide <features>`.
"""

from numbers import Integral

from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import StrOptions, validate_params
from sklearn.utils.validation import check_array, column_or_1d

from ._layout import FeatureLayout, check_layout

__all__ = ["make_detector", "DETECTOR_FEATURES"]

#: feature families :func:`make_detector` can compose
DETECTOR_FEATURES = ("logit", "mahalanobis", "lid", "knn", "pivots")
_DEFAULT_FEATURES = {
    "supervised": ("logit", "mahalanobis", "lid", "knn"),
    "hybrid": ("logit", "mahalanobis", "lid", "knn"),
    "authentic": ("logit", "mahalanobis"),
}


def _reference_step(name, layout, n_ref, n_jobs):
    """An unfitted reference transformer of one feature family."""
    if name == "mahalanobis":
        from .features.mahalanobis import MahalanobisScorer

        return MahalanobisScorer(layout, log=True)
    if name == "lid":
        from .features.lid import LIDScorer

        return LIDScorer(layout, layers="all", n_neighbors=min(20, n_ref - 1),
                         n_jobs=n_jobs)
    if name == "knn":
        from .knn import KNNClassScorer

        return KNNClassScorer(layout, layers="all", n_neighbors=min(1000, n_ref),
                              weights="rank", n_jobs=n_jobs)
    from .embedding import PivotEmbedder

    return PivotEmbedder(layout, n_jobs=n_jobs)


def _classifier_steps(classifier, random_state):
    if classifier == "boosting":
        return [("classifier", HistGradientBoostingClassifier(
            max_iter=300, learning_rate=0.05, random_state=random_state))]
    if classifier == "logistic":
        return [("scale", StandardScaler()),
                ("classifier", LogisticRegression(C=0.1, max_iter=2000))]
    return [("classifier", classifier)]


def _final_steps(mode, classifier, random_state, n_jobs):
    from .authentic import AuthenticDensityDetector

    if mode == "authentic":
        return [("detector", AuthenticDensityDetector(random_state=random_state,
                                                      n_jobs=n_jobs))]
    steps = _classifier_steps(classifier, random_state)
    if mode == "hybrid":
        from .fusion import ConformalFusionDetector, default_density

        supervised = steps[0][1] if len(steps) == 1 else Pipeline(steps)
        return [("detector", ConformalFusionDetector(
            supervised, default_density(n_jobs), random_state=random_state))]
    return steps


@validate_params(
    {
        "layout": [FeatureLayout, "array-like"],
        "X_ref": ["array-like"],
        "y_ref": ["array-like"],
        "mode": [StrOptions({"supervised", "hybrid", "authentic"})],
        "features": [tuple, list, None],
        "classifier": [StrOptions({"boosting", "logistic"}), BaseEstimator],
        "random_state": ["random_state"],
        "n_jobs": [Integral, None],
    },
    prefer_skip_nested_validation=True,
)
def make_detector(layout, X_ref, y_ref, *, mode="hybrid", features=None,
                  classifier="boosting", random_state=None, n_jobs=None):
    """Build the recommended detection Pipeline, its reference steps fitted and frozen.

    The feature families are fitted on the reference set (the classifier's
    training-set features ``X_ref`` and class labels ``y_ref``), wrapped in
    :class:`~sklearn.frozen.FrozenEstimator` and put side by side in a
    :class:`~sklearn.pipeline.FeatureUnion`; the last step is left
    unfitted. ``fit`` the returned pipeline on a detection set (supervised)
    or on authentic rows (authentic); refitting it, as
    :class:`~sklearn.model_selection.GridSearchCV` does, never refits the
    reference steps.

    The default composition is the best measured one so far (see the
    :ref:`User Guide <features>` for the figures and for when to use which
    mode): logit features, per-layer Mahalanobis distance (log), LID and
    W-kNN scores, then gradient boosting.

    Parameters
    ----------
    layout : FeatureLayout or tuple of int
        Layout of ``X_ref`` and of the rows to detect; it needs the logits
        block (``FeatureLayout(sizes, has_logits=True)``, e.g. the feature
        store's ``data.layout``).
    X_ref : array-like of shape (n_ref, n_features)
        Reference features: the classifier's training set, logits last.
    y_ref : array-like of shape (n_ref,)
        Their class indices (logit columns).
    mode : {"hybrid", "supervised", "authentic"}, default="hybrid"
        ``"supervised"``: a classifier trained on authentic (``y=0``) and
        adversarial (``y=1``) rows — for a known threat model.
        ``"hybrid"``: :class:`~sklearn_advdet.ConformalFusionDetector`, the
        same classifier and a density model of the authentic rows on the
        same features, a row flagged when either flags it (conformal
        p-values, Bonferroni) — when you can train on some attacks but must
        also catch others.
        ``"authentic"``: :class:`~sklearn_advdet.AuthenticDensityDetector`,
        a density model fitted on authentic rows only with a threshold
        calibrated to its ``target_fpr`` — when no attack is available to
        train on, or to generalise to unseen attacks.
    features : sequence of str, default=None
        Feature families, in column order, among ``"logit"``
        (:class:`~sklearn_advdet.LogitFeatures`), ``"mahalanobis"``
        (:class:`~sklearn_advdet.MahalanobisScorer`, ``log=True``),
        ``"lid"`` (:class:`~sklearn_advdet.LIDScorer`, ``k=20``), ``"knn"``
        (:class:`~sklearn_advdet.KNNClassScorer`, W-kNN, ``k=1000``) and
        ``"pivots"`` (:class:`~sklearn_advdet.PivotEmbedder`, centroids),
        each over every hidden layer. ``None``: ``("logit", "mahalanobis",
        "lid", "knn")`` (supervised, hybrid) or ``("logit", "mahalanobis")``
        (authentic).
    classifier : {"boosting", "logistic"} or estimator, default="boosting"
        The supervised classifier (last step, or the hybrid's supervised
        component): ``HistGradientBoostingClassifier(max_iter=300,
        learning_rate=0.05)``, standardised ``LogisticRegression(C=0.1)``,
        or any classifier. Ignored in authentic mode.
    random_state : int, RandomState instance or None, default=None
        Seeds the last step.
    n_jobs : int, default=None
        Threads of the neighbour searches and pivot computations (and of the
        authentic detector).

    Returns
    -------
    pipeline : Pipeline
        Steps ``"features"`` (a FeatureUnion of frozen reference steps, named
        as in ``features``), then ``"classifier"`` (``"scale"`` before it for
        logistic regression) or ``"detector"`` (hybrid and authentic modes). Its
        ``get_feature_names_out`` gives ``<family>__<column>`` names.

    Notes
    -----
    To balance attacks in supervised training, pass
    ``classifier__sample_weight=balanced_sample_weight(y, attack)`` to
    ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_advdet import FeatureLayout, make_detector
    >>> rng = np.random.RandomState(0)
    >>> layout = FeatureLayout([4, 3], has_logits=True)
    >>> y_ref = np.arange(60) % 3
    >>> X_ref = np.hstack([rng.normal(size=(60, 4)) + y_ref[:, None], 3 * np.eye(3)[y_ref]])
    >>> det = make_detector(layout, X_ref, y_ref, mode="supervised",
    ...                     features=["logit", "mahalanobis"])
    >>> [name for name, _ in det.steps]
    ['features', 'classifier']
    >>> X = np.vstack([X_ref, X_ref + rng.normal(scale=3, size=X_ref.shape)])
    >>> y = np.repeat([0, 1], 60)
    >>> det.fit(X, y).predict_proba(X).shape
    (120, 2)
    >>> det[:-1].get_feature_names_out()[[0, -1]].tolist()
    ['logit__max_softmax', 'mahalanobis__mahalanobis_layer0']
    """
    X_ref = check_array(X_ref, dtype=["float64", "float32"], input_name="X_ref")
    y_ref = column_or_1d(y_ref)
    layout = check_layout(layout, X_ref.shape[1], need_logits=True,
                          estimator="make_detector")
    names = tuple(_DEFAULT_FEATURES[mode] if features is None else features)
    unknown = [f for f in names if f not in DETECTOR_FEATURES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"features must list distinct names among {list(DETECTOR_FEATURES)}, "
            f"got {list(names)!r}"
        )
    from .features import LogitFeatures

    steps = []
    for name in names:
        # LogitFeatures learns nothing, but frozen like the others the whole
        # union is one frozen step: refitting the pipeline (a grid search, a
        # benchmark's splits) never re-runs it, and its output can be cached
        step = (LogitFeatures(layout) if name == "logit"
                else _reference_step(name, layout, X_ref.shape[0], n_jobs))
        steps.append((name, FrozenEstimator(step.fit(X_ref, y_ref))))
    return Pipeline([("features", FeatureUnion(steps))]
                    + _final_steps(mode, classifier, random_state, n_jobs))
