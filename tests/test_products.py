import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from annotation.rules import Rules, judge, norm_height
from pipelines.products import KINDS, NOUNS, ProductsConfig, run, synthetic_products, truncated


def rgba_product(path: Path, size=64):
    a = np.zeros((size, size, 4), np.uint8)
    a[10:50, 20:40] = (200, 50, 50, 255)
    Image.fromarray(a, "RGBA").save(path)


def png_with_header_size(path: Path, w: int, h: int):
    """A valid tiny PNG whose IHDR claims w x h: a decompression bomb's calling card."""
    Image.new("L", (1, 1)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", w, h)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def quarantine(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    return {r["item"]: r["reason"] for r in rows}


def test_every_bad_file_is_quarantined_and_the_rest_goes_on(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rgba_product(src / "good.png")
    rgba_product(src / "עברית 🍾 crème.png")  # RTL, emoji, accents: a fine name
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(src / "transparent.png")
    rgba_product(src / "tiny.png", size=16)
    png_with_header_size(src / "bomb.png", 50_000, 50_000)
    os.symlink(src / "missing.png", src / "dangling.png")
    rgba_product(src / "x.png")
    bad = os.fsencode(src) + b"/bad\xffname.png"
    with open(bad, "wb") as f:
        f.write((src / "good.png").read_bytes())
    busy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(busy).save(src / "busy.jpg")
    plain = np.full((64, 64, 3), 250, np.uint8)
    plain[16:48, 24:40] = (20, 60, 160)
    Image.fromarray(plain).save(src / "plain.jpg", quality=95)

    out = tmp_path / "out"
    summary = run(ProductsConfig(source=str(src), out=str(out), min_side=32))
    q = quarantine(out)
    assert q == {"corrupt.png": "corrupt", "transparent.png": "fully_transparent", "tiny.png": "tiny",
                 "bomb.png": "huge", "dangling.png": "unreadable", "bad\\udcffname.png": "bad_filename",
                 "busy.jpg": "background_not_plain"}
    table = pq.read_table(out / "products.parquet").to_pylist()
    assert summary == {"products": 4, "quarantined": 7}
    assert {r["source"] for r in table} == {"good.png", "x.png", "plain.jpg", "עברית 🍾 crème.png"}
    by_src = {r["source"]: r for r in table}
    alpha = np.asarray(Image.open(out / by_src["plain.jpg"]["image"]))[..., 3]
    assert alpha[32, 32] == 255 and alpha[2, 2] == 0  # background removed by the plain-border rule
    assert abs(int((alpha > 0).sum()) - 32 * 16) < 40


def test_metadata_titles_and_rerun_is_stable(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rgba_product(src / "a.png")
    (tmp_path / "meta.csv").write_text("file,title,category\na.png,Glass jar,grocery\n")
    cfg = ProductsConfig(source=str(src), metadata=str(tmp_path / "meta.csv"), out=str(tmp_path / "o"))
    run(cfg)
    first = (tmp_path / "o" / "products.parquet").read_bytes()
    run(cfg)
    rows = pq.read_table(tmp_path / "o" / "products.parquet").to_pylist()
    assert rows[0]["title"] == "Glass jar" and rows[0]["category"] == "grocery"
    assert (tmp_path / "o" / "products.parquet").read_bytes() == first


def test_synthetic_catalog_is_deterministic_by_seed():
    a = list(synthetic_products(ProductsConfig(count=5, seed=1, size=64)))
    b = list(synthetic_products(ProductsConfig(count=5, seed=1, size=64)))
    c = list(synthetic_products(ProductsConfig(count=5, seed=2, size=64)))
    assert [x[:3] for x in a] == [x[:3] for x in b]
    assert all(np.array_equal(x[3], y[3]) for x, y in zip(a, b))
    assert any(not np.array_equal(x[3], y[3]) for x, y in zip(a, c))
    assert all(x[3][..., 3].any() for x in a)


def test_synthetic_titles_carry_the_size_the_silhouette_does_not():
    """Products of one kind share a silhouette but not a real size: the caption's noun says which, so a
    judge must read the caption to judge size. Fails if titles go back to naming the kind alone."""
    titles = {}
    for i, (_, title, category, _) in enumerate(synthetic_products(ProductsConfig(count=48, size=64))):
        titles.setdefault(list(KINDS)[i % len(KINDS)], set()).add((title.split(" ", 2)[2], category))
    for kind, seen in titles.items():
        assert {noun for noun, _ in seen} == set(NOUNS[kind])  # every noun is drawn
        norms = [norm_height(f"Vela red {noun}", cat) for noun, cat in seen]
        assert None not in norms and max(norms) / min(norms) >= 2, (kind, norms)  # the panel knows each
    # the same pixels and perspective (0.5 x 0.1 / 0.2 = 0.25 m implied): a shampoo fits, a perfume does not
    f = {"base": 0.9, "height": 0.5, "ground": 0.7, "ground_step": 30.0, "contrast": 99.0, "busy": 0.0, "halo": 1.0,
         "banding": 0.3, "prompt_id": None}
    assert judge({**f, "title": "Vela red shampoo", "category": "beauty"}, Rules(size_tol=2)) == ("available", [])
    assert judge({**f, "title": "Vela red perfume", "category": "beauty"}, Rules(size_tol=2))[1] == ["size_mismatch"]


def test_synthetic_product_images_are_those_the_generator_was_trained_on():
    """models/scene-generator and models/depth-net are trained on these pixels and rebuilt only when
    `scenes.CORPUS_VERSION` changes: a change to the drawing or its random stream must bump it (and
    this digest). The digest is the catalog's before titles got their nouns, which draw nothing."""
    h = hashlib.sha256()
    for _, _, category, rgba in synthetic_products(ProductsConfig(count=24, size=64)):
        h.update(rgba.tobytes())
        h.update(category.encode())
    assert h.hexdigest() == "1703dce2e2a8d7f1e465b1dd3dda679171c3a6ceb67e8983ec1f9bd0c83aa632"


def test_products_cut_off_by_the_frame_are_flagged(tmp_path):
    run(ProductsConfig(count=9, size=64, truncated_every=3, out=str(tmp_path)))
    rows = pq.read_table(tmp_path / "products.parquet").to_pylist()
    assert [r["truncated"] for r in rows] == [False, False, True] * 3
    assert truncated(np.pad(np.full((10, 10), 255, np.uint8), ((5, 0), (5, 5))), 0.25)  # runs off the bottom
    assert not truncated(np.pad(np.full((10, 10), 255, np.uint8), 5), 0.25)


def products_folder(tmp_path, *names) -> Path:
    src = tmp_path / "src"
    for n in names:
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        rgba_product(src / n)
    return src


def titles(out: Path) -> dict:
    return {r["source"]: (r["title"], r["category"]) for r in pq.read_table(out / "products.parquet").to_pylist()}


def test_metadata_matches_by_stem_name_or_path_case_insensitively_and_reports(tmp_path, capsys):
    """A merchant's sheet says `sku-001`, the disk says `sku-001.png`: the row must still land."""
    src = products_folder(tmp_path, "sku-001.png", "SKU-002.PNG", "sub/sku-003.png", "extra.png")
    (tmp_path / "meta.csv").write_text("file,title,category\nsku-001,Red bottle,beauty\n"
                                       "sku-002.png,Blue box,electronics\nSUB/SKU-003,Green can,beverage\n"
                                       "ghost,Nowhere,none\n")
    out = tmp_path / "o"
    summary = run(ProductsConfig(source=str(src), metadata=str(tmp_path / "meta.csv"), out=str(out)))
    assert titles(out) == {"sku-001.png": ("Red bottle", "beauty"), "SKU-002.PNG": ("Blue box", "electronics"),
                           "sub/sku-003.png": ("Green can", "beverage"), "extra.png": ("extra", "uncategorised")}
    assert summary["metadata_matched"] == 3 and summary["images_without_metadata"] == 1
    assert summary["metadata_rows_without_image"] == 1 and summary["quarantined"] == 1
    assert quarantine(out) == {"meta.csv row 5: ghost": "metadata_unmatched"}
    err = capsys.readouterr().err
    assert "3 images matched, 1 images have no row, 1 rows have no image" in err


def test_metadata_keyed_by_product_id_column(tmp_path):
    src = products_folder(tmp_path, "sku-001.png", "sku-002.png")
    (tmp_path / "meta.json").write_text(json.dumps([{"product_id": "SKU-001", "title": "Glass jar"},
                                                    {"product_id": "sku-002", "category": "kitchen"}]))
    out = tmp_path / "o"
    run(ProductsConfig(source=str(src), metadata=str(tmp_path / "meta.json"), out=str(out)))
    assert titles(out) == {"sku-001.png": ("Glass jar", "uncategorised"), "sku-002.png": ("sku 002", "kitchen")}


def test_metadata_ambiguity_has_a_defined_outcome(tmp_path):
    """A name in two folders is refused, not guessed; of two rows for one image the more exact one wins."""
    src = products_folder(tmp_path, "shoes/a.png", "bags/a.png", "c/b.png")
    (tmp_path / "meta.csv").write_text("file,title\na.png,Which one\nbags/A.png,Tote\nb,By stem\n"
                                       "b.png,By name\nB.PNG,Again by name\n")
    out = tmp_path / "o"
    summary = run(ProductsConfig(source=str(src), metadata=str(tmp_path / "meta.csv"), out=str(out)))
    assert titles(out) == {"shoes/a.png": ("a", "uncategorised"), "bags/a.png": ("Tote", "uncategorised"),
                           "c/b.png": ("By name", "uncategorised")}
    assert quarantine(out) == {"meta.csv row 2: a.png": "metadata_ambiguous", "meta.csv row 4: b": "metadata_duplicate",
                               "meta.csv row 6: B.PNG": "metadata_duplicate"}
    assert summary["metadata_matched"] == 2 and summary["images_without_metadata"] == 1


def test_metadata_that_matches_no_image_stops_with_a_clear_error(tmp_path, capsys):
    from pipelines.cli import main

    src = products_folder(tmp_path, "sku-001.png")
    (tmp_path / "meta.csv").write_text("file,title\nother-001,Red bottle\nother-002,Blue box\n")
    code = main(["--params", str(tmp_path / "none.yaml"), "products", "--source", str(src),
                 "--metadata", str(tmp_path / "meta.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("rf1m: error: ") and "none of its 2 rows names an image" in err
    assert not (tmp_path / "o" / "products.parquet").exists()
