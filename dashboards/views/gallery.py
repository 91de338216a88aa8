"""The samples themselves: filter by label, reason, prompt or RFNet-vs-people disagreement; each tile
shows the generated image, the product and its maps, and opens the recipe. Images are read straight
from the shard tars at the sidecar's offsets (no tar parsing, no copy on disk)."""

import io
import json
from pathlib import Path

import streamlit as st
from PIL import Image

from dashboards import data, ui
from dashboards.queries import GALLERY
from rf1m import schema
from rf1m.shards import member_bytes

PER_PAGE = 12
MAPS = ("product", "mask", "canny", "depth", "saliency")

st.title("Gallery")
ui.require("samples", "no generated samples; run `rf1m generate` (or `make demo`)")

with st.sidebar:
    st.subheader("Gallery filters")
    verdict = st.selectbox("Label", ["any", *schema.VERDICTS], key="gallery_verdict")
    reason = st.selectbox("Reason", ["any", *schema.REASON_NAMES], key="gallery_reason")
    prompt = st.selectbox("Prompt", ["any", *data.frame(GALLERY["prompts"])["prompt_id"]], key="gallery_prompt")
    disagree = st.checkbox("Only where RFNet and people disagree", key="gallery_disagree")
chosen = dict(verdict=verdict, reason=reason, prompt=prompt, disagree=disagree)
total = int(data.frame(GALLERY["count"], **chosen).iloc[0, 0])
pages = max(1, -(-total // PER_PAGE))
page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="gallery_page")
st.caption(f"{total:,} samples match")
tiles = data.frame(GALLERY["tiles"], offset=(page - 1) * PER_PAGE, **chosen)


def member(row, name: str) -> bytes | None:
    try:
        return member_bytes(Path(row["batch_dir"]), row, name)
    except OSError:  # the sidecar outlived its tar: say so on the tile, keep the rest
        return None


def strip(images: list[bytes], side: int = 96) -> Image.Image:
    """The product and its maps side by side, one picture (RGBA products on white)."""
    out = Image.new("RGB", (side * len(images) + 4 * (len(images) - 1), side), "white")
    for i, png in enumerate(images):
        im = Image.open(io.BytesIO(png))
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA")).convert("RGB")
        out.paste(im.resize((side, side)), (i * (side + 4), 0))
    return out


def verdict_line(row) -> str:
    human = row["human"] if isinstance(row["human"], str) else "not labelled"
    reasons = ", ".join(row["human_reasons"]) if isinstance(row["human"], str) and len(row["human_reasons"]) else ""
    rfnet = f"RFNet p={row['p_available']:.2f} ({row['rfnet']})" if isinstance(row["rfnet"], str) else "no prediction"
    return f"**{human}**{' · ' + reasons if reasons else ''} · {rfnet}"


for start in range(0, len(tiles), 3):
    for col, (_, row) in zip(st.columns(3, border=True), tiles.iloc[start:start + 3].iterrows()):
        with col:
            image = member(row, "image")
            if image is None:
                st.warning(f"image missing: {row['shard']} in {row['batch_dir']}")
            else:
                st.image(image, caption=row["key"], width="stretch", output_format="PNG")
            st.markdown(verdict_line(row))
            maps = [(m, member(row, m)) for m in MAPS]
            present = [(m, b) for m, b in maps if b]
            if present:
                st.image(strip([b for _, b in present]), caption=" · ".join(m for m, _ in present),
                         width="stretch", output_format="PNG")
            with st.expander("recipe"):
                recipe = member(row, "recipe")
                st.json(json.loads(recipe) if recipe else {c: row[c] for c in schema.RECIPE_NAMES})

ui.table(tiles[["key", "batch_id", "prompt_id", "category", "seed", "human", "human_reasons", "p_available",
                "rfnet"]], "gallery_page")
