"""Products stage: a folder of product images (or the synthetic catalog) -> a clean products table.

Output, under `out` (default `data/products`):
  images/<product_id>.png   the product as RGBA, alpha = product
  products.parquet          rf1m.tables.PRODUCTS: product_id, title, category, source, image, width, height,
                            truncated
  quarantine.jsonl          every file or metadata row refused, with its reason

`truncated`: the product runs into the photo's own frame (some border row or column of the alpha is
at least `truncation` opaque), i.e. the photo cut it off. Such products are kept (a person decides
whether they are `unsuitable`), and the flag travels into every sample's recipe.

Background removal for images without alpha (documented rule): the background colour is the median
of the 1-px border; the border must be plain (median absolute deviation <= `bg_tolerance`); pixels
within `bg_tolerance` of that colour that connect to the border are background; the rest is product.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import unicodedata
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from rf1m import tables
from rf1m.atomic import write_atomic
from rf1m.quarantine import Record, Rejected

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass(frozen=True)
class ProductsConfig:
    source: str = "synthetic"  # "synthetic" or a folder of product images
    metadata: str | None = None  # CSV (file,title,category) or JSON for a folder
    count: int = 25  # synthetic products
    seed: int = 0
    size: int = 256  # synthetic canvas side
    min_side: int = 32
    max_pixels: int = 40_000_000
    bg_tolerance: int = 24
    truncation: float = 0.25
    truncated_every: int = 9  # synthetic: every Nth product is drawn cut off by the frame (0: none)
    out: str = "data/products"


# ---------------------------------------------------------------- synthetic catalog

COLOURS = {"red": (200, 40, 40), "green": (40, 150, 70), "blue": (40, 80, 200), "yellow": (230, 200, 40),
           "orange": (235, 130, 30), "purple": (130, 60, 170), "pink": (235, 120, 170), "white": (240, 240, 235),
           "black": (30, 30, 35), "teal": (30, 150, 150), "brown": (120, 75, 40), "silver": (185, 190, 195)}
KINDS = {"bottle": "beauty", "box": "electronics", "can": "beverage", "jar": "grocery", "shoe": "footwear",
         "cup": "kitchen", "tube": "personal care", "bag": "fashion"}
# What a title may call each kind. One silhouette stands for things of very different real sizes (a
# cylinder is a tea tin or a thermos), as in a real catalogue, where only the caption says which: the
# panel's size rule reads the real height from the title's noun (annotation.rules), so a judge that
# ignores the caption cannot tell the two apart.
NOUNS = {"bottle": ("bottle", "perfume", "shampoo"), "box": ("box", "earbuds case", "subwoofer"),
         "can": ("can", "tea tin", "thermos"), "jar": ("jar", "spice jar", "cookie jar"),
         "shoe": ("shoe", "slipper", "boot"), "cup": ("cup", "espresso cup", "pitcher"),
         "tube": ("tube", "lipstick", "toothpaste"), "bag": ("bag", "clutch", "backpack")}
BRANDS = ("Nordic", "Crème", "Aurora", "Kōji", "Vela", "Zephyr", "Mirth", "Solène", "Tundra", "Orbit")


def _draw(kind: str, colour: tuple, rng: np.random.Generator, side: int) -> np.ndarray:
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    c = tuple(int(v) for v in colour) + (255,)
    light = tuple(min(255, int(v * 0.5 + 128)) for v in colour) + (255,)
    w = int(side * rng.uniform(0.25, 0.45))
    h = int(side * rng.uniform(0.55, 0.9))
    cx, top = side // 2, (side - h) // 2
    if kind == "bottle":
        neck = w // 3
        d.rectangle([cx - neck // 2, top, cx + neck // 2, top + h // 4], fill=light)
        d.rounded_rectangle([cx - w // 2, top + h // 4, cx + w // 2, top + h], radius=w // 4, fill=c)
    elif kind == "box":
        w = int(side * rng.uniform(0.5, 0.8))
        d.rectangle([cx - w // 2, top, cx + w // 2, top + h], fill=c)
        d.polygon([(cx - w // 2, top), (cx - w // 3, top - side // 12), (cx + w // 1.7, top - side // 12),
                   (cx + w // 2, top)], fill=light)
    elif kind == "can":
        d.rectangle([cx - w // 2, top + w // 8, cx + w // 2, top + h - w // 8], fill=c)
        d.ellipse([cx - w // 2, top, cx + w // 2, top + w // 4], fill=light)
        d.ellipse([cx - w // 2, top + h - w // 4, cx + w // 2, top + h], fill=c)
    elif kind == "jar":
        w = int(side * rng.uniform(0.45, 0.7))
        d.rectangle([cx - w // 2 + 6, top, cx + w // 2 - 6, top + h // 6], fill=light)
        d.rounded_rectangle([cx - w // 2, top + h // 6, cx + w // 2, top + h], radius=w // 6, fill=c)
    elif kind == "shoe":
        h = int(side * rng.uniform(0.3, 0.45))
        w = int(side * rng.uniform(0.7, 0.9))
        top = (side - h) // 2
        d.polygon([(cx - w // 2, top + h), (cx - w // 2, top + h // 3), (cx - w // 6, top),
                   (cx, top + h // 3), (cx + w // 2, top + 2 * h // 3), (cx + w // 2, top + h)], fill=c)
        d.rectangle([cx - w // 2, top + h - h // 6, cx + w // 2, top + h], fill=light)
    elif kind == "cup":
        d.rectangle([cx - w // 2, top + h // 3, cx + w // 2, top + h], fill=c)
        d.ellipse([cx + w // 2 - 4, top + h // 2, cx + w // 2 + w // 3, top + 5 * h // 6], outline=c, width=6)
    elif kind == "tube":
        d.polygon([(cx - w // 2, top), (cx + w // 2, top), (cx + w // 4, top + h - h // 8),
                   (cx - w // 4, top + h - h // 8)], fill=c)
        d.rectangle([cx - w // 6, top + h - h // 8, cx + w // 6, top + h], fill=light)
    else:  # bag
        w = int(side * rng.uniform(0.5, 0.75))
        d.rectangle([cx - w // 2, top + h // 3, cx + w // 2, top + h], fill=c)
        d.arc([cx - w // 4, top, cx + w // 4, top + 2 * h // 3], 180, 360, fill=light, width=8)
    # A label band and side shading so edges and texture exist for Canny and saliency.
    arr = np.asarray(img).copy()
    a = arr[..., 3] > 0
    ys = np.nonzero(a.any(axis=1))[0]
    if kind not in ("shoe", "bag") and len(ys):
        band = slice(ys.min() + (ys.max() - ys.min()) // 2, ys.min() + 2 * (ys.max() - ys.min()) // 3)
        arr[band][a[band]] = light
    shade = np.linspace(1.15, 0.7, side)[None, :, None]
    arr[..., :3] = np.clip(arr[..., :3] * shade, 0, 255).astype(np.uint8)
    return arr


def synthetic_kind(i: int) -> str:
    """The kind of the i-th synthetic product: products cycle through `KINDS`."""
    return list(KINDS)[i % len(KINDS)]


def synthetic_noun(i: int) -> str:
    """The i-th synthetic product's noun: each kind's products cycle through its `NOUNS`. It draws
    nothing from the catalog's random stream, so the images are those of a catalog without nouns."""
    nouns = NOUNS[synthetic_kind(i)]
    return nouns[(i // len(KINDS)) % len(nouns)]


def synthetic_products(cfg: ProductsConfig):
    """Yield (product_id, title, category, rgba) for a deterministic procedural catalog."""
    rng = np.random.default_rng(cfg.seed)
    colours = list(COLOURS)
    for i in range(cfg.count):
        kind = synthetic_kind(i)
        colour = colours[int(rng.integers(len(colours)))]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        rgba = _draw(kind, COLOURS[colour], rng, cfg.size)
        while truncated(rgba[..., 3], 0.0):  # a drawing that reaches the frame: shrink it into a margin
            pad = cfg.size // 8
            rgba = np.asarray(Image.fromarray(np.pad(rgba, ((pad, pad), (pad, pad), (0, 0))), "RGBA")
                              .resize((cfg.size, cfg.size), Image.LANCZOS))
        if cfg.truncated_every and i % cfg.truncated_every == cfg.truncated_every - 1:
            rgba = np.roll(rgba, cfg.size // 3, axis=0)  # slide down: the bottom leaves the frame ...
            rgba[: cfg.size // 3] = 0  # ... and does not come back at the top
        yield f"p{i:05d}", f"{brand} {colour} {synthetic_noun(i)}", KINDS[kind], rgba


def truncated(alpha: np.ndarray, share: float) -> bool:
    """The product touches the photo's frame along more than `share` of some side."""
    opaque = alpha > 127
    return any(edge.mean() > share for edge in (opaque[0], opaque[-1], opaque[:, 0], opaque[:, -1]))


# ---------------------------------------------------------------- product folders

def _check_name(rel: str) -> str:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("bad_filename", "the file name is not valid UTF-8") from None
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in rel):
        raise Rejected("bad_filename", "the file name contains control characters")
    return unicodedata.normalize("NFC", rel)


def remove_background(rgb: np.ndarray, tolerance: int) -> np.ndarray:
    """Alpha for a product photographed on a plain background (rule in the module docstring)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    bg = np.median(border, axis=0)
    if np.median(np.abs(border - bg).max(axis=1)) > tolerance:
        raise Rejected("background_not_plain", "no alpha channel and the background is not a plain colour")
    near = (np.abs(rgb.astype(np.int16) - bg).max(axis=2) <= tolerance).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels > 0]) & (near > 0)
    alpha = np.where(background, 0, 255).astype(np.uint8)
    alpha = cv2.morphologyEx(alpha, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if (alpha > 0).mean() < 0.01:
        raise Rejected("no_product_found", "background removal left no product")
    return alpha


def load_product_image(path: Path, cfg: ProductsConfig) -> np.ndarray:
    """Open one product file as RGBA, or raise Rejected with the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = cfg.max_pixels
            data = path.read_bytes()
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > cfg.max_pixels:
                raise Rejected("huge", f"{w}x{h} px is over max_pixels={cfg.max_pixels}")
            im.load()
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Rejected("huge", f"decompression bomb guard: {e}") from None
    except (PermissionError, IsADirectoryError, FileNotFoundError) as e:
        raise Rejected("unreadable", f"cannot read the file: {e.strerror or e}") from None
    except Exception as e:  # PIL raises many kinds for broken data
        raise Rejected("corrupt", f"not a decodable image: {type(e).__name__}: {e}") from None
    if min(w, h) < cfg.min_side:
        raise Rejected("tiny", f"{w}x{h} px is under min_side={cfg.min_side}")
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    rgba = np.asarray(im.convert("RGBA")).copy()
    if has_alpha and (rgba[..., 3] == 0).all():
        raise Rejected("fully_transparent", "every pixel is transparent")
    if not has_alpha or (rgba[..., 3] == 255).all():
        rgba[..., 3] = remove_background(rgba[..., :3], cfg.bg_tolerance)
    return rgba


KEY_COLUMNS = ("file", "product_id")  # the first one a metadata file has is its key


def read_metadata(path: str) -> tuple[str, list[tuple[int, dict]]]:
    """(key column, [(row number, row)]) from a CSV with a header, or JSON (a list of objects, or an
    object keyed by file name). Row numbers are the file's own (header = 1), so a report points at them."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else [{"file": k, **v} for k, v in data.items()]
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: metadata JSON must be a list of objects or an object keyed by file name")
        numbered, columns = list(enumerate(rows, 1)), {c for r in rows for c in r}
    else:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            numbered = [(reader.line_num, r) for r in reader]
            columns = set(reader.fieldnames or ())
    key = next((c for c in KEY_COLUMNS if c in columns), None)
    if key is None:
        raise ValueError(f"{path}: metadata needs a 'file' or 'product_id' column naming each image "
                         f"(it has: {', '.join(sorted(columns)) or 'no columns'})")
    return key, numbered


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip().replace("\\", "/").casefold()


def match_metadata(path: str, images: dict[str, str], rejected: list[Record]) -> tuple[dict[str, dict], dict]:
    """Give each image (normalised relative name -> product id) its metadata row.

    A merchant's sheet rarely spells file names as the disk does, so a row's key is compared,
    case-insensitively, with (1) the relative path or our product id, (2) the file name, (3) the
    stem (the name without its extension); the most exact level that finds anything decides.
    Defined outcomes for what does not fit:
      - a row that finds no image:            quarantined as `metadata_unmatched`;
      - a row whose best level finds several: quarantined as `metadata_ambiguous` (say `a.png`, or
        `shoes/a.png`, instead of `a`), and none of those images takes it;
      - several rows for one image:           the most exact match wins, then the earlier row; the
                                              others are quarantined as `metadata_duplicate`.
    Metadata that matches no image at all is a wrong file or a wrong folder: a ValueError, not a
    run in which every title silently falls back to the file name (the title is RFNet's caption)."""
    key, rows = read_metadata(path)
    levels: list[dict[str, set[str]]] = [defaultdict(set) for _ in range(3)]
    for name, pid in images.items():
        base = PurePosixPath(name)
        for level, k in ((0, name), (0, pid), (1, base.name), (2, base.stem), (2, str(base.with_suffix("")))):
            levels[level][_fold(k)].add(name)
    src = Path(path).name
    unmatched = []
    claims: dict[str, list[tuple[int, int, dict]]] = defaultdict(list)
    for line, row in rows:
        value = str(row.get(key) or "")
        item, folded = f"{src} row {line}: {value}", _fold(value)
        level, found = next(((lv, index[folded]) for lv, index in enumerate(levels) if folded in index), (0, set()))
        if not found:
            unmatched.append(Record("products", item, "metadata_unmatched",
                                   f"no image's path, name or stem is {value!r}" if value.strip()
                                   else f"the row has no {key}"))
        elif len(found) > 1:
            rejected.append(Record("products", item, "metadata_ambiguous",
                                   f"{value!r} names {len(found)} images: {', '.join(sorted(found))}"))
        else:
            claims[next(iter(found))].append((level, line, row))
    rejected.extend(unmatched)
    meta = {}
    for name, cands in claims.items():
        (_, first, row), *rest = sorted(cands, key=lambda c: c[:2])
        meta[name] = row
        rejected.extend(Record("products", f"{src} row {line}: {r.get(key)}", "metadata_duplicate",
                               f"{name} already takes row {first}") for _, line, r in rest)
    if rows and not meta:
        example = f"; e.g. {rows[0][1].get(key)!r} vs the image {min(images)!r}" if images else ""
        raise ValueError(f"{path}: none of its {len(rows)} rows names an image in {len(images)} images "
                         f"(matched on '{key}' against path, file name or stem, case-insensitively{example})")
    report = {"metadata_matched": len(meta), "images_without_metadata": len(images) - len(meta),
              "metadata_rows_without_image": len(unmatched)}
    print(f"products: metadata {src}: {report['metadata_matched']} images matched, "
          f"{report['images_without_metadata']} images have no row, "
          f"{report['metadata_rows_without_image']} rows have no image (see quarantine.jsonl)", file=sys.stderr)
    return meta, report


def list_images(source: str) -> list[Path]:
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"products source {source!r} is not a folder (or use 'synthetic')")
    return sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()),
                  key=lambda p: str(p).encode("utf-8", "surrogateescape"))


def _product_id(name: str) -> str:
    return "p" + hashlib.sha1(name.encode()).hexdigest()[:12]


def folder_products(cfg: ProductsConfig, files: list[Path], meta: dict[str, dict], rejected: list[Record]):
    root = Path(cfg.source)
    for path in tqdm(files, desc="products", unit="file"):
        rel = str(path.relative_to(root))
        try:
            name = _check_name(rel)
            rgba = load_product_image(path, cfg)
        except Rejected as r:
            shown = rel.encode("utf-8", "backslashreplace").decode()  # a name that is not UTF-8, made printable
            rejected.append(Record("products", shown, r.reason, r.detail))
            continue
        m = meta.get(name) or {}
        title = m.get("title") or Path(name).stem.replace("_", " ").replace("-", " ")
        yield _product_id(name), title, m.get("category") or "uncategorised", rgba, name


def run(cfg: ProductsConfig) -> dict:
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rejected: list[Record] = []
    report: dict = {}
    if cfg.source == "synthetic":
        items = ((pid, t, c, rgba, "synthetic") for pid, t, c, rgba in synthetic_products(cfg))
    else:
        files = list_images(cfg.source)
        meta = {}
        if cfg.metadata:
            names = {}
            for f in files:
                try:
                    name = _check_name(str(f.relative_to(cfg.source)))
                except Rejected:  # folder_products quarantines it with its reason
                    continue
                names[name] = _product_id(name)
            meta, report = match_metadata(cfg.metadata, names, rejected)
        items = folder_products(cfg, files, meta, rejected)
    rows, seen = [], set()
    for pid, title, category, rgba, source in items:
        if pid in seen:  # e.g. the same name saved once in NFC and once in NFD
            rejected.append(Record("products", source, "duplicate", f"same normalised name as product {pid}"))
            continue
        seen.add(pid)
        rel = f"images/{pid}.png"
        buf = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
        target = out / rel
        if not target.exists() or target.read_bytes() != buf.getvalue():
            write_atomic(target, buf.getvalue())
        rows.append({"product_id": pid, "title": unicodedata.normalize("NFC", title), "category": category,
                     "source": source, "image": rel, "width": rgba.shape[1], "height": rgba.shape[0],
                     "truncated": truncated(rgba[..., 3], cfg.truncation)})
    tables.write(tables.PRODUCTS, rows, out / "products.parquet")
    tables.write(tables.QUARANTINE, rejected, out / "quarantine.jsonl")
    return {"products": len(rows), "quarantined": len(rejected), **report}


def read_products(out: str | Path) -> list[dict]:
    return tables.read(tables.PRODUCTS, Path(out) / "products.parquet").to_pylist()
