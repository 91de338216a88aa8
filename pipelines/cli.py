"""The `rf1m` command. Each subcommand runs one stage with its section of params.yaml.

Errors a user can fix (bad params, missing input, bad SQL) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

import duckdb

from pipelines import params
from rf1m.shards import write_json_atomic


def _given(a, *names) -> dict:
    """The options the user gave on the command line, to override their params.yaml values."""
    return {n: getattr(a, n) for n in names if getattr(a, n, None) is not None}


def _products(a):
    from pipelines import products

    return products.run(params.load("products", products.ProductsConfig, a.params,
                                    _given(a, "source", "metadata", "out")))


def _models_tiny(a):
    from pipelines.models import TinyConfig, build_tiny, folder_hash

    cfg = params.load("models", TinyConfig, a.params, _given(a, "out", "seed", "size"))
    path = build_tiny(cfg.out, seed=cfg.seed, size=cfg.size)
    return {"model": str(path), "revision": folder_hash(path)}


def _generate(a):
    from pipelines import generate

    return generate.run(params.load("generate", generate.GenerateConfig, a.params, _given(a, "batch_id")))


def _regenerate(a):
    from pipelines import regenerate

    return regenerate.run(regenerate.RegenerateConfig(a.key, a.data, a.products, a.out))


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
    cat.snapshot(a.out)
    return cat.summary()


def _ls_config(a):
    import os

    from annotation.server import ServerConfig, load_dotenv

    load_dotenv()
    over = {"url": os.environ["LABEL_STUDIO_URL"]} if os.environ.get("LABEL_STUDIO_URL") else {}
    if getattr(a, "allow_remote_bind", False):
        over["allow_remote_bind"] = True
    return params.load("labelstudio", ServerConfig, a.params, over)


def _labelstudio(a):
    from annotation import server

    cfg = _ls_config(a)
    if a.action == "install":
        return {"label_studio": str(server.install(cfg))}
    return getattr(server, a.action)(cfg)


def _client(a):
    from annotation.client import Client

    return Client(_ls_config(a).url)  # the credentials `up` made (environment or .env)


def _annotate_push(a):
    from annotation import push

    cfg = params.load("annotate_push", push.PushConfig, a.params, _given(a, "batch_id", "predictions"))
    return push.run(cfg, _client(a))


def _annotate_gold(a):
    from annotation import panel

    return panel.write_gold(params.load("panel", panel.PanelConfig, a.params, _given(a, "batch_id")))


def _annotate_simulate(a):
    from annotation import panel, push

    cfg = params.load("panel", panel.PanelConfig, a.params, _given(a, "batch_id"))
    client = _client(a)
    project = push.find_project(client, cfg.batch_id)
    if project is None:
        raise ValueError(f"no Label Studio project for batch {cfg.batch_id!r}: push it first")
    result = panel.run(cfg, project["id"], client)
    del result["posted"]  # every annotation is in Label Studio; pull reads them from there
    return result


def _annotate_pull(a):
    from annotation import pull

    return pull.run(params.load("annotate_pull", pull.PullConfig, a.params, _given(a, "batch_id")), _client(a))


def _annotate_consensus(a):
    from annotation import consensus

    return consensus.run(params.load("consensus", consensus.ConsensusConfig, a.params, _given(a, "batch_id")))


def _annotate_ml_backend(a):
    from annotation import ml_backend, push

    if a.predictor.startswith("rfnet:"):
        from rfnet.predict import CheckpointPredictor

        predictor = CheckpointPredictor(a.predictor[6:], a.shards)
    else:
        predictor = ml_backend.make_predictor(a.predictor)
    server = ml_backend.serve(predictor, a.host, a.port, background=bool(a.connect))
    url = f"http://{a.host}:{a.port}"
    if a.connect:
        client = _client(a)
        project = push.find_project(client, a.connect)
        if project is None:
            raise ValueError(f"no Label Studio project for batch {a.connect!r}")
        ml_backend.connect(client, project["id"], url)
        print(f"connected to project {project['id']} ({push.project_title(a.connect)})", file=sys.stderr)
    print(f"ML backend ({predictor.model_version}) on {url}; Ctrl+C stops it", file=sys.stderr)
    try:
        server.serve_forever() if not a.connect else threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return None


def _release(a):
    from rf1m import release

    if a.action == "compile":
        over = _given(a, "version", "parent")
        return release.compile_release(params.load("release", release.ReleaseConfig, a.params, over))
    root = params.load("release", release.ReleaseConfig, a.params).out
    if a.action in ("verify", "diff") and not a.version or a.action == "diff" and not a.other:
        raise ValueError(f"release {a.action} needs {'two versions' if a.action == 'diff' else 'a version'}")
    if a.action == "verify":
        return release.verify(a.version, root)
    if a.action == "diff":
        d = release.diff(a.version, a.other, root)
        return {**{k: d[k] for k in ("old", "new", "label_deltas")},
                **{k: {"count": len(d[k]), "keys": d[k][:20]} for k in ("added", "removed", "relabelled")}}
    return release.list_releases(root)


def _rfnet(a):
    from rfnet import evaluate, train

    over = _given(a, "release")
    if a.action == "train":
        if a.drop:
            if not a.out:
                raise ValueError("--drop trains an ablation: give it its own --out folder")
            over["model"] = {**_model_params(a.params), "drop": a.drop}
        if a.out:
            over["out"] = a.out
        return train.train(params.load("rfnet", train.TrainConfig, a.params, over), resume=a.resume)
    over.update(_given(a, "checkpoint", "out"))
    return evaluate.run(params.load("evaluate", evaluate.EvalConfig, a.params, over))


def _model_params(path: str) -> dict:
    import yaml

    p = Path(path)
    data = (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}
    return dict((data.get("rfnet") or {}).get("model") or {})


def _prelabel(a):
    from rfnet import predict

    return predict.run(params.load("prelabel", predict.PrelabelConfig, a.params, _given(a, "batch_id", "checkpoint")))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rf1m", description="RF1M: generate, label, release and learn from "
                                "advertising images judged by people.")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--summary", metavar="FILE", help="also write the command's JSON result to FILE (DVC metrics)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("products", help="read a product folder or make the synthetic catalog",
                       description="Read product images (RGBA, or a plain background that is removed) "
                       "or make the synthetic catalog; refused files go to quarantine.jsonl.")
    s.add_argument("--source", help="'synthetic' or a folder of product images (overrides params)")
    s.add_argument("--metadata", help="CSV/JSON with file (path, name or stem, any case; or a product_id column), "
                   "title, category; matching nothing at all is an error")
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

    rg = sub.add_parser("regenerate", help="rebuild one sample from its recipe; print the largest pixel difference",
                        description="Find KEY in the catalog, rebuild its image from recipe.json alone (product by "
                        "id, checked against the recorded sha256; models at the recorded revision; layout, seed, "
                        "sampler) and print the largest pixel difference from the stored image. Exits 2 when the "
                        "key is unknown or the product or a model changed.")
    rg.add_argument("key", help="sample key, e.g. demo-p0001-kitchen-s123")
    rg.add_argument("--out", help="write the regenerated image to this PNG file")
    rg.add_argument("--data", default="data", help="data root holding shards/ and products/ (default: %(default)s)")
    rg.add_argument("--products", help="products folder (default: <data>/products)")
    rg.set_defaults(fn=_regenerate)

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
    sn.set_defaults(fn=_catalog_snapshot)

    ls = sub.add_parser("labelstudio", help="run the Label Studio server (own venv, loopback only)",
                        description="install: create its venv (.venv-ls); up: install if needed, start it on "
                        "127.0.0.1 and wait for /health; down: stop it; status: is it answering. Credentials "
                        "come from LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_API_KEY (or .env; "
                        "made up and saved to .env when unset).")
    ls.add_argument("action", choices=["install", "up", "down", "status"])
    ls.add_argument("--allow-remote-bind", action="store_true",
                    help="up: let a non-loopback url (e.g. 0.0.0.0) bind every interface; prefer a reverse proxy")
    ls.set_defaults(fn=_labelstudio)

    an = sub.add_parser("annotate", help="push batches to Label Studio, pull labels, consensus").add_subparsers(
        dest="what", required=True, metavar="STEP")
    for name, fn, text in (
        ("push", _annotate_push, "create the batch's project and import its tasks (idempotent by key)"),
        ("gold", _annotate_gold, "write the simulated answer key (gold.parquet) from the panel's rules"),
        ("simulate", _annotate_simulate, "let the simulated annotator panel label the batch (demo/CI only)"),
        ("pull", _annotate_pull, "export new or changed annotations into labels.parquet (incremental)"),
        ("consensus", _annotate_consensus, "majority + Dawid-Skene labels, kappa, alpha, gold accuracy"),
    ):
        sp = an.add_parser(name, help=text, description=text)
        sp.add_argument("--batch-id", help="batch id (overrides params)")
        if name == "push":
            sp.add_argument("--predictions", help="RFNet predictions Parquet to attach as pre-labels")
        sp.set_defaults(fn=fn)
    ml = an.add_parser("ml-backend", help="serve pre-labels to Label Studio (ML-backend protocol)",
                       description="Serve predictions over Label Studio's ML-backend protocol "
                       "(/health, /setup, /predict, /webhook).")
    ml.add_argument("--predictor", default="null",
                    help="null, predictions:<file.parquet>, or rfnet:<checkpoint dir> (e.g. rfnet:models/rfnet/best)")
    ml.add_argument("--shards", default="data/shards", help="where rfnet: finds the tasks' samples")
    ml.add_argument("--host", default="127.0.0.1")
    ml.add_argument("--port", type=int, default=9090)
    ml.add_argument("--connect", metavar="BATCH_ID", help="also attach it to this batch's project")
    ml.set_defaults(fn=_annotate_ml_backend)

    rel = sub.add_parser("release", help="compile, verify, diff and list immutable RF1M releases",
                         description="compile VERSION: consensus labels + shards -> releases/VERSION (refused if "
                         "it exists; a product keeps its split from every earlier release; undecided samples are "
                         "left out and counted, per params release.policy); verify VERSION: recompute every sha256 of the manifest; diff OLD NEW: samples "
                         "added, removed, relabelled; list: the releases.")
    rel.add_argument("action", choices=["compile", "verify", "diff", "list"])
    rel.add_argument("version", nargs="?", help="release version, e.g. v0.1 (compile: default from params)")
    rel.add_argument("other", nargs="?", help="diff: the newer version")
    rel.add_argument("--parent", help="compile: the release this one follows")
    rel.set_defaults(fn=_release)

    rf = sub.add_parser("rfnet", help="train and evaluate RFNet, the usability judge",
                        description="train: on a release (params rfnet:), checkpoints in models/rfnet/{last,best}; "
                        "--resume continues from last. eval: the paper's metrics on a split (params evaluate:).")
    rf.add_argument("action", choices=["train", "eval"])
    rf.add_argument("--release", help="release version (overrides params)")
    rf.add_argument("--resume", action="store_true", help="train: continue from <out>/last")
    rf.add_argument("--drop", nargs="+", choices=["product", "depth", "saliency", "caption"],
                    help="train: an ablation without these inputs (needs --out)")
    rf.add_argument("--out", help="train: checkpoint folder; eval: metrics folder")
    rf.add_argument("--checkpoint", help="eval: checkpoint folder (default from params)")
    rf.set_defaults(fn=_rfnet)

    pl = sub.add_parser("prelabel", help="RFNet predictions for a batch (attached by annotate push)",
                        description="Run RFNet over a batch's shards and write <out>/<batch>.parquet "
                        "(key, model_version, p_<class>).")
    pl.add_argument("--batch-id", help="batch id (overrides params)")
    pl.add_argument("--checkpoint", help="checkpoint folder (default from params)")
    pl.set_defaults(fn=_prelabel)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.fn(args)
    except (ValueError, OSError, KeyError, RuntimeError, duckdb.Error) as e:  # a user can fix; else a bug
        print(f"rf1m: error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=1, ensure_ascii=False, default=str))
        if args.summary:
            write_json_atomic(Path(args.summary), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
