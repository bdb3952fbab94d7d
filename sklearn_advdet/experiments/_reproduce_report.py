"""Markdown report of :func:`~sklearn_advdet.experiments.reproduce.reproduce`."""

import math
from pathlib import Path

from ._reproduce_config import FAMILY_EPS_255, _FAMILY_NAMES


def _apgd_eps():
    return ", ".join(f"{e}/255" for e in FAMILY_EPS_255["APGD-CE"])


# ------------------------------------------------------------------ report
def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _markdown(res):
    out = _header(res) + _setup(res) + _paper1(res) + _paper2(res)
    c = res["config"]
    out += ["## Deviations from the papers", ""]
    out += [f"- {x}" for x in c["deviations"]]
    out += ["", "## Timings (s)", ""]
    out.append(_table(["stage", "seconds"],
                      [[k, f"{v:.1f}"] for k, v in res["timings"].items()]))
    out.append("")
    return "\n".join(out)


def _header(res):
    """Title, machine, total time and the run's note."""
    c, m = res["config"], res["machine"]
    out = [f"# Reproduction on CIFAR-10: ResNet-{c['depth']} (size `{c['size']}`)", ""]
    out += [
        f"Date: {m['date']}. Machine: {m['platform']}, {m['cpu_count']} CPU(s) "
        f"(torch threads {m['torch_threads']}), "
        f"{'GPU ' + m['cuda'] if m['cuda'] else 'no GPU'}; Python {m['python']}, "
        f"torch {m['torch']}, scikit-learn {m['sklearn']}. Device used: `{c['device']}`. "
        f"Load average at start: {m['load_average_at_start']}.",
        "",
        f"Total wall time: **{res['timings']['total']:.0f} s** "
        f"({res['timings']['total'] / 60:.1f} min).",
        "",
    ]
    if c.get("note"):
        out += [c["note"], ""]
    return out


def _setup(res):
    """The set-up section and the attack success table."""
    c, d = res["config"], res["data"]
    out = ["## Set-up", ""]
    out += [
        f"- Model: ResNet-{c['depth']} (`{Path(c['weights']).name}`), hooked blocks: "
        f"{', '.join(d['layer_names'])} (globally average-pooled) + logits.",
        f"- Reference set (pivots, kNN index): {d['n_ref']} train.tar images "
        + (f"({c['ref_per_class']} per class, the first in file-name order), "
           if c['ref_per_class'] else "(the whole training set), ")
        + "with their true classes.",
        f"- Attacked images: {d['n_test_images']} test.tar images "
        + (f"({c['test_per_class']} per class, the first in file-name order); "
           if c['test_per_class'] else "(the whole test set); ")
        + f"model accuracy on them {d['test_accuracy']:.3f}: {d['n_authentic']} authentic "
        f"(correctly classified) and {d['n_natural_errors']} natural errors (kept apart).",
        f"- Attacks on the authentic images (adversarial = successful attacks): "
        f"L-BFGS (targeted at a random class other than the true one, on a random "
        f"subset of at most "
        f"{c['lbfgs_images']} images, parameters {c['lbfgs_params'] or 'defaults'}), "
        "FGSM, BIM, PGD, MI-FGSM at eps 4, 8, 16/255"
        + (f" (iterative attacks with {c['iterative']})" if c["iterative"] else
           " (BIM: alpha 1/255, n_iter = min(eps+4, 1.25 eps); PGD, MI-FGSM: 10 steps)")
        + "; and three attacks the papers did not run: " + _boundary_attacks(c) + ".",
        f"- Split by source image: {d['split']['n_train_images']} / "
        f"{d['split']['n_val_images']} / {d['split']['n_test_images']} images "
        "(train / validation / test, 70/10/20 %), i.e. "
        f"{d['split']['n_train_rows']} / {d['split']['n_val_rows']} / "
        f"{d['split']['n_test_rows']} detection rows; an image and its adversarial "
        "versions never straddle two parts.",
        f"- Detectors: trained on the train part with `balanced_sample_weight` (authentic "
        f"and every attack family equally likely), Adam lr 3e-4, batch 128, at most "
        f"{c['max_epochs']} epochs, early stopping (patience {c['patience']}) on the "
        "validation macro AUC, best epoch restored.",
        f"- kNN: k = {res['paper2']['k']} (the paper's 1000 of 50,000, scaled to the "
        "reference size), "
        "exact search; PCA whitening keeps min(256, live channels) components (a dead "
        "channel, constant over the reference set, has no variance to whiten); "
        "evaluated on "
        "all detection rows (no training involved).",
        "",
        "Attack success (successful / attacked) and cost (seconds: the attack and the "
        "extraction of its images, when it ran; an attack read back from the cache by a "
        "resumed run keeps that time, while the timings below count only its reading; "
        "n/a: cached before this was recorded):",
        "",
    ]
    out.append(_table(
        ["attack", "eps", "attacked", "adversarial rows", "success rate", "seconds"],
        [[a["attack"], "-" if a["eps"] is None else f"{a['eps255']}/255", a["n_attacked"],
          a["n_adversarial"], _fmt(a["n_adversarial"] / max(a["n_attacked"], 1)),
          _fmt(a.get("seconds"), 1)]
         for a in d["attacks"]]))
    return out


def _paper1(res):
    """Paper 1's tables (ROC AUC per family and per eps) and its figure."""
    d, p1 = res["data"], res["paper1"]
    out = ["", "## Paper 1 (features distance spaces): ROC AUC on the test split", ""]
    out.append(_table(
        ["detector", "pivots", "distance"] + _FAMILY_NAMES + ["macro AUC", "epochs"],
        [[r["detector"], r["pivots"], r["metric"]]
         + [_fmt(r["auc"][f]) for f in _FAMILY_NAMES]
         + [f"**{_fmt(r['macro_auc'])}**" if r["config"] == p1["best_macro"]
            else _fmt(r["macro_auc"]), f"{r['best_epoch']}/{r['n_epochs']}"]
         for r in p1["rows"]]))
    out += ["", "Epochs: best (restored) / run. FGSM, BIM, PGD and MI-FGSM pool their "
            "three eps (APGD-CE has one; L-BFGS, CW-L2 and DeepFool none); every "
            "column compares that family's adversarial test rows with all authentic "
            "test rows (n/a: the family has no adversarial test row). Adversarial test "
            "rows per family: " + ", ".join(
                f"{f} {n}" for f, n in d["split"]["n_adversarial_test_rows"].items())
            + f"; authentic test rows: {d['split']['n_authentic_test_rows']}.", ""]
    keys = p1["eps_columns"]
    out += ["Per-eps breakdown (ROC AUC):", ""]
    out.append(_table(
        ["config"] + keys,
        [[r["config"]] + [_fmt(r["auc_per_eps"].get(k, float("nan"))) for k in keys]
         for r in p1["rows"]]))
    if res.get("figures"):
        out += ["", f"![ROC, best configuration per attack]({res['figures']['roc']})", "",
                "Best configuration per attack: "
                + "; ".join(f"{k}: {v}" for k, v in p1["best_per_attack"].items()) + "."]
    return out


def _paper2(res):
    """Paper 2's table (EER accuracy of the kNN class scores)."""
    d = res["data"]
    out = ["", "## Paper 2 (kNN class score): accuracy at the EER threshold", ""]
    out.append(_table(
        ["layer", "scoring", "preprocessing"] + _FAMILY_NAMES
        + ["aggregated", "natural errors flagged"],
        [[r["layer"], r["weights"], r["preprocessing"]]
         + [_fmt(r["eer_accuracy"][f]) for f in _FAMILY_NAMES]
         + [_fmt(r["aggregated"]), _fmt(r["natural_errors_flagged"])]
         for r in res["paper2"]["rows"]]))
    out += ["", "Per attack: that family's adversarial rows vs all authentic rows, each at "
            "its own EER threshold; aggregated: every attack pooled, one threshold; "
            f"natural errors flagged: share of the {d['n_natural_errors']} natural errors "
            "whose score is at or below the aggregated EER threshold. A low class score "
            "means adversarial; an EER accuracy below 0.5 means that attack's adversarial "
            "images get *higher* scores for their (wrong) predicted class than the "
            "authentic images get for theirs.", ""]
    return out


def _boundary_attacks(c):
    """The report's sentence on CW-L2, DeepFool and APGD-CE."""
    return (
        "CW-L2 (Carlini & Wagner, untargeted, the smallest-L2 adversarial found, on "
        f"a random subset of at most {c['cw_images']} images, parameters "
        f"{c['cw_params']}), DeepFool (parameters {c['deepfool_params']}) and "
        f"APGD-CE at eps {_apgd_eps()} (parameters {c['apgd_params']})"
    )


def _deviations(cfg, size, k):
    dev = [
        "CIFAR-10 images are the JPEG re-encoded ones of ../shared/data (about 10 points "
        "less accurate than the original PNGs), so natural errors are more frequent.",
    ]
    if cfg["ref_per_class"] is not None:
        dev.append(f"Reference set: {cfg['ref_per_class']} training images per class "
                   "instead of all 5,000 (pivots and kNN index from a subset).")
    if cfg["test_per_class"] is not None:
        dev.append(f"Only {cfg['test_per_class']} test images per class are attacked "
                   "(the papers use the whole test set), so the test split is small and "
                   "the AUC / EER figures carry a sampling error of a few points.")
    if k < 1000:
        dev.append(f"k = {k} instead of 1000: k is scaled with the reference set to the "
                   "paper's proportion (1000 of 50,000 references, a fifth of a class); "
                   "with k close to the reference size the plain kNN score degenerates "
                   "to the class prior.")
    dev.append(f"L-BFGS on at most {cfg['lbfgs_images']} images with "
               f"{cfg['lbfgs_params'] or 'the default'} budget (it is slow on a CPU).")
    dev.append(f"CW-L2, DeepFool and APGD-CE ({_apgd_eps()}) are not in either paper: "
               "CW-L2 and DeepFool are minimal-perturbation attacks, which stop just past "
               "the decision boundary and are the ones feature-space detectors tend to "
               "miss, APGD-CE is PGD without a step size to tune, the usual robustness "
               f"check (CW-L2 on at most {cfg['cw_images']} images, it is slow on a CPU). "
               "They are trained on and pooled into the macro AUC like the papers' "
               "attacks, so the macro AUC is not comparable with the papers' (or with "
               "reports made before these columns existed).")
    if cfg["iterative"]:
        dev.append(f"BIM / PGD / MI-FGSM shortened to {cfg['iterative']['n_iter']} steps of "
                   f"{cfg['iterative']['alpha_frac']} eps.")
    if cfg["max_epochs"] < 100:
        dev.append(f"Detectors trained for at most {cfg['max_epochs']} epochs "
                   "(paper: 100).")
    dev.append("Detector model selection by early stopping on the validation macro AUC "
               "(as in the authors' code); the paper trains for a fixed 100 epochs.")
    dev.append("Adversarial images are kept as floats (not re-quantised to 8 bits).")
    return dev
