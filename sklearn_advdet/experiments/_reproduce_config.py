"""Attack families, detector configurations and sizes of the reproduction."""

#: Attack families in table order: (display name, attack function name).
FAMILIES = (
    ("L-BFGS", "lbfgs"),
    ("FGSM", "fgsm"),
    ("BIM", "bim"),
    ("PGD", "pgd"),
    ("MI-FGSM", "mifgsm"),
)
_FAMILY_NAMES = [f for f, _ in FAMILIES]
EPS_255 = (4, 8, 16)
_PIVOT_CONFIGS = [(p, m) for p in ("medoid", "centroid") for m in ("cosine", "euclidean")]
_KNN_WEIGHTS = (("kNN", "uniform"), ("W-kNN", "rank"), ("DW-kNN", "distance"))
_KNN_PREPROCESSING = (("none", None), ("L2", "l2"), ("PCA-whitening", "pca"))

#: Subset sizes and budgets of each ``size``.  ``ref_per_class`` /
#: ``test_per_class``: the first N images of every class of train.tar /
#: test.tar in file-name order (None = all); ``lbfgs_images``: L-BFGS attacks a
#: seeded random subset of at most this many correctly classified test images;
#: ``iterative``: extra parameters of BIM / PGD / MI-FGSM (``alpha_frac``: step =
#: alpha_frac * eps); ``max_epochs`` / ``patience``: detector training with
#: early stopping on the validation macro AUC; ``knn_layers``: how many of the
#: deepest hooked blocks the kNN table uses; ``n_neighbors``: k of the kNN
#: scores, scaled with the reference set to the paper's proportion (k = 1000
#: of 50,000 references, 20 % of a class) and capped by the reference size.
SIZES = {
    "tiny": dict(
        ref_per_class=20,
        test_per_class=4,
        lbfgs_images=3,
        lbfgs_params=dict(binary_search_steps=1, max_iter=10),
        iterative=dict(n_iter=2, alpha_frac=0.6),
        max_epochs=12,
        patience=5,
        knn_layers=3,
        n_neighbors=10,
    ),
    "default": dict(
        ref_per_class=None,
        test_per_class=150,
        lbfgs_images=100,
        lbfgs_params=dict(binary_search_steps=2, max_iter=20),
        iterative=None,
        max_epochs=100,
        patience=10,
        knn_layers=3,
        n_neighbors=1000,
    ),
    "full": dict(
        ref_per_class=None,
        test_per_class=None,
        lbfgs_images=1000,
        lbfgs_params={},
        iterative=None,
        max_epochs=100,
        patience=10,
        knn_layers=3,
        n_neighbors=1000,
    ),
}

_SPLIT = (0.7, 0.1, 0.2)
_DEPTHS = (20, 32, 44, 56, 110)
