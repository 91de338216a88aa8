"""A simulated annotator panel, for the demo, CI and benchmarks only. Its labels are marked
`source=simulated` wherever they land (annotators are `sim-NN@panel.rf1m.local`, Label Studio users
whose first name is `Simulated`: pull reads the source from that record, not from this module).

Each simulated annotator is a Label Studio user and labels through the API as a person would: it
reads the project's tasks, judges the sample's images, and posts one annotation per task it is
assigned. The judgement follows documented rules computed from the images, so that RFNet (which sees
the generated image and the product) can learn them:

  unsuitable           the product photo cuts the product off at its frame (`product_truncated`,
                       measured on the product image by the products stage)
  size_mismatch        the product's longest side is under `small` or over `large` of the canvas
  space_mismatch       the product floats (gap under it > `float_gap` of the canvas) or touches an edge
  indistinctiveness    the background ring around the product is close in colour to the product
                       (mean CIELAB distance < `contrast`) or busy (lightness std > `busy`)
  shape_hallucination  the thin halo just outside the product is closer in colour to the product than
                       the wider background is (ΔE ratio halo/ring < `halo`): the background grew the product
  available            none of the above

The product photo causes the first, the layout the next two, the generated background the last two,
so fine-tuning the generator can change the rate. The default thresholds are calibrated on the tiny
offline model's backgrounds so that the demo has every reason; with a real generator, set them in
params.yaml (`panel.rules`). Every annotator has its own noise: thresholds jittered by up to
±`jitter`, a `flip` probability of reversing the verdict and a `miss` probability of dropping a reason.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from annotation.client import Client, LabelStudioError
from annotation.config import SIMULATED_FIRST_NAME, choice_result
from rf1m import shards, tables

DOMAIN = "panel.rf1m.local"


@dataclass(frozen=True)
class Rules:
    small: float = 0.635
    large: float = 0.865
    float_gap: float = 0.30
    edge: float = 0.01
    contrast: float = 52.0
    busy: float = 34.0
    halo: float = 0.92


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


def features(image: np.ndarray, product: np.ndarray) -> dict:
    """What the rules look at, computed from the generated image (RGB) and the placed product (RGBA)."""
    a = product[..., 3] > 127
    side = a.shape[0]
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float64)
    mean = lab[a].mean(axis=0)

    def grown(n):
        return cv2.dilate(a.astype(np.uint8), np.ones((n, n), np.uint8)) > 0

    halo = grown(7) & ~a
    ring = grown(max(9, side // 4 | 1)) & ~grown(7)
    dist = lambda m: np.linalg.norm(lab[m] - mean, axis=1).mean()  # noqa: E731
    ys, xs = np.nonzero(a)
    return {
        "scale": max(np.ptp(ys) + 1, np.ptp(xs) + 1) / side,
        "gap": (side - 1 - ys.max()) / side,
        "edge": min(ys.min(), xs.min(), side - 1 - ys.max(), side - 1 - xs.max()) / side,
        "contrast": float(dist(ring)),
        "busy": float(lab[ring][:, 0].std()),
        "halo": float(dist(halo) / max(dist(ring), 1e-6)),
    }


def judge(f: dict, r: Rules) -> tuple[str, list[str]]:
    """The panel's rules, noiseless: (verdict, reasons)."""
    reasons = ["unsuitable"] if f.get("truncated") else []
    if f["gap"] > r.float_gap or f["edge"] < r.edge:
        reasons.append("space_mismatch")
    if f["scale"] < r.small or f["scale"] > r.large:
        reasons.append("size_mismatch")
    if f["contrast"] < r.contrast or f["busy"] > r.busy:
        reasons.append("indistinctiveness")
    if f["halo"] < r.halo:
        reasons.append("shape_hallucination")
    return ("not_available", reasons) if reasons else ("available", [])


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
    batch_dir = Path(cfg.shards) / cfg.batch_id
    out = {}
    for row in shards.read_sidecars(batch_dir).to_pylist():
        f = features(_member(batch_dir, row, "image", "RGB"), _member(batch_dir, row, "product", "RGBA"))
        out[row["key"]] = {**f, "truncated": row["product_truncated"]}
    return out


def _member(batch_dir: Path, row: dict, member: str, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(shards.member_bytes(batch_dir, row, member))).convert(mode))


def write_gold(cfg: PanelConfig, labels: str = "data/labels") -> dict:
    """The simulated answer key: the panel's rules without noise, for every sample of the batch.

    Push mixes `gold_rate` of these into the project as gold tasks. With people, a quality lead
    writes this file instead (rf1m.tables.GOLD: key, verdict, reasons, source)."""
    rows = []
    for key, f in sorted(sample_features(cfg).items()):
        verdict, reasons = judge(f, cfg.rules)
        rows.append({"key": key, "verdict": verdict, "reasons": reasons, "source": "simulated"})
    tables.write(tables.GOLD, rows, Path(labels) / cfg.batch_id / "gold.parquet")
    return {"gold_answers": len(rows), "available": sum(r["verdict"] == "available" for r in rows)}


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
        for idx in assign(task["id"], task.get("overlap") or 1, len(panel)):
            ann = panel[idx]
            ann.rng.seed(f"{cfg.seed}/{ann.email}/{task['data']['task_key']}")  # same task, same judgement
            verdict, reasons = ann.label(f)
            if ann.email in done:
                continue
            client.call("annotations.create", client.ls.annotations.create, task["id"], retry=False,
                        result=choice_result(verdict, reasons), completed_by=users[ann.email],
                        lead_time=round(ann.rng.uniform(2.0, 12.0), 2))
            posted.append({"task_key": task["data"]["task_key"], "annotator": ann.email, "verdict": verdict,
                           "reasons": reasons})
    return {"project_id": project_id, "tasks": len(tasks), "annotations_posted": len(posted),
            "annotators": [a.email for a in panel], "posted": posted}
