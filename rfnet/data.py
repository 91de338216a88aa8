"""RFNet's inputs: release splits through `datasets` (training) and batch shards through webdataset
(pre-labelling), turned into the same tensors.

Targets are soft over `CLASSES`: available, or the sample's failure reasons sharing the mass.
A not-available sample with no reason RFNet's head knows (unsuitable only, or no reason with half the
votes) gets an all-zero target: it adds nothing to the five-way loss, yet evaluation still counts it
as not available (dropping it would make "available" look easier to find than it is).
The one augmentation is a horizontal flip of all four images together: it keeps every judged property
(scale, floating, edges, contrast, halos). No crop (it could cut the product or fake a size
mismatch) and no colour change (it could fake or hide indistinctiveness).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from PIL import Image

from rf1m import schema
from rfnet.backbones import IMAGENET_MEAN, IMAGENET_STD
from rfnet.model import CLASSES, IMAGES

# The sample member each RFNet image input is read from. The paper's product input is the product's
# own image; the placed product (`product.png`, what annotators see beside the advert) would hand
# RFNet the layout's size and position directly instead of through the generated image.
MEMBER_OF = {m: "product_original" if m == "product" else m for m in IMAGES}

_MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
_STD = torch.tensor(IMAGENET_STD)[:, None, None]


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    if img.mode == "RGBA":  # the product: composite on grey, as the encoder expects a photo
        bg = Image.new("RGBA", img.size, (127, 127, 127, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - _MEAN) / _STD


def target(verdict: str, reasons: list[str]) -> torch.Tensor:
    t = torch.zeros(len(CLASSES))
    if verdict == "available":
        t[0] = 1.0
        return t
    hits = [CLASSES.index(r) for r in reasons if r in CLASSES]
    if hits:  # else all zero: not available, with no class for the head to learn
        t[hits] = 1.0 / len(hits)
    return t


def sample(members: dict, caption: str, size: int, flip: bool = False) -> dict:
    """`members`: RFNet input name -> image, read from the sample's `MEMBER_OF` member."""
    images = {m: to_tensor(members[m], size) for m in IMAGES}
    if flip:
        images = {m: x.flip(-1) for m, x in images.items()}
    return {"images": images, "caption": caption}


def collate(items: list[dict]) -> dict:
    out = {"images": {m: torch.stack([it["images"][m] for it in items]) for m in IMAGES},
           "captions": [it["caption"] for it in items], "keys": [it["key"] for it in items]}
    if "target" in items[0]:
        out["target"] = torch.stack([it["target"] for it in items])
    return out


class ReleaseSplit(torch.utils.data.Dataset):
    """One split of a release, as (images, caption, soft target); `trainable()` keeps the samples with a class."""

    def __init__(self, version: str, split: str, root: str, size: int, augment: bool = False,
                 cache_dir: str | None = None):
        """`split` may join splits, as `datasets` does: "train+validation+test"."""
        from rf1m.release import load

        self.ds = load(version, split=split, root=root, cache_dir=cache_dir)
        self.size, self.augment = size, augment
        self.rows, self.targets, self.products = [], [], []
        for i, (label, info, recipe) in enumerate(zip(self.ds["label.cls"], self.ds["labels.json"],
                                                      self.ds["recipe.json"])):
            self.rows.append(i)
            self.targets.append(target(schema.VERDICTS[label], [schema.REASON_NAMES[r] for r in info["reasons"]]))
            self.products.append(recipe["product_id"])

    def subset(self, keep: list[int], augment: bool | None = None) -> ReleaseSplit:
        """The same data restricted to positions `keep` (cross-validation folds)."""
        other = copy.copy(self)
        other.rows = [self.rows[i] for i in keep]
        other.targets = [self.targets[i] for i in keep]
        other.products = [self.products[i] for i in keep]
        other.augment = self.augment if augment is None else augment
        return other

    def trainable(self) -> ReleaseSplit:
        """Only the samples with a five-way target: the others would cost a forward pass and teach nothing."""
        return self.subset([i for i, t in enumerate(self.targets) if t.sum() > 0])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.ds[self.rows[i]]
        members = {m: row[f"{MEMBER_OF[m]}.png"] for m in IMAGES}
        flip = self.augment and bool(torch.rand(()) < 0.5)
        item = sample(members, row["recipe.json"]["title"], self.size, flip)
        item.update(key=row["recipe.json"]["key"], target=self.targets[i])
        return item


def shard_samples(urls: list[str], size: int):
    """Batch shards (not yet labelled) as model inputs, streamed with webdataset."""
    import webdataset as wds

    def to_item(s):
        item = sample({m: s[f"{MEMBER_OF[m]}.png"] for m in IMAGES}, s["recipe.json"]["title"], size)
        item["key"] = s["__key__"]
        return item

    # pilrgba keeps the product's alpha, so it is composited exactly as in training
    return wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pilrgba").map(to_item)
