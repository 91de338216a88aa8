"""The probe bench fits its logistic regression in the training rows' span instead of on the raw
features; that shortcut must give the same model, or the bench's numbers would describe another one."""

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")


def test_span_coordinates_give_the_same_l2_logistic_regression_as_the_raw_features():
    from sklearn.linear_model import LogisticRegression

    from bench.bench_rfnet_probe import _span_coordinates

    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 400)).astype(np.float32)  # D >> N, as the probe's flattened feature maps
    y = (x[:, :5].sum(1) + rng.normal(size=70) > 0)
    rest, val = np.arange(50), np.arange(50, 70)
    tr, va = _span_coordinates(torch.from_numpy(x[rest]), torch.from_numpy(x[val]))
    assert tr.shape == (50, 50) and va.shape == (20, 50)
    for c in (0.01, 1.0):
        model = LogisticRegression(C=c, tol=1e-10, max_iter=20_000)
        raw = model.fit(x[rest].astype(np.float64), y[rest]).predict_proba(x[val].astype(np.float64))[:, 1]
        span = model.fit(tr, y[rest]).predict_proba(va)[:, 1]
        np.testing.assert_allclose(span, raw, atol=1e-4)
        assert np.ptp(raw) > 0.05  # the model says something, so agreeing is not trivial
