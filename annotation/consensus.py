"""From many judgements to one label per sample, and how far to trust the judges.

- Majority vote on the verdict (a tie counts as not_available: an advert nobody agrees on is not
  publishable), confidence = share of the votes.
- Dawid-Skene (EM over per-annotator confusion matrices, initialised from the majority) on the
  verdict; its posterior is the sample's confidence, and it is the consensus verdict.
- A sample whose votes tie, or where Dawid-Skene overrules a strict majority, is `undecided`: its
  verdict is the conservative not_available, and the release policy leaves it out by default. A 1-1
  tie settled by Dawid-Skene is a coin flip (posterior 0.5) or rests on annotator estimates that few
  shared items cannot support; as a training label it is noise. It needs another judgement instead.
- Reasons: those picked by at least half of the annotators who said not_available.
- Agreement: Cohen's kappa for every annotator pair (on their shared samples) and Krippendorff's
  alpha (nominal) over all samples with >= 2 judgements; each is None, with the reason, when it is
  undefined (no variation to agree on), because 1.0 would claim agreement nobody measured.
- Dawid-Skene's per-annotator estimates come with the number of items the annotator shares with
  someone else: on items judged alone, EM only learns that the annotator agrees with itself, so with
  few shared items the accuracy drifts towards 1 (0.99 for a true 0.90). Below `min_shared_items`
  they are marked unreliable.
- Annotator accuracy on gold tasks, against `<labels>/<batch>/gold.parquet`.
Gold tasks never enter the consensus: they are exams, not data.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rf1m import schema, tables
from rf1m.atomic import write_json

CLASSES = schema.VERDICTS  # index 0 = available


def majority(votes: list[str]) -> tuple[str, float]:
    c = Counter(votes)
    top = max(c.values())
    winners = [v for v in CLASSES if c.get(v) == top]
    label = winners[0] if len(winners) == 1 else "not_available"
    return label, c[label] / len(votes)


def dawid_skene(items: list[list[tuple[str, int]]], k: int, iters: int = 100, tol: float = 1e-8):
    """items[i] = [(annotator, class), ...]. Returns (posteriors [n, k], confusion {annotator: [k, k]}, prior)."""
    annotators = sorted({a for it in items for a, _ in it})
    aidx = {a: i for i, a in enumerate(annotators)}
    n, m = len(items), len(annotators)
    counts = np.zeros((n, m, k))
    for i, it in enumerate(items):
        for a, c in it:
            counts[i, aidx[a], c] += 1
    post = counts.sum(axis=1) + 1e-9
    post /= post.sum(axis=1, keepdims=True)
    for _ in range(iters):
        prior = post.mean(axis=0)
        conf = np.einsum("ik,imc->mkc", post, counts) + 1e-6  # smoothed: an annotator never seen on a class
        conf /= conf.sum(axis=2, keepdims=True)
        log = np.log(prior)[None, :] + np.einsum("imc,mkc->ik", counts, np.log(conf))
        new = np.exp(log - log.max(axis=1, keepdims=True))
        new /= new.sum(axis=1, keepdims=True)
        if np.abs(new - post).max() < tol:
            post = new
            break
        post = new
    return post, {a: conf[aidx[a]] for a in annotators}, prior


def cohen_kappa(a: list[str], b: list[str]) -> tuple[float | None, str | None]:
    """(kappa, None), or (None, why) when it is undefined."""
    n = len(a)
    cats = sorted(set(a) | set(b))
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    if pe == 1:
        return None, f"undefined: both gave {cats[0]} on every shared sample (expected agreement 1)"
    return (po - pe) / (1 - pe), None


def krippendorff_alpha(units: list[list[str]]) -> tuple[float | None, str | None]:
    """Nominal alpha as (alpha, None), or (None, why) when it is undefined.

    Units with fewer than two values are not pairable and are left out."""
    units = [u for u in units if len(u) >= 2]
    cats = sorted({v for u in units for v in u})
    idx = {c: i for i, c in enumerate(cats)}
    o = np.zeros((len(cats), len(cats)))
    for u in units:
        cnt = Counter(u)
        for c, d in itertools.product(cnt, cnt):
            pairs = cnt[c] * (cnt[d] - (c == d))
            o[idx[c], idx[d]] += pairs / (len(u) - 1)
    nc = o.sum(axis=1)
    n = nc.sum()
    if n <= 1:
        return None, "undefined: no sample has two judgements"
    do = (o.sum() - np.trace(o)) / n
    de = (n * n - (nc ** 2).sum()) / (n * (n - 1))
    if de == 0:
        return None, f"undefined: every paired judgement is {cats[0]} (expected disagreement 0)"
    return float(1 - do / de), None


@dataclass(frozen=True)
class ConsensusConfig:
    batch_id: str = "demo"
    labels: str = "data/labels"
    min_shared_items: int = 20  # Dawid-Skene estimates of an annotator with fewer are marked unreliable


def decide(votes: Counter, ds_verdict: str) -> tuple[str, str]:
    """(status, verdict): `undecided` and not_available when the votes tie or Dawid-Skene overrules them."""
    top = max(votes.values())
    if sum(v == top for v in votes.values()) > 1 or votes[ds_verdict] != top:
        return "undecided", "not_available"
    return "decided", ds_verdict


def shared_items(items: list[list[tuple[str, int]]]) -> Counter:
    """Per annotator: items on which someone else also judged, the only ones that tell EM anything."""
    return Counter(a for it in items if len({b for b, _ in it}) > 1 for a in {b for b, _ in it})


def consensus(rows: list[dict], min_shared_items: int = 20) -> tuple[list[dict], dict]:
    """rows: label rows of non-gold tasks. Returns (one row per sample, agreement figures)."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_key[r["key"]].append(r)
    keys = sorted(by_key)
    items = [[(r["annotator"], CLASSES.index(r["verdict"])) for r in by_key[k]] for k in keys]
    post, conf, prior = dawid_skene(items, len(CLASSES)) if items else (np.zeros((0, 2)), {}, np.zeros(2))
    out = []
    for i, k in enumerate(keys):
        rs = by_key[k]
        maj, maj_conf = majority([r["verdict"] for r in rs])
        votes = Counter(r["verdict"] for r in rs)
        status, verdict = decide(votes, CLASSES[int(post[i].argmax())])
        nays = [r for r in rs if r["verdict"] == "not_available"]
        picked = Counter(x for r in nays for x in r["reasons"])
        reasons = [x for x in schema.REASON_NAMES if nays and picked[x] * 2 >= len(nays)] \
            if verdict != "available" else []
        out.append({"key": k, "verdict": verdict, "reasons": reasons,
                    "confidence": float(post[i][CLASSES.index(verdict)]), "status": status,
                    **{f"votes_{c}": votes[c] for c in CLASSES},
                    "majority_verdict": maj, "majority_confidence": maj_conf, "n_annotators": len(rs),
                    "annotators": sorted(r["annotator"] for r in rs),
                    "source": "simulated" if all(r["source"] == "simulated" for r in rs) else "human"})
    pairs = {}
    annotators = sorted({r["annotator"] for r in rows})
    for a, b in itertools.combinations(annotators, 2):
        shared = [(x, y) for k in keys for x in by_key[k] for y in by_key[k]
                  if x["annotator"] == a and y["annotator"] == b]
        if len(shared) >= 2:
            kappa, why = cohen_kappa([x["verdict"] for x, _ in shared], [y["verdict"] for _, y in shared])
            pairs[f"{a} | {b}"] = {"n": len(shared), "kappa": kappa, **({"undefined": why} if why else {})}
    alpha, alpha_why = krippendorff_alpha([[r["verdict"] for r in by_key[k]] for k in keys])
    shared_n = shared_items(items)
    agreement = {
        "samples": len(keys), "judgements": len(rows),
        "undecided": sum(o["status"] == "undecided" for o in out),
        "available_rate": float(np.mean([o["verdict"] == "available" for o in out])) if out else None,
        "reasons": dict(Counter(x for o in out for x in o["reasons"])),
        "krippendorff_alpha": alpha, **({"krippendorff_alpha_undefined": alpha_why} if alpha_why else {}),
        "cohen_kappa": pairs,
        "dawid_skene": {"prior_available": float(prior[0]) if len(prior) else None,
                        "min_shared_items": min_shared_items,
                        "annotators": {a: {"sensitivity": float(c[0, 0]), "specificity": float(c[1, 1]),
                                           "shared_items": shared_n[a], "reliable": shared_n[a] >= min_shared_items}
                                       for a, c in conf.items()}},
    }
    return out, agreement


def gold_accuracy(rows: list[dict], gold: dict[str, dict]) -> dict:
    """Per annotator: verdict accuracy and mean reason-set Jaccard on gold tasks."""
    acc: dict[str, list] = defaultdict(list)
    for r in rows:
        g = gold.get(r["key"])
        if g is None:
            continue
        a, b = set(r["reasons"]), set(g["reasons"])
        acc[r["annotator"]].append((r["verdict"] == g["verdict"], len(a & b) / len(a | b) if a | b else 1.0))
    return {a: {"gold_tasks": len(v), "accuracy": float(np.mean([x for x, _ in v])),
                "reason_jaccard": float(np.mean([y for _, y in v]))} for a, v in sorted(acc.items())}


def run(cfg: ConsensusConfig) -> dict:
    d = Path(cfg.labels) / cfg.batch_id
    labels_file = d / "labels.parquet"
    if not labels_file.exists():
        raise ValueError(f"no labels for batch {cfg.batch_id!r} in {d}: pull them first")
    rows = tables.read(tables.LABELS, labels_file).to_pylist()
    out, agreement = consensus([r for r in rows if not r["gold"]], cfg.min_shared_items)
    gold = {g["key"]: g for g in tables.read(tables.GOLD, d / "gold.parquet", missing_ok=True).to_pylist()}
    agreement["gold_accuracy"] = gold_accuracy([r for r in rows if r["gold"]], gold)
    tables.write(tables.CONSENSUS, out, d / "consensus.parquet")
    write_json(d / "agreement.json", agreement)
    return {k: agreement[k] for k in ("samples", "judgements", "undecided", "available_rate", "krippendorff_alpha",
                                      "reasons")}
