"""A simulated annotator panel, for the demo, CI and benchmarks only. Its labels are marked
`source=simulated` wherever they land (annotators are `sim-NN@panel.rf1m.local`, Label Studio users
whose first name is `Simulated`: pull reads the source from that record, not from this module).

Each simulated annotator is a Label Studio user and labels through the API as a person would: it
reads the project's tasks, judges the sample's images, and posts one annotation per task it is
assigned. The judgement follows documented rules computed from the generated image
(`annotation.rules`: where the ground line runs, the product's size against its category's norm,
contrast, halo), so that RFNet (which sees the generated image and the product) can learn them and a
new seed or a better generator can change the verdict. The thresholds are `panel.rules` in params.yaml,
calibrated on the trained offline generator (`bench/bench_failures.py`). Every annotator has its own
noise: thresholds jittered by up to ±`jitter`, a `flip` probability of reversing the verdict and a
`miss` probability of dropping a reason.

Pre-labels are confirmed or fixed the way Label Studio 1.23's editor records it: an annotation begun from a
task's prediction carries `parent_prediction` (the prediction's id), whether it was submitted as it was or
changed. When the annotator's own judgement equals the pre-label, it submits the prediction's result
unchanged; otherwise its own (pull marks only the unchanged ones `prediction_accepted`). Lead time is
simulated, not measured: judging from scratch takes U(2, 12) s; confirming a pre-label it agrees with
takes `ACCEPT_TIME` of that (it still looks at the advert, but picks nothing); fixing one takes the
full time plus `FIX_EXTRA_S` to clear what was pre-filled.

The rules without noise are the oracle (`write_gold`): one row per sample with its features
(rf1m.tables.ORACLE, for evaluation only), the gold answer key as its projection, and a failure report
per prompt x reason.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from annotation.client import Client, LabelStudioError
from annotation.config import REASONS, SIMULATED_FIRST_NAME, VERDICT, choice_result
from annotation.rules import REASON_ORDER, Rules, features, implied_height, judge, norm_height
from rf1m import shards, tables
from rf1m.atomic import write_json
from rf1m.paths import DATA_ROOT, Layout

DOMAIN = "panel.rf1m.local"
ACCEPT_TIME = 0.4  # confirming an agreed pre-label: this share of judging from scratch (simulated)
FIX_EXTRA_S = 1.0  # fixing one: judging from scratch plus clearing the pre-filled choices, s (simulated)


@dataclass(frozen=True)
class PanelConfig:
    batch_id: str = "demo"
    shards: str = "data/shards"
    annotators: int = 4
    rules: Rules = Rules()
    jitter: float = 0.05
    flip: float = 0.06
    miss: float = 0.15
    seed: int = 0
    failures: str = "metrics/failures.json"  # the oracle's failure report (DVC metrics)


@dataclass
class Annotator:
    email: str
    rules: Rules
    flip: float
    miss: float
    rng: random.Random

    def label(self, f: dict) -> tuple[str, list[str]]:
        verdict, reasons = judge(f, self.rules)
        if self.rng.random() < self.flip:
            if verdict == "available":
                verdict, reasons = "not_available", [self.rng.choice(
                    ["space_mismatch", "size_mismatch", "indistinctiveness", "shape_hallucination"])]
            else:
                verdict, reasons = "available", []
        kept = [x for x in reasons if self.rng.random() >= self.miss]
        return verdict, kept or reasons[:1]


def make_panel(cfg: PanelConfig) -> list[Annotator]:
    out = []
    for i in range(cfg.annotators):
        rng = random.Random(f"{cfg.seed}/{i}")
        rules = replace(cfg.rules, **{k: v * (1 + rng.uniform(-cfg.jitter, cfg.jitter))
                                      for k, v in vars(cfg.rules).items()})
        out.append(Annotator(f"sim-{i:02d}@{DOMAIN}", rules, cfg.flip * (0.5 + i / max(1, cfg.annotators - 1)),
                             cfg.miss, rng))
    return out


def ensure_users(client: Client, emails: list[str]) -> dict[str, int]:
    users = {u["email"]: i for i, u in client.users().items()}
    for email in emails:
        if email not in users:
            name = email.split("@")[0]
            try:
                users[email] = client.call("users.create", client.ls.users.create, retry=False, email=email,
                                           username=name, first_name=SIMULATED_FIRST_NAME, last_name=name).id
            except LabelStudioError:  # created by a request whose answer was lost
                users[email] = next(i for i, u in client.users().items() if u["email"] == email)
    return users


def sample_features(cfg: PanelConfig) -> dict[str, dict]:
    """Every sample's features, with what the rules and the oracle also need from its recipe."""
    batch_dir = Path(cfg.shards) / cfg.batch_id
    out = {}
    for row in tqdm(shards.read_sidecars(batch_dir).to_pylist(), desc=f"panel features {cfg.batch_id}", unit="img"):
        f = features(_member(batch_dir, row, "image", "RGB"), _member(batch_dir, row, "product", "RGBA"), cfg.rules)
        out[row["key"]] = {**f, "truncated": row["product_truncated"],
                           **{k: row[k] for k in ("title", "category", "product_id", "prompt_id", "seed")}}
    return out


def _member(batch_dir: Path, row: dict, member: str, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(shards.member_bytes(batch_dir, row, member))).convert(mode))


def oracle_rows(feats: dict[str, dict], rules: Rules) -> list[dict]:
    """rf1m.tables.ORACLE rows: the noise-free verdict of every sample and what it was judged on."""
    rows = []
    for key, f in sorted(feats.items()):
        verdict, reasons = judge(f, rules)
        rows.append({**{c: f[c] for c in tables.ORACLE.names if c in f}, "key": key, "verdict": verdict,
                     "reasons": reasons, "implied_height_m": implied_height(f, rules),
                     "norm_height_m": norm_height(f["title"], f["category"])})
    return rows


def failure_report(rows: list[dict]) -> dict:
    """Available rate and each reason's rate, overall and per prompt: where the generator fails."""
    def rates(rs):
        n = len(rs)
        return {"samples": n, "available": round(sum(r["verdict"] == "available" for r in rs) / max(n, 1), 4),
                **{x: round(sum(x in r["reasons"] for r in rs) / max(n, 1), 4) for x in REASON_ORDER}}
    prompts = sorted({r["prompt_id"] for r in rows})
    return {**rates(rows), "per_prompt": {p: rates([r for r in rows if r["prompt_id"] == p]) for p in prompts}}


def write_gold(cfg: PanelConfig, root: str | Path = DATA_ROOT) -> dict:
    """The oracle (the panel's rules without noise, every sample) and the simulated answer key, its
    projection, under the data root `root`; the failure report to `cfg.failures`.

    Push mixes `gold_rate` of the answer key into the project as gold tasks. With people, a quality
    lead writes gold.parquet instead (rf1m.tables.GOLD: key, verdict, reasons, source)."""
    at = Layout(root)
    rows = oracle_rows(sample_features(cfg), cfg.rules)
    tables.write(tables.ORACLE, rows, at.oracle(cfg.batch_id))
    tables.write(tables.GOLD, [{"key": r["key"], "verdict": r["verdict"], "reasons": r["reasons"],
                                "source": "simulated"} for r in rows], at.gold(cfg.batch_id))
    report = failure_report(rows)
    write_json(cfg.failures, report)
    return {"gold_answers": len(rows), "available": sum(r["verdict"] == "available" for r in rows),
            "available_rate": report["available"]}


def shown(prediction: dict) -> tuple[str | None, list[str]]:
    """The verdict and (sorted) reasons a Label Studio prediction pre-fills: what the annotator is shown."""
    got = {r["from_name"]: r["value"].get("choices") or [] for r in prediction.get("result") or []}
    return (got.get(VERDICT) or [None])[0], sorted(got.get(REASONS, []))


def submission(verdict: str, reasons: list[str], scratch_s: float, prediction: dict | None) -> tuple[dict, str]:
    """What the annotator submits (result, lead time and, when it began from a pre-label, the prediction it
    began from) and how: "scratch" (no pre-label), "accepted" (its own judgement equals the pre-label,
    whose result goes back unchanged) or "fixed"."""
    if prediction is None:
        return {"result": choice_result(verdict, reasons), "lead_time": scratch_s}, "scratch"
    if shown(prediction) == (verdict, sorted(reasons)):
        return {"result": prediction["result"], "lead_time": round(ACCEPT_TIME * scratch_s, 2),
                "parent_prediction": prediction["id"]}, "accepted"
    return {"result": choice_result(verdict, reasons), "lead_time": round(scratch_s + FIX_EXTRA_S, 2),
            "parent_prediction": prediction["id"]}, "fixed"


def assign(task_id: int, overlap: int, n: int) -> list[int]:
    """Which annotators label a task: deterministic, spread evenly."""
    start = int(hashlib.sha256(str(task_id).encode()).hexdigest(), 16) % n
    return [(start + k) % n for k in range(min(overlap, n))]


def run(cfg: PanelConfig, project_id: int, client: Client | None = None) -> dict:
    client = client or Client()
    panel = make_panel(cfg)
    users = ensure_users(client, [a.email for a in panel])
    by_id = {v: k for k, v in users.items()}
    feats = sample_features(cfg)
    tasks = [t.model_dump() for t in client.call("tasks.list", lambda: list(client.ls.tasks.list(
        project=project_id, fields="all", page_size=1000)))]
    posted = []
    for task in tqdm(tasks, desc="simulated annotators", unit="task"):
        done = {by_id.get(a["completed_by"]) for a in task.get("annotations") or []}
        f = feats[task["data"]["key"]]
        prediction = (task.get("predictions") or [None])[0]  # the pre-label Label Studio pre-fills
        for idx in assign(task["id"], task.get("overlap") or 1, len(panel)):
            ann = panel[idx]
            ann.rng.seed(f"{cfg.seed}/{ann.email}/{task['data']['task_key']}")  # same task, same judgement
            verdict, reasons = ann.label(f)
            if ann.email in done:
                continue
            sub, how = submission(verdict, reasons, round(ann.rng.uniform(2.0, 12.0), 2), prediction)
            client.call("annotations.create", client.ls.annotations.create, task["id"], retry=False,
                        completed_by=users[ann.email], **sub)
            posted.append({"task_key": task["data"]["task_key"], "annotator": ann.email, "verdict": verdict,
                           "reasons": reasons, "lead_time": sub["lead_time"], "how": how})
    return {"project_id": project_id, "tasks": len(tasks), "annotations_posted": len(posted),
            "annotators": [a.email for a in panel], "posted": posted}
