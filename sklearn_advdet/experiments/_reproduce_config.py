"""Attack families, detector configurations and sizes of the reproduction."""

#: Attack families in table order: (display name, attack function name).
#: The papers' five, then the minimal-perturbation attacks CW-L2 and DeepFool
#: and APGD-CE, which the papers did not run.
FAMILIES = (
    ("L-BFGS", "lbfgs"),
    ("FGSM", "fgsm"),
    ("BIM", "bim"),
    ("PGD", "pgd"),
    ("MI-FGSM", "mifgsm"),
    ("CW-L2", "cw_l2"),
    ("DeepFool", "deepfool"),
    ("APGD-CE", "apgd"),
)
_FAMILY_NAMES = [f for f, _ in FAMILIES]
#: Budgets (x/255) of the gradient-sign families.
EPS_255 = (4, 8, 16)
#: Budgets (x/255) of every family that has one: APGD-CE at 8/255 only (its
#: 100 iterations cost ten times a PGD run); L-BFGS, CW-L2 and DeepFool have
#: none (one per-eps column each, named after the family).
FAMILY_EPS_255 = {"FGSM": EPS_255, "BIM": EPS_255, "PGD": EPS_255, "MI-FGSM": EPS_255,
                  "APGD-CE": (8,)}
#: The order in which the detection set grows, one family per call (the
#: first call also extracts the reference and test features).
_BUILD_ORDER = ("fgsm", "bim", "pgd", "mifgsm", "lbfgs", "cw_l2", "deepfool", "apgd")
_GRADIENT_SIGN = ("bim", "pgd", "mifgsm")
_PIVOT_CONFIGS = [(p, m) for p in ("medoid", "centroid") for m in ("cosine", "euclidean")]
_KNN_WEIGHTS = (("kNN", "uniform"), ("W-kNN", "rank"), ("DW-kNN", "distance"))
_KNN_PREPROCESSING = (("none", None), ("L2", "l2"), ("PCA-whitening", "pca"))

#: Subset sizes and budgets of each ``size``.  ``ref_per_class`` /
#: ``test_per_class``: the first N images of every class of train.tar /
#: test.tar in file-name order (None = all); ``lbfgs_images`` / ``cw_images``:
#: L-BFGS / CW-L2 attack a seeded random subset of at most this many correctly
#: classified test images (both are slow on a CPU), with ``lbfgs_params`` /
#: ``cw_params``; ``apgd_params``, ``deepfool_params``: those of APGD-CE and
#: DeepFool (which runs on every correctly classified test image; at size
#: tiny over the 3 most likely classes instead of all 10, a third of the
#: backward passes);
#: ``iterative``: extra parameters of BIM / PGD / MI-FGSM (``alpha_frac``: step =
#: alpha_frac * eps); ``max_epochs`` / ``patience``: detector training with
#: early stopping on the validation macro AUC; ``knn_layers``: how many of the
#: deepest hooked blocks the kNN table uses; ``n_neighbors``: k of the kNN
#: scores, scaled with the reference set to the paper's proportion (k = 1000
#: of 50,000 references, 20 % of a class) and capped by the reference size.
_DEEPFOOL = dict(norm="l2", overshoot=0.02, n_iter=50)
SIZES = {
    "tiny": dict(
        ref_per_class=20,
        test_per_class=4,
        lbfgs_images=3,
        lbfgs_params=dict(binary_search_steps=1, max_iter=10),
        cw_images=3,
        cw_params=dict(binary_search_steps=1, n_iter=10),
        apgd_params=dict(n_iter=5),
        deepfool_params=dict(_DEEPFOOL, n_candidates=3),
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
        cw_images=300,
        cw_params=dict(binary_search_steps=5, n_iter=100),
        apgd_params=dict(n_iter=100),
        deepfool_params=_DEEPFOOL,
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
        cw_images=1000,
        cw_params=dict(binary_search_steps=9, n_iter=1000),
        apgd_params=dict(n_iter=100),
        deepfool_params=_DEEPFOOL,
        iterative=None,
        max_epochs=100,
        patience=10,
        knn_layers=3,
        n_neighbors=1000,
    ),
}

_SPLIT = (0.7, 0.1, 0.2)
_DEPTHS = (20, 32, 44, 56, 110)


#: attacks run on a seeded subset of at most ``<prefix>_images`` images with
#: ``<prefix>_params``: name -> the prefix of their keys in ``SIZES``
_SUBSET_ATTACKS = {"lbfgs": "lbfgs", "cw_l2": "cw"}


def _attack_specs(cfg):
    """The attack configurations of a size, one family label each."""
    from ..deep.attacks import eps_from_255

    specs = []
    for family, name in FAMILIES:
        if name in _SUBSET_ATTACKS:  # slow: a random subset of the images
            prefix = _SUBSET_ATTACKS[name]
            specs.append((name, None, {**cfg[f"{prefix}_params"], "label": family,
                                       "max_images": int(cfg[f"{prefix}_images"])}))
        elif name == "deepfool":
            specs.append((name, None, {**cfg["deepfool_params"], "label": family}))
        else:
            for eps in map(eps_from_255, FAMILY_EPS_255[family]):
                specs.append((name, eps, _budget_params(name, eps, cfg, family)))
    return specs


def _budget_params(name, eps, cfg, family):
    params = {"label": family}
    if name == "apgd":
        params.update(cfg["apgd_params"])
    it = cfg["iterative"]
    if it is not None and name in _GRADIENT_SIGN:
        params["n_iter"] = int(it["n_iter"])
        params["alpha"] = float(it["alpha_frac"]) * eps
    return params


def _eps_columns():
    """The per-eps table's columns: ``FAMILY-e`` per budget, ``FAMILY`` without one."""
    return [f"{family}-{e}" if family in FAMILY_EPS_255 else family
            for family, _ in FAMILIES for e in FAMILY_EPS_255.get(family, (None,))]
