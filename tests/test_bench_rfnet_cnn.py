"""The trained-CNN arm of the RFNet bench learns, from its own inputs and targets, a rule that only a
line's height decides (as the panel's ground-line rules are). Pairing a batch's inputs with other
samples' targets still ranked the held-out samples (AP 0.96; why, not found) but left them near 0.5
(0.58 against 0.54), so the test asks for confident, correct probabilities as well."""

import numpy as np
import torch


def test_the_cnn_learns_a_rule_that_only_the_position_of_a_line_decides():
    from bench.bench_rfnet_cnn import fit, predict
    from rfnet.evaluate import average_precision

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = 160
    high = rng.random(n) < 0.5  # the label: the line is in the upper half
    scene = rng.integers(60, 140, (n, 5, 128, 128), dtype=np.uint8)
    for i in range(n):  # the same bright line, at one of two heights; the image's statistics match
        row = rng.integers(20, 44) if high[i] else rng.integers(84, 108)
        scene[i, :3, row: row + 3] = 250
    data = {"scene": scene, "product": np.zeros((n, 3, 128, 128), np.uint8), "text": torch.zeros(n, 384)}
    targets = torch.zeros(n, 5)
    targets[high, 0] = 1  # available
    targets[~high, 2] = 1  # not available: space mismatch
    model = fit(data, np.arange(120), targets, seed=0, epochs=6, lr=2e-3, arm="image")
    p = predict(model, data, np.arange(120, n))
    assert average_precision(high[120:], p) > 0.9, p
    assert p[high[120:]].mean() - p[~high[120:]].mean() > 0.4, p  # 0.77 against 0.11
