"""What an RF1M sample is, written once.

Every other shape of a sample -- the Arrow schema of a shard's Parquet sidecar, the Hugging Face
`Features` of a release, the member names inside a WebDataset tar -- is a projection of the two
tables below, so adding a reason or a recipe field is one edit here and every projection follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 4


@dataclass(frozen=True)
class Reason:
    name: str
    title: str
    definition: str
    generation_failure: bool  # RFNet's head judges only failures the generator can cause


# The paper's taxonomy (release README of RF1M); `available` is the usable verdict.
AVAILABLE = Reason(
    "available", "Available",
    "Usable as an advert: the product is intact, sits naturally in the scene and stands out.", True)
REASONS = (
    Reason("unsuitable", "Unsuitable product",
           "The product image itself is bad (truncated, damaged, unreadable); no background can save it.",
           False),
    Reason("space_mismatch", "Space mismatch",
           "Wrong spatial relation between product and scene, e.g. floating in the air or cut by an edge.",
           True),
    Reason("size_mismatch", "Size mismatch",
           "The product's scale does not fit the scene: far too large or too small for its surroundings.",
           True),
    Reason("indistinctiveness", "Indistinctiveness",
           "The product does not stand out: busy background or one of the same colour as the product.",
           True),
    Reason("shape_hallucination", "Shape hallucination",
           "The background extends the product's shape: pedestals, legs, handles or halos grown from it.",
           True),
)
LABELS = (AVAILABLE, *REASONS)
LABEL_NAMES = tuple(r.name for r in LABELS)
REASON_NAMES = tuple(r.name for r in REASONS)


@dataclass(frozen=True)
class Member:
    """A file inside a sample's tar entry: `<key>.<name>.<ext>`."""

    name: str
    ext: str
    mode: str  # PIL mode the image is stored in
    description: str

    @property
    def wds_name(self) -> str:
        return f"{self.name}.{self.ext}"


MEMBERS = (
    Member("image", "png", "RGB", "the generated advert, original product pixels pasted back"),
    Member("product", "png", "RGBA", "the product placed on the canvas, alpha = product"),
    # RFNet's product input, as in the paper: the product's own photo, not its placement, so that
    # size and position reach RFNet only through the generated image.
    Member("product_original", "png", "RGBA", "the product image as given, fit in the canvas and centred"),
    Member("mask", "png", "L", "inpainting mask: 255 where the background is generated"),
    Member("canny", "png", "L", "Canny edges of the placed product (ControlNet condition)"),
    Member("depth", "png", "L", "depth map, 255 = near"),
    Member("saliency", "png", "L", "saliency map, 255 = most salient"),
)
RECIPE_MEMBER = "recipe.json"


@dataclass(frozen=True)
class Field:
    """A recipe field: stored in every sample's recipe.json and as a sidecar column."""

    name: str
    arrow: pa.DataType
    description: str
    # An input of the pixels: `rf1m regenerate` rebuilds the image from these fields alone, and the
    # generate stage fills the ones named like a config knob straight from the config, so recording
    # a new knob (and reading it back) is this one line.
    regenerate: bool = False


RECIPE = (
    Field("key", pa.string(), "sample key, unique across RF1M: <batch>-<product>-<prompt>-s<seed>"),
    Field("batch_id", pa.string(), "generation batch; one Label Studio project per batch"),
    Field("product_id", pa.string(), "product in the products table", True),
    Field("product_sha256", pa.string(), "sha256 of the product image file's bytes", True),
    Field("title", pa.string(), "product title (caption input of RFNet)"),
    Field("category", pa.string(), "product category"),
    Field("product_truncated", pa.bool_(), "the product photo cuts the product off at its frame"),
    Field("prompt_id", pa.string(), "prompt preset id"),
    Field("prompt", pa.string(), "positive prompt", True),
    Field("negative_prompt", pa.string(), "negative prompt", True),
    Field("seed", pa.int64(), "diffusion noise seed (a CPU torch.Generator)", True),
    Field("scale", pa.float64(), "longest product side / canvas side", True),
    Field("offset_x", pa.int64(), "product centre shift from the canvas centre, px", True),
    Field("offset_y", pa.int64(), "product centre shift from the canvas centre, px", True),
    Field("size", pa.int64(), "canvas side, px", True),
    Field("dilate", pa.int64(), "inpainting-mask dilation kernel, px", True),
    Field("canny_low", pa.int64(), "Canny lower threshold of the ControlNet condition", True),
    Field("canny_high", pa.int64(), "Canny upper threshold of the ControlNet condition", True),
    Field("base_model", pa.string(), "base SD model id or local path", True),
    Field("model_revision", pa.string(), "base model: hub commit sha, or sha256 of a local model folder", True),
    Field("controlnet_model", pa.string(), "ControlNet model id or local path (the base path: inside it)", True),
    Field("controlnet_revision", pa.string(), "ControlNet: hub commit sha, or sha256 of a local folder", True),
    Field("scheduler", pa.string(), "scheduler class", True),
    Field("steps", pa.int64(), "denoising steps", True),
    Field("guidance", pa.float64(), "classifier-free guidance scale", True),
    Field("eta", pa.float64(), "DDIM eta (0: deterministic sampling)", True),
    Field("controlnet_scale", pa.float64(), "ControlNet conditioning scale", True),
    Field("device", pa.string(), "device the sample was generated on (cpu, cuda)", True),
    Field("dtype", pa.string(), "torch dtype of the models (float32, float16)", True),
    Field("library_versions", pa.string(), "versions of the libraries that make the pixels (name==version ...)"),
    Field("depth_method", pa.string(), "how depth.png was made"),
    Field("saliency_method", pa.string(), "how saliency.png was made"),
    Field("created_at", pa.string(), "ISO-8601 UTC time the sample was generated"),
)
RECIPE_NAMES = tuple(f.name for f in RECIPE)
REGENERATE_NAMES = tuple(f.name for f in RECIPE if f.regenerate)


# One row per human (or simulated) judgement, as pulled from Label Studio.
LABEL_ROWS = (
    Field("annotation_id", pa.int64(), "Label Studio annotation id (unique; pulls upsert on it)"),
    Field("task_id", pa.int64(), "Label Studio task id"),
    Field("project_id", pa.int64(), "Label Studio project (one per batch)"),
    Field("key", pa.string(), "sample key"),
    Field("batch_id", pa.string(), "generation batch"),
    Field("gold", pa.bool_(), "the task is a gold task with a known answer"),
    Field("annotator", pa.string(), "annotator's e-mail in Label Studio"),
    Field("source", pa.string(), "human, or simulated (the demo/CI panel)"),
    Field("verdict", pa.string(), "available or not_available"),
    Field("reasons", pa.list_(pa.string()), "failure reasons (taxonomy names)"),
    Field("regions", pa.string(), "JSON list of defect rectangles (percent of the image)"),
    Field("lead_time", pa.float64(), "seconds the annotator spent"),
    Field("prediction_accepted", pa.bool_(), "a pre-label was shown and submitted unchanged"),
    Field("created_at", pa.timestamp("us", tz="UTC"), "annotation created"),
    Field("updated_at", pa.timestamp("us", tz="UTC"), "annotation last changed"),
)
VERDICTS = ("available", "not_available")


def wds_member_names() -> tuple[str, ...]:
    return (*(m.wds_name for m in MEMBERS), RECIPE_MEMBER)


def sidecar_schema() -> pa.Schema:
    """Arrow schema of a shard's Parquet sidecar: the recipe plus where each member lies in the tar."""
    cols = [pa.field(f.name, f.arrow, nullable=False) for f in RECIPE]
    cols.append(pa.field("shard", pa.string(), nullable=False))
    for name in (*(m.name for m in MEMBERS), "recipe"):
        cols.append(pa.field(f"{name}_offset", pa.int64(), nullable=False))
        cols.append(pa.field(f"{name}_size", pa.int64(), nullable=False))
    return pa.schema(cols)


def hf_features():
    """`datasets.Features` of a sample as the `webdataset` builder yields it (columns = member names)."""
    from datasets import Features, Image, Value

    arrow_to_hf = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64", pa.bool_(): "bool"}
    recipe = {f.name: Value(arrow_to_hf[f.arrow]) for f in RECIPE}
    return Features({**{m.wds_name: Image() for m in MEMBERS}, RECIPE_MEMBER: recipe})
