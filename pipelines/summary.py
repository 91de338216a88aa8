"""What `make demo` ends with: the loop's headline numbers, read from the files the stages wrote.

Nothing is recomputed here: counts and the usable rate come from the catalog (rf1m.catalog), the
agreement from each batch's agreement.json (the consensus stage's own figures), RFNet's AP from the
evaluation's metrics.json. A stage that has not run shows as "not yet", so the summary never fails
for a partial run.
"""

from __future__ import annotations

import json
from pathlib import Path

from rf1m.catalog import Catalog
from rf1m.paths import Layout
from rf1m.release import list_releases


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(layout: Layout, releases: str | Path, metrics: str | Path, labelstudio_url: str,
            failures: str | Path = "metrics/failures.json", loop: dict[str, str | Path] | None = None) -> dict:
    """`loop`: the files of the loop's later stages, cyclic (cyclic.json), prelabels (the second round's
    acceptance, prelabels.json) and rfft (rfft_eval's eval.json); a missing one reads "not yet"."""
    con = Catalog(layout.base, releases).con
    one = lambda sql: con.execute(sql).fetchone()  # noqa: E731
    samples, batches = one("SELECT count(*), count(DISTINCT batch_id) FROM samples")
    labelled, decided, available = one(
        "SELECT count(*), count(*) FILTER (status = 'decided'), "
        "count(*) FILTER (status = 'decided' AND verdict = 'available') FROM consensus")
    batches_labelled = [b for (b,) in con.execute("SELECT DISTINCT batch_id FROM consensus ORDER BY 1").fetchall()]
    agreement = {b: a for b in batches_labelled if (a := _json(layout.agreement(b))) is not None}
    evaluation = _json(Path(metrics) / "metrics.json") or {}
    oracle = _json(Path(failures)) or {}  # annotate_gold's report: the oracle's rates over the batch
    return {
        "samples": samples, "batches": batches, "judgements": one("SELECT count(*) FROM labels")[0],
        "labelled": labelled, "undecided": labelled - decided,
        "usable_rate": available / decided if decided else None,
        "krippendorff_alpha": {b: a.get("krippendorff_alpha") for b, a in agreement.items()},
        "releases": [r["version"] + (" (current)" if r["current"] else "") for r in list_releases(releases)],
        "oracle_available": oracle.get("available"),
        "oracle_reasons": {k: v for k, v in oracle.items() if k not in ("samples", "available", "per_prompt")},
        "rfnet_ap": evaluation.get("ap"), "rfnet_f1": evaluation.get("f1"),
        **{k: _json(Path(f)) for k, f in (loop or {}).items()},
        "labelstudio": labelstudio_url, "dashboard": "make dashboard",
    }


def _rfft(ev: dict, pct) -> str:
    base, arm = ev["arms"]["base"], ev["arms"]["rfft"]
    d = arm["paired_vs_base"]
    return (f"oracle available {pct(base['oracle']['rate'])} -> {pct(arm['oracle']['rate'])} "
            f"({100 * d['diff']:+.1f} points, 95% CI [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}], "
            f"{ev['generations_per_arm']} paired test images)" + _kept(arm.get("kept_step")))


def _kept(step: int | None) -> str:
    """Which checkpoint was judged: step 0 is the base itself, whence an exact +0.0 that reads like a bug."""
    if step is None:
        return ""
    return "; kept step 0, the base: validation never improved" if step == 0 else f"; kept step {step}"


def text(s: dict) -> str:
    """The summary as a few aligned lines for a terminal."""
    pct = lambda x: "not yet" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    alpha = ", ".join(f"{b}: {'undefined' if a is None else f'{a:.2f}'}" for b, a in s["krippendorff_alpha"].items())
    lines = [
        ("samples", f"{s['samples']:,} in {s['batches']} batch(es); {s['judgements']:,} judgements"),
        ("labelled", f"{s['labelled']:,} samples ({s['undecided']:,} undecided)"),
        ("usable rate", pct(s["usable_rate"]) + (" of decided samples" if s["usable_rate"] is not None else "")),
        ("agreement", f"Krippendorff's alpha {alpha}" if alpha else "not yet"),
        ("oracle", "not yet" if s["oracle_available"] is None else f"{pct(s['oracle_available'])} available; "
         + ", ".join(f"{k} {pct(v)}" for k, v in sorted(s["oracle_reasons"].items(), key=lambda kv: -kv[1]))),
        ("RFNet", "not yet evaluated" if s["rfnet_ap"] is None
         else f"AP {pct(s['rfnet_ap'])}, F1 {pct(s['rfnet_f1'])} (available, test split)"),
        ("cyclic", "not yet" if not s.get("cyclic") else
         f"{pct(s['cyclic']['first_try_available_rate'])} accepted at the first try, "
         f"{pct(s['cyclic']['never_within_k_share'])} never within {s['cyclic']['max_attempts']} tries"),
        ("pre-labels", "not yet" if not s.get("prelabels") else
         f"{pct(s['prelabels'].get('accepted_share'))} accepted unchanged (round 2)"
         + ("" if s["prelabels"].get("saved_s_per_task") is None
            else f", {s['prelabels']['saved_s_per_task']:.1f} s saved per task")),
        ("RFFT", "not yet" if not s.get("rfft") else _rfft(s["rfft"], pct)),
        ("releases", ", ".join(s["releases"]) or "none yet"),
        ("Label Studio", s["labelstudio"]),
        ("dashboard", f"run `{s['dashboard']}`, then open http://127.0.0.1:8501"),
    ]
    return "\n".join(f"{k:>13}  {v}" for k, v in lines)
