"""One decision rule: what evaluation measures is what push and the ML backend show annotators."""

import numpy as np
import pytest

from annotation.ml_backend import FilePredictor
from annotation.push import read_predictions
from rf1m import tables
from rf1m.decision import DEFAULT_THRESHOLD
from rfnet.evaluate import metrics
from rfnet.model import CLASSES
from rfnet.predict import predictions_rows

# p(available) 0.45 with four failures at 0.1375: the argmax says available, p >= 0.5 says not
PROBS = np.array([[0.45] + [0.1375] * 4,
                  [0.55, 0.05, 0.3, 0.05, 0.05],
                  [0.2, 0.6, 0.1, 0.05, 0.05],
                  [0.3, 0.1, 0.25, 0.3, 0.05],
                  [0.8, 0.05, 0.05, 0.05, 0.05]])


def evaluation_says_available(threshold=None) -> list[bool]:
    """Per sample, whether evaluation counts it as predicted available (recall of a lone positive)."""
    out = []
    for p in PROBS:
        target = np.zeros((1, len(CLASSES)))
        target[0, 0] = 1
        out.append(metrics(p[None], target, *([] if threshold is None else [threshold]))["recall"] == 1.0)
    return out


def write(path, threshold=None) -> str:
    """The predictions file as prelabel writes it (no threshold validated: the default)."""
    rows = predictions_rows([f"k{i}" for i in range(len(PROBS))], PROBS, "rfnet-test",
                            DEFAULT_THRESHOLD if threshold is None else threshold)
    return str(tables.write(tables.PREDICTIONS, rows, path))


@pytest.mark.parametrize("threshold", [None, 0.7])
def test_evaluation_measures_the_decision_push_shows(tmp_path, threshold):
    path = write(tmp_path / "p.parquet", threshold)
    shown = read_predictions(path)
    pushed = [shown[f"k{i}"]["verdict"] == "available" for i in range(len(PROBS))]
    assert pushed == evaluation_says_available(threshold)
    assert pushed[0] is False and pushed[4] is True  # the argmax would say available for k0
    assert pushed[1] is (threshold is None)  # 0.55 passes the default, not a validated 0.7
    served = FilePredictor(path).predict([{"data": {"key": f"k{i}"}} for i in range(len(PROBS))])
    assert [s["verdict"] for s in served] == [shown[f"k{i}"]["verdict"] for i in range(len(PROBS))]


def test_reasons_come_from_the_columns_rfnet_writes(tmp_path):
    """No invented `unsuitable` column; reasons sure of first, else the most likely one."""
    shown = read_predictions(write(tmp_path / "p.parquet"))
    assert shown["k0"]["reasons"] == ["space_mismatch"]  # a four-way tie: the first in taxonomy order
    assert shown["k2"]["reasons"] == ["space_mismatch"]
    assert shown["k3"]["reasons"] == ["indistinctiveness"]
    assert shown["k4"]["reasons"] == [] and all("unsuitable" not in s["reasons"] for s in shown.values())
