"""How annotators answered RFNet's pre-labels, read from what Label Studio recorded (labels.parquet).

A pre-label pays off when people accept it and accepting is faster than judging from scratch. Both are
measured on the judgements pulled from Label Studio, not on what the simulated panel says it did, so
the same report holds for people: `prediction_accepted` (the annotation began from the prediction and
was submitted unchanged, annotation.pull) and `lead_time` (Label Studio's; the panel's is simulated).
The time without a pre-label comes from a baseline batch labelled without them (round 1). Gold tasks
carry no pre-label and samples missing from the predictions file had none, so both are left out.
"""

from __future__ import annotations

from pathlib import Path

from rf1m import tables


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def report(labels: str | Path, predictions: str | Path, baseline: str | Path | None = None) -> dict:
    """`labels`: the pre-labelled batch's labels.parquet; `predictions`: the file push attached;
    `baseline`: the labels.parquet of a batch judged without pre-labels."""
    keys = set(tables.read(tables.PREDICTIONS, predictions).column("key").to_pylist())
    rows = [r for r in tables.read(tables.LABELS, labels).to_pylist() if not r["gold"] and r["key"] in keys]
    if not rows:
        raise ValueError(f"no judgement in {labels} is on a sample of {predictions}: push the batch with "
                         f"--predictions, label it and pull first")
    accepted = [r["lead_time"] for r in rows if r["prediction_accepted"]]
    fixed = [r["lead_time"] for r in rows if not r["prediction_accepted"]]
    tasks = len({r["task_id"] for r in rows})
    with_pre = _mean(accepted + fixed)
    out = {"judgements": len(rows), "tasks": tasks, "accepted_unchanged": len(accepted),
           "accepted_share": round(len(accepted) / len(rows), 4),
           "lead_time_source": sorted({r["source"] for r in rows}),  # "simulated": the panel's model, not people
           "lead_time_s": {"with_prelabel": with_pre, "accepted": _mean(accepted), "fixed": _mean(fixed)}}
    if baseline is not None:
        base = [r["lead_time"] for r in tables.read(tables.LABELS, baseline).to_pylist() if not r["gold"]]
        if not base:
            raise ValueError(f"no judgement in the baseline {baseline}")
        without = _mean(base)
        out["lead_time_s"]["without_prelabel"] = without
        out["baseline_judgements"] = len(base)
        out["saved_s_per_judgement"] = round(without - with_pre, 3)
        out["saved_s_per_task"] = round((without - with_pre) * len(rows) / tasks, 3)  # every judge of a task saves
    return out
