"""
Tuning a pivot-distance detector with GridSearchCV
==================================================

The first method of Carrara et al. (2018) embeds every hooked layer's
features as distances to per-class pivots and feeds the layer sequence to a
detector.  Here a detection :class:`~sklearn.pipeline.Pipeline` is tuned by
:class:`~sklearn.model_selection.GridSearchCV` over the pivot strategy, the
distance and the detector, with :class:`~sklearn.model_selection.GroupKFold`
so that an image and its adversarial versions never straddle folds.

The pivots come from the *reference set* (the classifier's training-set
features with their classes), given to the embedder as a parameter; with a
``joblib.Memory`` cache each distinct pivot set is computed once for the
whole search, not once per fold.
"""

# %%
# The embedded data set: a small CNN trained on scikit-learn's digits,
# attacked by its gradient-sign, L-BFGS, CW-L2, DeepFool, APGD-CE, target-class
# and noise attacks, its hidden layers extracted.
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import sklearn
from joblib import Memory
from sklearn.model_selection import GridSearchCV, GroupKFold, GroupShuffleSplit
from sklearn.pipeline import Pipeline

from sklearn_advdet import (
    MLPDetector,
    PivotEmbedder,
    balanced_sample_weight,
    load_digits_detection,
)
from sklearn_advdet.metrics import detection_report, make_macro_auc_scorer

data = load_digits_detection()
print(data.X.shape, "detection rows;", data.X_ref.shape, "reference rows")
print("layers:", data.layer_sizes.layer_names)

# %%
# Hold out a test split by source image.
train, test = next(
    GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0).split(
        data.X, data.y, data.groups
    )
)

# %%
# The pipeline: pivots from the reference set (cached), then an MLP detector
# trained with attack-balanced sample weights.
sklearn.set_config(enable_metadata_routing=True)
memory = Memory(tempfile.mkdtemp(), verbose=0)
detector = MLPDetector(max_epochs=30, random_state=0).set_fit_request(sample_weight=True)
pipe = Pipeline(
    [
        ("embed", PivotEmbedder(layer_sizes=data.layer_sizes,
                                reference=(data.X_ref, data.y_ref), memory=memory)),
        ("detect", detector),
    ]
)
grid = {
    "embed__pivots": ["centroid", "medoid"],
    "embed__metric": ["euclidean", "cosine"],
    "detect__hidden_size": [32, 100],
}
search = GridSearchCV(pipe, grid, scoring=make_macro_auc_scorer(), cv=GroupKFold(3))
search.fit(
    data.X[train], data.y[train],
    groups=data.groups[train],
    attack=data.attack[train],
    sample_weight=balanced_sample_weight(data.y[train], data.attack[train]),
)
print("best:", search.best_params_, f"macro AUC {search.best_score_:.3f}")

# %%
# The best pipeline on the held-out images.
score = search.decision_function(data.X[test])
print(detection_report(data.y[test], score, data.attack[test]))

# %%
# Mean cross-validated macro AUC of every candidate.
res = search.cv_results_
labels = [
    f"{p['embed__pivots']}/{p['embed__metric']}/{p['detect__hidden_size']}"
    for p in res["params"]
]
order = np.argsort(res["mean_test_score"])
fig, ax = plt.subplots(figsize=(6, 4))
ax.barh(np.array(labels)[order], res["mean_test_score"][order],
        xerr=res["std_test_score"][order])
ax.set_xlabel("cross-validated macro AUC")
ax.set_xlim(0.5, 1.0)
ax.set_title("pivots / metric / hidden units")
fig.tight_layout()
sklearn.set_config(enable_metadata_routing=False)
