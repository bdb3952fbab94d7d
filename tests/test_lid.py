"""LIDScorer: Ma et al.'s maximum-likelihood LID per hooked layer."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_advdet import FeatureLayout, LIDScorer
from sklearn_advdet.features.lid import lid_mle


def _brute_lid(Zq, Zref, k):
    """The formula on a brute-force kNN: positive distances only, by scipy cdist."""
    D = cdist(Zq.astype(np.float64), Zref.astype(np.float64))
    out = np.empty(len(Zq))
    for i, row in enumerate(D):
        d = np.sort(row[row > 0])[:k]
        total = sum(np.log(di / d[-1]) for di in d)
        out[i] = np.inf if total == 0 else -len(d) / total
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    n_ref, n_q = 150, 20
    ref = np.hstack([
        rng.normal(size=(n_ref, 3)) @ rng.normal(size=(3, 6)),  # layer0: 3-D inside 6
        rng.normal(size=(n_ref, 4)),                           # layer1
        rng.normal(size=(n_ref, 5)),                           # logits
    ])
    q = np.hstack([
        rng.normal(size=(n_q, 3)) @ rng.normal(size=(3, 6)),
        rng.normal(size=(n_q, 4)),
        rng.normal(size=(n_q, 5)),
    ])
    layout = FeatureLayout([6, 4, 5], names=["conv", "fc", "logits"], has_logits=True)
    return ref, q, layout


@pytest.mark.parametrize("k", [2, 7, 20])
def test_matches_the_formula_on_a_brute_force_knn(data, k):
    ref, q, layout = data
    lid = LIDScorer(layout, n_neighbors=k).fit(ref)
    got = lid.transform(q)
    assert got.shape == (len(q), 2)
    for col, sl in enumerate([slice(0, 6), slice(6, 10)]):
        np.testing.assert_allclose(got[:, col], _brute_lid(q[:, sl], ref[:, sl], k), rtol=1e-10)
    assert np.all(np.isfinite(got)) and np.all(got > 0)
    assert lid.get_feature_names_out().tolist() == ["lid_conv", "lid_fc"]


def test_logits_are_never_used_and_layers_select(data):
    ref, q, layout = data
    full = LIDScorer(layout).fit(ref)
    ref2, q2 = ref.copy(), q.copy()
    ref2[:, 10:] = np.random.RandomState(1).normal(size=ref2[:, 10:].shape) * 100
    q2[:, 10:] = 0.0
    np.testing.assert_array_equal(LIDScorer(layout).fit(ref2).transform(q2), full.transform(q))
    fc = LIDScorer(layout, layers="fc").fit(ref)
    assert fc.layers_ == [1]
    np.testing.assert_array_equal(fc.transform(q)[:, 0], full.transform(q)[:, 1])
    # a plain tuple means hidden layers only: all three blocks are layers
    assert LIDScorer((6, 4, 5)).fit(ref).transform(q).shape == (len(q), 3)


def test_reference_set_scored_without_itself_and_duplicates_skipped():
    rng = np.random.RandomState(2)
    ref = rng.normal(size=(80, 5))
    ref[[10, 11, 12]] = ref[3]  # three exact copies of row 3
    lid = LIDScorer("single", n_neighbors=10)
    own = lid.fit_transform(ref)[:, 0]
    np.testing.assert_allclose(own, _brute_lid(ref, ref, 10), rtol=1e-10)
    np.testing.assert_array_equal(own, lid.transform(ref)[:, 0])
    # row 3 and its copies: the zeros are skipped, the 10 positive ones used
    d = np.sort(cdist(ref[3:4], ref)[0])
    assert np.sum(d == 0) == 4
    assert own[3] == pytest.approx(lid_mle(d[None, 4:14])[0], rel=1e-12)
    assert own[3] == own[10] == own[11] == own[12]


def test_more_copies_than_k_widen_the_search():
    rng = np.random.RandomState(3)
    ref = rng.normal(size=(100, 4))
    ref[:40] = ref[50]  # 41 copies of one point, k = 5
    q = np.vstack([ref[50], rng.normal(size=(3, 4))])
    lid = LIDScorer("single", n_neighbors=5).fit(ref)
    assert np.sum(lid.kneighbors(q[:1])[0] == 0) == 5  # the raw search sees copies only
    np.testing.assert_allclose(lid.transform(q)[:, 0], _brute_lid(q, ref, 5), rtol=1e-10)


def test_degenerate_neighbourhoods_give_inf():
    # query at 0, references at +-1 then far: the k = 2 nearest are equidistant
    ref = np.array([[1.0], [-1.0], [5.0], [7.0]])
    lid = LIDScorer("single", n_neighbors=2).fit(ref)
    got = lid.transform(np.array([[0.0], [2.0]]))[:, 0]
    assert got[0] == np.inf
    assert got[1] == pytest.approx(-2 / np.log(1 / 3))
    # only one reference at a positive distance (all others are copies)
    ref = np.array([[0.0], [0.0], [0.0], [3.0]])
    assert LIDScorer("single", n_neighbors=2).fit(ref).transform([[0.0]])[0, 0] == np.inf


def test_lid_mle_worked_example_and_errors():
    np.testing.assert_allclose(lid_mle([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]]),
                               [3 / np.log(8), np.inf])
    with pytest.raises(ValueError, match="positive"):
        lid_mle([[0.0, 1.0]])


def test_recovers_the_dimension_of_flat_data():
    rng = np.random.RandomState(4)
    ref = np.zeros((3000, 12))
    ref[:, :4] = rng.uniform(size=(3000, 4))
    q = np.zeros((300, 12))
    q[:, :4] = rng.uniform(0.3, 0.7, size=(300, 4))
    lid = LIDScorer("single", n_neighbors=20).fit(ref).transform(q)[:, 0]
    assert 3.0 < np.median(lid) < 5.0  # the intrinsic dimension is 4, not 12


def test_bad_input_gives_clear_errors(data):
    ref, q, layout = data
    bad = ref.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LIDScorer(layout).fit(bad)
    lid = LIDScorer(layout).fit(ref)
    with pytest.raises(ValueError, match="NaN"):
        lid.transform(np.where(np.arange(q.shape[1]) == 0, np.nan, q))
    with pytest.raises(ValueError, match="15 features"):
        lid.transform(q[:, :-1])
    with pytest.raises(ValueError, match="n_neighbors"):
        LIDScorer(layout, n_neighbors=1).fit(ref)
    with pytest.raises(ValueError, match="needs layer_sizes"):
        LIDScorer().fit(ref)
    with pytest.raises(ValueError, match="layer_sizes sum to 14"):
        LIDScorer((6, 4, 4)).fit(ref)
    with pytest.raises(ValueError, match="backend"):
        LIDScorer(layout, backend="brute").fit(ref)
    with pytest.raises(ValueError, match="takes no backend_params"):
        LIDScorer(layout, backend="exact", backend_params={"nprobe": 3}).fit(ref)
    with pytest.raises(ValueError, match="unknown layer 'logits'"):
        LIDScorer(layout, layers="logits").fit(ref)
    with pytest.raises(ValueError, match="minimum of 3"):
        LIDScorer("single").fit(ref[:2, :6])


@parametrize_with_checks([LIDScorer("single", n_neighbors=5)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
