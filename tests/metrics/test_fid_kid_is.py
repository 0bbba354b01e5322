"""FID, KID, IS and accuracy against independent straightforward computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics.pairwise import polynomial_kernel

from finetune.errors import UserError
from finetune.metrics.fid import fid, frechet_distance, inception_score, kid, per_class_accuracy


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def reference_frechet(mu1, s1, mu2, s2) -> float:
    """Independent: tr((s1 s2)^1/2) as the sum of square roots of the eigenvalues of s1 s2."""
    eig = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum())


def test_frechet_distance_matches_eigenvalue_computation():
    rng = np.random.default_rng(0)
    for d in (1, 3, 12):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference_frechet(mu1, s1, mu2, s2), rel=1e-8)


def test_frechet_distance_closed_forms():
    # 1-D Gaussians: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
    # diagonal covariances: ||d||^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 3.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.ones(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected)


def test_fid_of_a_set_with_itself_is_zero_and_a_mean_shift_adds_its_squared_norm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16))
    shift = rng.normal(size=16)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    assert fid(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_fid_survives_singular_covariances():
    # fewer samples than dimensions: rank-deficient covariances, the eps retry must keep it finite
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 32))
    shift = np.full(32, 0.5)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-4)
    assert fid(x, x + shift) == pytest.approx(32 * 0.25, rel=1e-4)
    assert math.isfinite(fid(x, rng.normal(size=(10, 32))))


def reference_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Independent unbiased MMD^2 with sklearn's polynomial kernel, by explicit pair loops."""
    m, d = len(x), x.shape[1]
    kxx = polynomial_kernel(x, x, degree=3, gamma=1.0 / d, coef0=1)
    kyy = polynomial_kernel(y, y, degree=3, gamma=1.0 / d, coef0=1)
    kxy = polynomial_kernel(x, y, degree=3, gamma=1.0 / d, coef0=1)
    within = sum(kxx[i, j] + kyy[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(kxy[i, j] for i in range(m) for j in range(m)) / (m * m)
    return within - 2 * cross


def test_kid_matches_independent_unbiased_mmd():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 6)), rng.normal(0.3, 1.2, size=(40, 6))
    mean, std = kid(x, y, subsets=1, subset_size=40)
    assert mean == pytest.approx(reference_mmd2(x, y), rel=1e-9)
    # the unbiased estimate does not depend on sample order, so whole-set subsets all agree
    mean5, std5 = kid(x, y, subsets=5, subset_size=1000)
    assert mean5 == pytest.approx(mean, rel=1e-9) and std5 == pytest.approx(0.0, abs=1e-9)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, same_std = kid(a, b, subsets=20, subset_size=100)
    shifted, _ = kid(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * abs(same) and shifted > 0.1


def test_inception_score_closed_forms():
    assert inception_score(np.full((50, 10), 0.1), splits=5) == pytest.approx((1.0, 0.0))
    assert inception_score(np.tile(np.eye(10), (5, 1)), splits=5) == pytest.approx((10.0, 0.0))
    assert inception_score(np.eye(3), splits=1)[0] == pytest.approx(3.0)
    # half confident [1, 0], half unsure [.5, .5]: p(y) = [.75, .25]
    probs = np.array([[1.0, 0.0], [0.5, 0.5]] * 4)
    kl_conf = math.log(1 / 0.75)
    kl_unsure = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert inception_score(probs, splits=1)[0] == pytest.approx(math.exp((kl_conf + kl_unsure) / 2))


def test_inception_score_rejects_logits():
    with pytest.raises(UserError, match="probabilities"):
        inception_score(np.random.default_rng(0).normal(size=(20, 10)), splits=1)


def test_per_class_accuracy():
    per_class, overall = per_class_accuracy([0, 0, 1, 1, 2], [0, 1, 1, 1, 2])
    assert per_class == {0: 1.0, 1: pytest.approx(2 / 3), 2: 1.0}
    assert overall == pytest.approx(0.8)
    with pytest.raises(UserError):
        per_class_accuracy([0, 1], [0])


def test_bad_feature_shapes_are_user_errors():
    with pytest.raises(UserError):
        fid(np.zeros(5), np.zeros(5))
    with pytest.raises(UserError, match="width"):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))
