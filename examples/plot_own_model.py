"""
Detecting attacks on your own PyTorch model
===========================================

Everything the detectors need is the 2-D feature matrix of a model's hidden
layers.  This example takes a plain ``torch.nn.Module`` of our own (a small
CNN on scikit-learn's 8x8 digits), extracts the pooled activations of named
modules with forward hooks, attacks it with FGSM and PGD, and fits the
pivot-distance detector on the result.

For a CIFAR or ImageNet network the steps are the same: pass its module names
(or a preset such as ``"cifar_resnet"`` / ``"resnet50"``) to the extractor.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from torch import nn

from sklearn_advdet import PivotEmbedder, SequenceLSTMDetector, balanced_sample_weight
from sklearn_advdet.deep.attacks import run_attack
from sklearn_advdet.deep.extraction import FeatureExtractor
from sklearn_advdet.metrics import detection_report, plot_roc_curves

# %%
# Your model: any module whose input is an image in [0, 1] (put the
# normalisation inside the model) and whose output is the logits.
torch.manual_seed(0)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                   nn.MaxPool2d(2))
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU())
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        return self.out(self.fc1(self.conv2(self.conv1(x))))


digits = load_digits()
images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
X_tr, X_te, y_tr, y_te = train_test_split(images, digits.target, test_size=0.3,
                                          random_state=0, stratify=digits.target)
model = SmallCNN()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
xt, yt = torch.from_numpy(X_tr), torch.from_numpy(y_tr)
for epoch in range(15):
    for idx in torch.randperm(len(xt)).split(64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
model.eval()
with torch.no_grad():
    acc = (model(torch.from_numpy(X_te)).argmax(1).numpy() == y_te).mean()
print(f"test accuracy {acc:.3f}")

# %%
# Hook the modules you care about, by name.  The reference set is the
# features of the classifier's *training* images, with their classes.
layers = ["conv1", "conv2", "fc1"]
extractor = FeatureExtractor(model, layers=layers, device="cpu", progress=False)
ref = extractor.extract(X_tr, labels=y_tr)
print(ref.layout)

# %%
# Attack the correctly classified test images.
test_feats = extractor.extract(X_te, labels=y_te)
correct = test_feats.predictions == y_te
clean, labels = X_te[correct], y_te[correct]
rows, y, attack, groups = [test_feats.X[correct]], [np.zeros(correct.sum(), int)], [
    np.array(["authentic"] * correct.sum())], [np.flatnonzero(correct)]
for name, params in [("fgsm", {"eps": 0.1}), ("pgd", {"eps": 0.1, "n_iter": 10})]:
    result = run_attack(name, model, clean, labels, random_state=0, **params)
    ok = result.success.numpy()
    adv = extractor.extract(result.images.numpy()[ok])
    rows.append(adv.X)
    y.append(np.ones(ok.sum(), int))
    attack.append(np.array([name] * ok.sum()))
    groups.append(np.flatnonzero(correct)[ok])
    print(f"{name}: {ok.mean():.0%} of {len(ok)} images fooled")
X, y, attack, groups = map(np.concatenate, (rows, y, attack, groups))

# %%
# Pivot distances per layer, then an LSTM over the layer sequence.
embedder = PivotEmbedder(layer_sizes=ref.layout, pivots="medoid").fit(ref.X, ref.labels)
E = embedder.transform(X)
train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0)
                   .split(E, y, groups))
det = SequenceLSTMDetector(n_steps=len(layers), max_epochs=40, random_state=0)
det.fit(E[train], y[train], sample_weight=balanced_sample_weight(y[train], attack[train]))
score = det.decision_function(E[test])
print(detection_report(y[test], score, attack[test]))
plot_roc_curves(y[test], score, attack[test], title="pivot + LSTM on your model")
plt.show()
