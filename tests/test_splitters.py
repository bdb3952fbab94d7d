"""Unseen-attack protocols as CV splitters: sides, counts, sklearn integration, errors."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_validate

from sklearn_advdet.evaluation import (
    AttackTransferSplit,
    CrossEpsilonSplit,
    LeaveOneAttackOut,
    UnseenAttackSplit,
)


def _set(n_images=60, families=("fgsm", "pgd", "cw"), eps=(0.1, 0.2), seed=0):
    """Every image authentic + one adversarial per (family, eps), some missing."""
    rng = np.random.RandomState(seed)
    groups, attack, e, y = [], [], [], []
    for g in range(n_images):
        groups.append(g), attack.append("authentic"), e.append(np.nan), y.append(0)
        for f in families:
            for b in eps:
                if rng.rand() < 0.8:
                    groups.append(g), attack.append(f), e.append(b), y.append(1)
    y = np.array(y)
    X = rng.normal(size=(len(y), 3)) + y[:, None]
    return X, y, np.array(attack), np.array(e), np.array(groups)


def _no_shared_image(train, test, groups):
    return not set(groups[train]) & set(groups[test])


def test_leave_one_attack_out_sides():
    X, y, attack, _, groups = _set()
    cv = LeaveOneAttackOut(attack, test_size=0.25, random_state=0)
    splits = list(cv.split(X, y, groups))
    assert len(splits) == cv.get_n_splits(X, y, groups) == 3
    assert [te for _, te in cv.split_names(y)] == ["fgsm", "pgd", "cw"]
    for (train, test), (_, held) in zip(splits, cv.split_names(y)):
        assert _no_shared_image(train, test, groups)
        assert held not in set(attack[train][y[train] == 1])
        assert set(attack[test][y[test] == 1]) == {held}
        others = {"fgsm", "pgd", "cw"} - {held}
        assert set(attack[train][y[train] == 1]) == others
        # every authentic row of a training image is in train, of a test image in test
        test_images = set(groups[test])
        auth = np.flatnonzero(y == 0)
        expect_test = auth[np.isin(groups[auth], list(test_images))]
        assert set(expect_test) <= set(test) and not set(expect_test) & set(train)
        assert len(set(auth) - set(train) - set(test)) == 0
    # the image partition is the same in every split
    assert len({frozenset(groups[te]) for _, te in splits}) == 1
    n_test_images = len(set(groups[splits[0][1]]))
    assert n_test_images == 15
    # the partition is GroupShuffleSplit's draw (the same in every protocol)
    from sklearn.model_selection import GroupShuffleSplit

    _, gss_test = next(GroupShuffleSplit(1, test_size=0.25, random_state=0).split(X, y, groups))
    assert set(groups[gss_test]) == set(groups[splits[0][1]])
    transfer = AttackTransferSplit(attack, test_size=0.25, random_state=0)
    assert {frozenset(groups[te]) for _, te in transfer.split(X, y, groups)} == {
        frozenset(groups[gss_test])}


def test_transfer_matrix_pairs():
    X, y, attack, _, groups = _set()
    cv = AttackTransferSplit(attack, random_state=1)
    names = cv.split_names(y)
    assert len(names) == 9 == cv.get_n_splits(X, y)
    assert set(names) == {(a, b) for a in ("fgsm", "pgd", "cw") for b in ("fgsm", "pgd", "cw")}
    for (train, test), (a, b) in zip(cv.split(X, y, groups), names):
        assert _no_shared_image(train, test, groups)
        assert set(attack[train][y[train] == 1]) == {a}
        assert set(attack[test][y[test] == 1]) == {b}
    off = AttackTransferSplit(attack, include_diagonal=False, train_attacks=["fgsm"])
    assert off.split_names(y) == [("fgsm", "pgd"), ("fgsm", "cw")]
    with pytest.raises(ValueError, match="not among the adversarial rows' attacks"):
        AttackTransferSplit(attack, test_attacks=["deepfool"]).split_names(y)


def test_cross_epsilon():
    X, y, attack, eps, groups = _set(eps=(0.05, 0.1, 0.2))
    eps[attack == "cw"] = np.nan  # a family without a budget is left out
    cv = CrossEpsilonSplit(eps, include_diagonal=False, random_state=0)
    names = cv.split_names(y)
    assert len(names) == 6 and ("0.05", "0.2") in names
    for (train, test), (a, b) in zip(cv.split(X, y, groups), names):
        assert _no_shared_image(train, test, groups)
        assert set(eps[train][y[train] == 1]) == {float(a)}
        assert set(eps[test][y[test] == 1]) == {float(b)}
    one = CrossEpsilonSplit(eps, attack=attack, family="pgd", train_eps=[0.05], test_eps=0.2)
    (train, test), = one.split(X, y, groups)
    assert set(attack[train][y[train] == 1]) == {"pgd"} == set(attack[test][y[test] == 1])
    with pytest.raises(ValueError, match="not among"):
        CrossEpsilonSplit(eps, train_eps=[0.3]).split_names(y)
    with pytest.raises(ValueError, match="needs attack="):
        CrossEpsilonSplit(eps, family="pgd").split_names(y)


def test_cross_validate_and_grid_search_with_groups():
    X, y, attack, _, groups = _set()
    cv = LeaveOneAttackOut(attack, random_state=0)
    res = cross_validate(LogisticRegression(), X, y, groups=groups, cv=cv, scoring="roc_auc")
    assert len(res["test_score"]) == 3 and np.all(res["test_score"] > 0.6)
    search = GridSearchCV(LogisticRegression(), {"C": [0.01, 1.0]}, cv=cv, scoring="roc_auc")
    search.fit(X, y, groups=groups)
    assert search.n_splits_ == 3
    assert "split2_test_score" in search.cv_results_
    # the same fold scores as fitting by hand on each split
    for i, (train, test) in enumerate(cv.split(X, y, groups)):
        est = LogisticRegression(C=search.best_params_["C"]).fit(X[train], y[train])
        from sklearn.metrics import roc_auc_score
        got = roc_auc_score(y[test], est.decision_function(X[test]))
        best = search.best_index_
        assert search.cv_results_[f"split{i}_test_score"][best] == pytest.approx(got)


@pytest.mark.parametrize("make", [
    lambda a, e: LeaveOneAttackOut(a),
    lambda a, e: AttackTransferSplit(a),
    lambda a, e: CrossEpsilonSplit(e),
])
def test_errors(make):
    X, y, attack, eps, groups = _set(n_images=10)
    cv = make(attack, eps)
    with pytest.raises(ValueError, match="needs groups"):
        list(cv.split(X, y))
    with pytest.raises(ValueError, match="rows passed to split"):
        list(cv.split(X[:-3], y[:-3], groups[:-3]))
    with pytest.raises(ValueError, match="needs y"):
        list(cv.split(X, None, groups))


def test_leave_one_out_needs_two_families():
    X, y, attack, _, groups = _set(families=("fgsm",))
    with pytest.raises(ValueError, match="at least 2 attack families"):
        list(LeaveOneAttackOut(attack).split(X, y, groups))
    with pytest.raises(ValueError, match="at least 2 attack families"):
        LeaveOneAttackOut(attack).get_n_splits(X, y, groups)


def test_unseen_attack_split_trains_on_the_fixed_set_jointly():
    X, y, attack, _, groups = _set(families=("fgsm", "pgd", "cw", "deepfool"))
    cv = UnseenAttackSplit(attack, train_attacks=["FGSM", "pgd"], test_size=0.3,
                           random_state=1)
    assert cv.split_names(y) == [("fgsm+pgd", "cw"), ("fgsm+pgd", "deepfool")]
    splits = list(cv.split(X, y, groups))
    assert len(splits) == cv.get_n_splits(X, y, groups) == 2
    for (train, test), unseen in zip(splits, ["cw", "deepfool"]):
        assert _no_shared_image(train, test, groups)
        assert set(attack[train][y[train] == 1]) == {"fgsm", "pgd"}
        assert set(attack[test][y[test] == 1]) == {unseen}
        # every authentic row of a side's images is on that side
        side = set(groups[test])
        expected = np.flatnonzero((y == 0) & np.isin(groups, list(side)))
        assert set(expected) <= set(test)


def test_unseen_attack_split_errors():
    X, y, attack, _, groups = _set()
    with pytest.raises(ValueError, match=r"train_attacks \['apgd'\] not among"):
        list(UnseenAttackSplit(attack, train_attacks=["apgd"]).split(X, y, groups))
    with pytest.raises(ValueError, match="no unseen family"):
        list(UnseenAttackSplit(attack, train_attacks=["fgsm", "pgd", "cw"]).split(X, y, groups))
