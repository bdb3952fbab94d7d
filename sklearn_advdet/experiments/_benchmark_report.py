"""Tables and figures of a benchmark from the scores of its cells."""

import numpy as np
from joblib import Parallel, delayed
from sklearn.utils import Bunch

from ..evaluation.report import detection_report
from ._benchmark_detectors import CALIBRATED

__all__ = ["summarise", "markdown", "write_figures"]

_CELL_METRICS = ("auc", "tpr_at_fpr_0.05", "fpr_at_tpr", "eer_accuracy")


def _report(data, test, scores, n_bootstrap, random_state):
    return detection_report(data.y[test], scores, data.attack[test], data.groups[test],
                            n_bootstrap=n_bootstrap, random_state=random_state)


def _cell_of(rep, row):
    return {m: rep.rows[row][m] for m in _CELL_METRICS} | {"n_adv": rep.rows[row]["n_adv"]}


def _cross_row_name(data, test, test_name):
    """The report row of a cross-epsilon cell (its adversarial rows' attacks pooled)."""
    return "overall" if test_name not in set(data.attack[test]) else test_name


def natural_errors_and_calibration(known, natural, data):
    """Per detector of the known protocol: natural errors flagged, FPR reached.

    ``errors_flagged_at_5pct_fpr``: share of the natural errors scoring above
    the 95th percentile of the test authentic rows' scores (the threshold of
    the 5 % FPR column). For the detectors of ``CALIBRATED`` (a threshold
    fitted to a target FPR on authentic rows, ``decision_function > 0``):
    ``realised_fpr``, the share of test authentic rows flagged at that
    threshold, and ``errors_flagged_at_own_threshold``.
    """
    out = {}
    for det, rows in known.items():
        (_, _, test, scores), = rows
        auth = np.asarray(scores)[data.y[test] == 0]
        entry = {"n_authentic_test": int(auth.size)}
        err = natural.get(det)
        if err is not None and auth.size:
            entry["n_errors"] = int(len(err))
            entry["errors_flagged_at_5pct_fpr"] = float(
                np.mean(err > np.quantile(auth, 0.95, method="higher")))
        if det in CALIBRATED:
            entry["target_fpr"] = CALIBRATED[det]
            entry["realised_fpr"] = float(np.mean(auth > 0)) if auth.size else None
            if err is not None:
                entry["errors_flagged_at_own_threshold"] = float(np.mean(err > 0))
        out[det] = entry
    return out


def summarise(cells, data, *, n_bootstrap, random_state, natural_errors=None, n_jobs=None):
    """JSON-ready results of every protocol from ``{protocol: {detector: cells}}``.

    With the known protocol, ``"natural_errors"`` holds
    :func:`natural_errors_and_calibration` (``natural_errors``: the
    detectors' scores of ``data.X_errors``).  The (protocol, detector)
    reports run through joblib on ``n_jobs`` workers (each bootstrap draws
    from its own seeded generator, so the results do not depend on
    ``n_jobs``).
    """
    out = {}
    if cells.get("known"):
        out["natural_errors"] = natural_errors_and_calibration(
            cells["known"], natural_errors or {}, data)
    # the reports need the labels only: the workers are not sent the features
    slim = Bunch(y=np.asarray(data.y), attack=np.asarray(data.attack),
                 groups=np.asarray(data.groups))
    jobs = [(protocol, det) for protocol, by_det in cells.items() for det in by_det]
    done = Parallel(n_jobs=n_jobs)(
        delayed(_summarise_one)(protocol, cells[protocol][det], slim, n_bootstrap, random_state)
        for protocol, det in jobs)
    for protocol in cells:
        out[protocol] = {}
    for (protocol, det), res in zip(jobs, done):
        out[protocol][det] = res
    return out


def _summarise_one(protocol, rows, data, n_bootstrap, random_state):
    """The results of one detector under one protocol."""
    if protocol == "known":
        (_, _, test, scores), = rows
        return _report(data, test, scores, n_bootstrap, random_state).to_dict()
    if protocol in ("leave_one_attack_out", "unseen"):
        return _loao(rows, data, n_bootstrap, random_state)
    train_names = list(dict.fromkeys(r[0] for r in rows))
    test_names = list(dict.fromkeys(r[1] for r in rows))
    auc = np.full((len(train_names), len(test_names)), np.nan)
    cells_out = []
    for tr, te, test, scores in rows:
        rep = _report(data, test, scores, n_bootstrap, random_state)
        row = te if protocol == "transfer" else _cross_row_name(data, test, te)
        c = _cell_of(rep, row)
        auc[train_names.index(tr), test_names.index(te)] = c["auc"]["value"]
        cells_out.append({"train": tr, "test": te, **c})
    return {"train": train_names, "test": test_names,
            "auc": [[None if np.isnan(v) else float(v) for v in r] for r in auc],
            "cells": cells_out}


def _loao(rows, data, n_bootstrap, random_state):
    """Held-out cells and their macro; its interval from the shared resamples.

    Every split tests on the same source images (one partition), and the
    reports draw with the same seed, so resample ``b`` is the same draw of
    images in every split: the macro of resample ``b`` is the mean of the
    splits' resample ``b``.
    """
    per, boots = {}, []
    for _, held, test, scores in rows:
        rep = _report(data, test, scores, n_bootstrap, random_state)
        per[held] = _cell_of(rep, held)
        if rep.bootstrap is not None:
            boots.append(rep.bootstrap[held]["auc"])
    value = float(np.mean([c["auc"]["value"] for c in per.values()]))
    tpr = [c["tpr_at_fpr_0.05"]["value"] for c in per.values()]
    macro = {"value": value, "low": None, "high": None}
    if boots and len({b.shape for b in boots}) == 1:
        m = np.mean(boots, axis=0)
        m = m[np.isfinite(m)]
        if m.size:
            macro["low"], macro["high"] = (float(q) for q in np.quantile(m, [0.025, 0.975]))
    return {"held_out": per, "macro_auc": value, "macro": macro,
            "macro_tpr_at_fpr_0.05": (float(np.mean(tpr)) if all(v is not None for v in tpr)
                                      else None)}


def _fmt(cell, digits=3):
    if cell is None or cell.get("value") is None:
        return "-"
    text = f"{cell['value']:.{digits}f}"
    if cell.get("low") is not None and not np.isnan(cell["low"]):
        text += f" [{cell['low']:.{digits}f}, {cell['high']:.{digits}f}]"
    return text


def _table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _known_md(res, groups):
    attacks = next(iter(res.values()))["rows"]
    cols = [a for a in attacks if a not in ("overall",)]
    text = ["## Known attacks (trained and tested on every attack, split by source image)\n",
            "ROC AUC [95 % bootstrap interval over source images].\n"]
    rows = [[d, groups.get(d, "")] + [_fmt(r["rows"][c]["auc"]) for c in cols]
            for d, r in res.items()]
    text.append(_table(["detector", "kind"] + cols, rows))
    text.append("\nTPR at 5 % FPR.\n")
    rows = [[d, groups.get(d, "")] + [_fmt(r["rows"][c]["tpr_at_fpr_0.05"]) for c in cols]
            for d, r in res.items()]
    text.append(_table(["detector", "kind"] + cols, rows))
    return "\n".join(text)


def _loao_md(res, groups, title="## Leave one attack out (trained on the other attacks, "
             "tested on this one)\n"):
    fams = list(next(iter(res.values()))["held_out"])
    text = [title,
            "ROC AUC of the held-out attack [95 % interval]; macro = mean over held-out "
            "attacks (interval from the same resamples of the test images).\n"]
    rows = [[d, groups.get(d, "")] + [_fmt(r["held_out"][f]["auc"]) for f in fams]
            + [_fmt(r["macro"])] for d, r in res.items()]
    text.append(_table(["detector", "kind"] + fams + ["macro"], rows))
    text.append("\nTPR at 5 % FPR of the held-out attack; macro = mean over held-out "
                "attacks.\n")
    rows = [[d, groups.get(d, "")]
            + [_fmt(r["held_out"][f]["tpr_at_fpr_0.05"]) for f in fams]
            + [_fmt({"value": r.get("macro_tpr_at_fpr_0.05")})] for d, r in res.items()]
    text.append(_table(["detector", "kind"] + fams + ["macro"], rows))
    return "\n".join(text)


def _off_diagonal_mean(r):
    vals = [v for i, row in enumerate(r["auc"]) for j, v in enumerate(row)
            if v is not None and r["train"][i] != r["test"][j]]
    return {"value": float(np.mean(vals)) if vals else None}


def _headline_md(results, groups):
    """One row per detector: macro AUC under each protocol."""
    known, unseen = results.get("known", {}), results.get("unseen", {})
    loao, tr, ce = (results.get(k, {}) for k in ("leave_one_attack_out", "transfer",
                                                  "cross_epsilon"))
    head = ["detector", "kind", "known", "unseen (FGSM+PGD ->)", "leave one attack out",
            "transfer (A -> B != A)", "cross-epsilon (a -> b != a)"]
    rows = []
    for d in dict.fromkeys([*known, *unseen, *loao, *tr, *ce]):
        rows.append([d, groups.get(d, ""),
                     _fmt(known[d]["rows"]["macro"]["auc"]) if d in known else "-",
                     _fmt(unseen[d]["macro"]) if d in unseen else "-",
                     _fmt(loao[d]["macro"]) if d in loao else "-",
                     _fmt(_off_diagonal_mean(tr[d]), 3) if d in tr else "-",
                     _fmt(_off_diagonal_mean(ce[d]), 3) if d in ce else "-"])
    return ("## Summary: macro ROC AUC over attacks under each protocol\n\n"
            "[95 % bootstrap interval over source images]; the last two columns average "
            "the off-diagonal cells of the train x test matrices below.\n\n"
            + _table(head, rows))


def _natural_md(res, groups):
    head = ["detector", "kind", "natural errors flagged at 5 % FPR",
            "FPR reached at its own threshold (target)", "natural errors flagged there"]
    rows = []
    for d, r in res.items():
        flagged = r.get("errors_flagged_at_5pct_fpr")
        own = r.get("realised_fpr")
        rows.append([d, groups.get(d, ""),
                     "-" if flagged is None else f"{flagged:.3f} of {r['n_errors']}",
                     "-" if own is None else
                     f"{own:.3f} of {r['n_authentic_test']} ({r['target_fpr']:.2f})",
                     "-" if r.get("errors_flagged_at_own_threshold") is None
                     else f"{r['errors_flagged_at_own_threshold']:.3f}"])
    return ("## Natural errors and calibrated thresholds (known protocol)\n\n"
            "Natural errors: authentic test images the classifier gets wrong (never "
            "trained on). Flagged at 5 % FPR = scoring above the 95th percentile of the "
            "test authentic rows. A detector with its own calibrated threshold (the "
            "authentic-only default: target FPR on held-back authentic training rows) "
            "also shows the FPR it reached on the test authentic rows.\n\n"
            + _table(head, rows))


def _matrix_md(res, title, what):
    text = [f"## {title}\n", f"ROC AUC, rows = trained on {what}, columns = tested on {what}.\n"]
    for d, r in res.items():
        text.append(f"\n### {d}\n")
        rows = [[tr] + ["-" if v is None else f"{v:.3f}" for v in r["auc"][i]]
                for i, tr in enumerate(r["train"])]
        text.append(_table(["train \\ test"] + r["test"], rows))
    return "\n".join(text)


def markdown(results, summary, groups):
    """The whole Markdown report."""
    parts = ["# Detection benchmark\n", summary, _headline_md(results, groups)]
    if results.get("known"):
        parts.append(_known_md(results["known"], groups))
    if results.get("natural_errors"):
        parts.append(_natural_md(results["natural_errors"], groups))
    if results.get("unseen"):
        parts.append(_loao_md(results["unseen"], groups, title=(
            "## Unseen attacks (trained on FGSM + PGD only, tested on each other attack)\n")))
    if results.get("leave_one_attack_out"):
        parts.append(_loao_md(results["leave_one_attack_out"], groups))
    if results.get("cross_epsilon"):
        parts.append(_matrix_md(results["cross_epsilon"], "Cross-epsilon", "budget"))
    if results.get("transfer"):
        parts.append(_matrix_md(results["transfer"], "Attack transfer", "attack"))
    return "\n".join(parts)


def write_figures(cells, results, data, fig_dir):
    """ROC per attack (known protocol) and train x test AUC heat maps; returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..metrics import plot_roc_curves

    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for det, rows in cells.get("known", {}).items():
        (_, _, test, scores), = rows
        fig, ax = plt.subplots(figsize=(5, 5))
        plot_roc_curves(data.y[test], scores, data.attack[test], ax=ax, title=f"{det}: known")
        paths.append(_save(fig, fig_dir / f"roc_{det}.png", plt))
    for protocol in ("transfer", "cross_epsilon"):
        for det, r in results.get(protocol, {}).items():
            paths.append(_heat_map(r, det, protocol, fig_dir, plt))
    return paths


def _heat_map(r, det, protocol, fig_dir, plt):
    M = np.array([[np.nan if v is None else v for v in row] for row in r["auc"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * M.shape[1], 1.0 + 0.6 * M.shape[0]))
    im = ax.imshow(M, vmin=0.5, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(M.shape[1]), r["test"], rotation=45, ha="right")
    ax.set_yticks(range(M.shape[0]), r["train"])
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            if np.isfinite(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if M[i, j] < 0.8 else "black")
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    ax.set_title(f"{det}: {protocol} AUC", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, fig_dir / f"{protocol}_{det}.png", plt)


def _save(fig, path, plt):
    fig.tight_layout()
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
