"""
kNN class scores per layer
==========================

The second method of Carrara et al. (2018) asks whether the training images
nearest to an image, in one hidden layer's feature space, agree with the
class the network predicted.  :class:`~sklearn_advdet.KNNClassScorer` gives
that score for every layer; authentic images score high, adversarial ones
low, and the gap grows with depth.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit

from sklearn_advdet import KNNClassScorer, ScoreThresholdDetector, load_digits_detection
from sklearn_advdet.metrics import eer_accuracy_per_attack, plot_score_density

data = load_digits_detection()
layout = data.layer_sizes

# %%
# One W-kNN score per hidden layer, against the classifier's training set.
scorer = KNNClassScorer(layer_sizes=layout, layers="all", n_neighbors=100,
                        weights="rank").fit(data.X_ref, data.y_ref)
S = scorer.transform(data.X)
print(S.shape, scorer.get_feature_names_out())

# %%
# Score densities: authentic against each attack, one panel per layer.
kind = np.where(data.y == 0, "authentic", data.attack)
fig, axes = plt.subplots(1, layout.n_layers, figsize=(4 * layout.n_layers, 3.5),
                         sharey=False)
for j, ax in enumerate(np.atleast_1d(axes)):
    plot_score_density(S[:, j], kind, ax=ax, bins=20, xlabel="kNN class score",
                       title=layout.layer_names[j])
    if j:
        ax.get_legend().remove()
fig.tight_layout()

# %%
# The paper's detector: threshold one layer's score at the equal-error rate.
train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0)
                   .split(S, data.y, data.groups))
last = layout.n_layers - 1
det = ScoreThresholdDetector(column=last).fit(S[train], data.y[train])
acc = eer_accuracy_per_attack(data.y[test], det.decision_function(S[test]),
                              data.attack[test])
print({k: round(v, 3) for k, v in acc.items()})

# %%
# And a combination no published tool offers: all layers' scores together,
# in a logistic regression.
lr = LogisticRegression().fit(S[train], data.y[train])
acc_lr = eer_accuracy_per_attack(data.y[test], lr.decision_function(S[test]),
                                 data.attack[test])
print({k: round(v, 3) for k, v in acc_lr.items()})
