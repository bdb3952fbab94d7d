"""Long loops go through joblib, so a Dask cluster runs them with equal results.

One ``distributed.LocalCluster`` of 2 worker processes for the module; each
test fits locally and under ``joblib.parallel_config(backend="dask")`` and
checks that the cluster really ran tasks and that the results are equal bit
for bit.
"""

import numpy as np
import pytest

distributed = pytest.importorskip(
    "distributed", reason="the dask extra (dask[distributed]) is not installed")
joblib = pytest.importorskip("joblib")

from sklearn_advdet import FeatureLayout, KNNClassScorer, PivotEmbedder  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _reference(seed=0, n=500, sizes=(6, 9), n_classes=4):
    rng = np.random.RandomState(seed)
    y = rng.randint(0, n_classes, n)
    centers = rng.normal(scale=3, size=(n_classes, sum(sizes)))
    return centers[y] + rng.normal(size=(n, sum(sizes))), y


def _on_cluster(client, fit):
    with distributed.get_task_stream(client) as ts, joblib.parallel_config(backend="dask"):
        out = fit()
    assert len(ts.data) > 0, "the dask backend ran no task: the loop bypasses joblib"
    return out


@pytest.mark.parametrize("pivots", ["centroid", "medoid"])
def test_pivots_on_a_cluster_equal_the_local_fit(client, pivots):
    X, y = _reference()
    layout = FeatureLayout([6, 9])
    fit = lambda: PivotEmbedder(layout, pivots=pivots, n_jobs=2).fit(X, y)  # noqa: E731
    local = fit()
    remote = _on_cluster(client, fit)
    for a, b in zip(local.pivots_, remote.pivots_):
        np.testing.assert_array_equal(a, b)
    if pivots == "medoid":
        np.testing.assert_array_equal(local.medoid_indices_, remote.medoid_indices_)
    np.testing.assert_array_equal(local.transform(X[:50]), remote.transform(X[:50]))


def test_knn_scores_on_a_cluster_equal_the_local_run(client):
    X, y = _reference(seed=1, n=800)
    logits = np.eye(4)[y] * 3.0
    Xl = np.hstack([X, logits])
    layout = FeatureLayout([6, 9, 4], has_logits=True)
    scorer = KNNClassScorer(layout, layers="all", n_neighbors=25, backend="exact",
                            n_jobs=2).fit(Xl, y)
    Q = Xl[::3] + 0.1
    local = scorer.transform(Q)
    remote = _on_cluster(client, lambda: scorer.transform(Q))
    np.testing.assert_array_equal(local, remote)
