"""The `rf1m` command. Each subcommand runs one stage with its section of params.yaml.

Errors a user can fix (bad params, missing input, bad SQL) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb

from pipelines import params


def _products(a):
    from pipelines import products

    over = {k: v for k, v in {"source": a.source, "metadata": a.metadata, "out": a.out}.items() if v}
    return products.run(params.load("products", products.ProductsConfig, a.params, over))


def _models_tiny(a):
    from pipelines.models import TinyConfig, build_tiny, folder_hash

    over = {k: v for k, v in {"out": a.out, "seed": a.seed, "size": a.size}.items() if v is not None}
    cfg = params.load("models", TinyConfig, a.params, over)
    path = build_tiny(cfg.out, seed=cfg.seed, size=cfg.size)
    return {"model": str(path), "revision": folder_hash(path)}


def _generate(a):
    from pipelines import generate

    over = {"batch_id": a.batch_id} if a.batch_id else {}
    return generate.run(params.load("generate", generate.GenerateConfig, a.params, over))


def _catalog_query(a):
    from rf1m.catalog import Catalog

    table = Catalog(a.data).query(a.sql)
    if a.format == "json":
        return table.to_pylist()
    if a.format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
        return None
    rows = table.to_pylist()
    cols = table.column_names
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
    return None


def _catalog_snapshot(a):
    from rf1m.catalog import Catalog

    cat = Catalog(a.data)
    summary = cat.summary()
    if a.summary:
        from rf1m.shards import write_json_atomic

        write_json_atomic(Path(a.summary), summary)
    return {"snapshot": str(cat.snapshot(a.out)), **summary}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rf1m", description="RF1M: generate, label, release and learn from "
                                "advertising images judged by people.")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("products", help="read a product folder or make the synthetic catalog",
                       description="Read product images (RGBA, or a plain background that is removed) "
                       "or make the synthetic catalog; refused files go to quarantine.jsonl.")
    s.add_argument("--source", help="'synthetic' or a folder of product images (overrides params)")
    s.add_argument("--metadata", help="CSV/JSON with file,title,category")
    s.add_argument("--out", help="output folder (default from params: data/products)")
    s.set_defaults(fn=_products)

    m = sub.add_parser("models", help="build local diffusion models").add_subparsers(dest="what", required=True)
    t = m.add_parser("tiny", help="build the tiny offline SD + ControlNet inpainting pipeline",
                     description="Build a tiny StableDiffusionControlNetInpaintPipeline from configs "
                     "(random weights, fixed seed) and save it in diffusers format.")
    t.add_argument("--out", help="output folder (params models.out: models/tiny-sd-controlnet)")
    t.add_argument("--seed", type=int, help="weight seed (params models.seed)")
    t.add_argument("--size", type=int, help="canvas the UNet is configured for (params models.size)")
    t.set_defaults(fn=_models_tiny)

    g = sub.add_parser("generate", help="generate candidate ads into WebDataset shards",
                       description="Products x prompts x seeds -> shards under <out>/<batch_id>. "
                       "Resumable: finished shards are skipped, stale ones rebuilt.")
    g.add_argument("--batch-id", help="batch id (overrides params)")
    g.set_defaults(fn=_generate)

    c = sub.add_parser("catalog", help="query the catalog (DuckDB over the shard sidecars)")
    csub = c.add_subparsers(dest="what", required=True)
    q = csub.add_parser("query", help="run SQL over the views samples, products, quarantine",
                        description="Run SQL against DuckDB views over the files in the data folder. "
                        "Example: rf1m catalog query \"SELECT product_id, prompt_id, count(*) FROM samples "
                        "GROUP BY ALL\"")
    q.add_argument("sql")
    q.add_argument("--data", default="data", help="data folder (default: %(default)s)")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.set_defaults(fn=_catalog_query)
    sn = csub.add_parser("snapshot", help="materialise the views into a .duckdb file for read-only readers")
    sn.add_argument("--data", default="data")
    sn.add_argument("--out", default="data/catalog.duckdb")
    sn.add_argument("--summary", help="also write counts as a JSON metrics file")
    sn.set_defaults(fn=_catalog_snapshot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.fn(args)
    except (ValueError, OSError, KeyError, duckdb.Error) as e:  # what a user can fix; anything else is a bug
        print(f"rf1m: error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
