"""kNN classifier against a brute-force NumPy reference; linear probe sanity."""
import numpy as np
import pytest

from sdr_jax.eval.knn import knn_accuracy, knn_predict
from sdr_jax.eval.linear import linear_probe_accuracy


def reference_knn(memory, labels, queries, k, temperature, num_classes):
    memory = memory / np.linalg.norm(memory, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    preds = []
    for q in queries:
        sims = memory @ q
        top = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in top:
            votes[labels[j]] += np.exp(sims[j] / temperature)
        preds.append(np.argmax(votes))
    return np.array(preds)


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (5, 0.07), (20, 0.5)])
def test_knn_matches_bruteforce(k, temperature):
    rng = np.random.default_rng(k)
    memory = rng.normal(size=(300, 16)).astype(np.float32)
    labels = rng.integers(0, 7, size=300)
    queries = rng.normal(size=(130, 16)).astype(np.float32)
    got = knn_predict(memory, labels, queries, k=k, temperature=temperature, num_classes=7,
                      chunk_size=64)
    want = reference_knn(memory, labels, queries, k, temperature, 7)
    np.testing.assert_array_equal(got, want)


def test_knn_separable_clusters_are_perfect():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 32)) * 10
    labels = np.repeat(np.arange(4), 50)
    memory = centers[labels] + rng.normal(size=(200, 32))
    queries = centers[labels[::5]] + rng.normal(size=(40, 32))
    assert knn_accuracy(memory, labels, queries, labels[::5], k=10) == 1.0


def test_knn_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        knn_predict(np.ones((4, 3)), np.zeros(3), np.ones((2, 3)))


def test_linear_probe_learns_a_linear_rule_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    assert linear_probe_accuracy(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise_y = rng.integers(0, 2, size=600)
    assert linear_probe_accuracy(x[:400], noise_y[:400], x[400:], noise_y[400:]) < 0.7
