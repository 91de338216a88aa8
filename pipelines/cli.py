"""The `rf1m` command: a table of stages, plus the commands that are not stages.

A stage is a name, its params.yaml section, its config dataclass and its run function (DESIGN.md:
"a stage is a function with a typed config"). Its `--field` overrides are derived from the config's
fields, so a new knob is settable from the command line without touching this file. A stage's
config is imported only when that stage is chosen: `rf1m catalog query` must not pay for torch.

Errors a user can fix (bad params, missing input, bad SQL) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pipelines import params
from rf1m.atomic import write_json
from rf1m.paths import Layout


@dataclass(frozen=True)
class Stage:
    words: tuple[str, ...]  # the command: ("annotate", "push")
    section: str  # its params.yaml section
    config: str  # "module:Class", imported when the stage is chosen
    run: str | Callable  # "module:function" called with the config, or a CLI adapter (cfg, args)
    help: str
    description: str = ""
    positional: str | None = None  # a field also accepted as an optional positional (release compile VERSION)
    extra: Callable[[argparse.ArgumentParser], None] | None = None  # flags that are not config fields


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _data(a) -> Layout:
    return Layout(a.data or params.data_root(a.params))


# ---------------------------------------------------------------- stage adapters (cfg, args)

def _models_tiny(cfg, a):
    from pipelines.models import build_tiny, folder_hash

    path = build_tiny(cfg.out, seed=cfg.seed, size=cfg.size)
    return {"model": str(path), "revision": folder_hash(path)}


def _generate(cfg, a):
    if a.grid:  # a look, as a person would: one row per prompt preset, from the model the stage would load
        from pipelines.sheet import contact_sheet

        path = contact_sheet(cfg.base_model, a.grid, size=cfg.layout.size, steps=cfg.steps, guidance=cfg.guidance,
                             seed=cfg.seed, device=cfg.device, controlnet_model=cfg.controlnet_model,
                             controlnet_scale=cfg.controlnet_scale)
        return {"contact_sheet": str(path)}
    from pipelines import generate

    return generate.run(cfg)


def _generate_flags(p):
    p.add_argument("--grid", metavar="PNG", help="write a contact sheet (a row of samples per prompt preset) "
                   "from the configured model instead of generating the batch")


def _annotate_push(cfg, a):
    from annotation import push

    return push.run(cfg, _client(a))


def _annotate_gold(cfg, a):
    from annotation import panel

    return panel.write_gold(cfg, params.data_root(a.params))


def _annotate_simulate(cfg, a):
    from annotation import panel, push

    client = _client(a)
    parts = [panel.run(cfg, p["id"], client) for p in push.require_projects(client, cfg.batch_id)]
    # every annotation is in Label Studio (pull reads them from there), so "posted" is left out
    return {"projects": [r["project_id"] for r in parts], "tasks": sum(r["tasks"] for r in parts),
            "annotations_posted": sum(r["annotations_posted"] for r in parts), "annotators": parts[0]["annotators"]}


def _annotate_pull(cfg, a):
    from annotation import pull

    return pull.run(cfg, _client(a))


def _rfnet_train(cfg, a):
    from rfnet import train

    if getattr(a, "model.drop") and not a.out:
        raise ValueError("--drop trains an ablation: give it its own --out folder")
    return train.train(cfg, resume=a.resume)


def _train_flags(p):
    p.add_argument("--resume", action="store_true", help="continue from <out>/last")
    p.add_argument("--drop", dest="model.drop", nargs="+", choices=["product", "depth", "saliency", "caption"],
                   help="an ablation without these inputs (needs --out)")


STAGES = (
    Stage(("products",), "products", "pipelines.products:ProductsConfig", "pipelines.products:run",
          "read a product folder or make the synthetic catalog",
          "Read product images (RGBA, or a plain background that is removed) or make the synthetic catalog; "
          "refused files go to quarantine.jsonl. --source: 'synthetic' or a folder; --metadata: CSV/JSON with "
          "file (path, name or stem, any case; or a product_id column), title, category."),
    Stage(("models", "tiny"), "models", "pipelines.models:TinyConfig", _models_tiny,
          "build the tiny offline SD + ControlNet inpainting pipeline",
          "Build a tiny StableDiffusionControlNetInpaintPipeline from configs (random weights, fixed seed) "
          "and save it in diffusers format."),
    Stage(("models", "generator"), "generator", "pipelines.train_generator:GeneratorConfig",
          "pipelines.train_generator:run",
          "train the offline scene generator (VAE + text-conditioned inpainting UNet) on rendered scenes",
          "Render the procedural scene corpus (pipelines/scenes.py), train the VAE and the 9-channel inpainting "
          "UNet with the project's tiny CLIP text encoder, add a zero-initialised ControlNet (an exact no-op), "
          "and save a diffusers folder that `generate` loads as base_model. Deterministic for its seed; an "
          "existing folder built from the same config is reused."),
    Stage(("models", "depth"), "depth_net", "pipelines.train_depth:DepthTrainConfig", "pipelines.train_depth:run",
          "train the offline depth network on the renderer's true depth",
          "Render scenes with products placed as generate places them, train a tiny U-Net to predict their "
          "true depth, and save config.json + model.safetensors; `generate.aux.depth: depthnet:<folder>` "
          "loads it. Deterministic for its seed; an existing folder built from the same config is reused."),
    Stage(("generate",), "generate", "pipelines.generate:GenerateConfig", _generate,
          "generate candidate ads into WebDataset shards (--grid: a contact sheet instead)",
          "Products x prompts x seeds -> shards under <out>/<batch_id>. Resumable: finished shards are "
          "skipped, stale ones rebuilt.", extra=_generate_flags),
    Stage(("annotate", "push"), "annotate_push", "annotation.push:PushConfig", _annotate_push,
          "create the batch's project and import its tasks (idempotent by key); --predictions attaches "
          "RFNet's pre-labels"),
    Stage(("annotate", "gold"), "panel", "annotation.panel:PanelConfig", _annotate_gold,
          "write the simulated answer key (gold.parquet) from the panel's rules"),
    Stage(("annotate", "simulate"), "panel", "annotation.panel:PanelConfig", _annotate_simulate,
          "let the simulated annotator panel label the batch (demo/CI only)"),
    Stage(("annotate", "pull"), "annotate_pull", "annotation.pull:PullConfig", _annotate_pull,
          "export new or changed annotations into labels.parquet (incremental)"),
    Stage(("annotate", "consensus"), "consensus", "annotation.consensus:ConsensusConfig", "annotation.consensus:run",
          "majority + Dawid-Skene labels, kappa, alpha, gold accuracy"),
    Stage(("release", "compile"), "release", "pipelines.release:ReleaseConfig", "pipelines.release:compile_release",
          "consensus labels + shards -> releases/VERSION",
          "Refused if VERSION exists; a product keeps its split from every earlier release; undecided samples "
          "are left out and counted, per params release.policy; promoted when it is the newest.",
          positional="version"),
    Stage(("rfnet", "train"), "rfnet", "rfnet.train:TrainConfig", _rfnet_train,
          "train RFNet on a release; checkpoints in <out>/{last,best}", extra=_train_flags),
    Stage(("rfnet", "eval"), "evaluate", "rfnet.evaluate:EvalConfig", "rfnet.evaluate:run",
          "the paper's metrics on a split, at the checkpoint's validated threshold"),
    Stage(("prelabel",), "prelabel", "pipelines.prelabel:PrelabelConfig", "pipelines.prelabel:run",
          "RFNet predictions for a batch (attached by annotate push)",
          "Run RFNet over a batch's shards and write <out>/<batch>.parquet (key, model_version, p_<class>). "
          "One job per shard on the engine (--engine local with --workers processes, or --engine ray with "
          "--ray.actors actors); each worker loads the checkpoint once. The table is the same, row for row, "
          "on every engine."),
    Stage(("cyclic",), "cyclic", "pipelines.cyclic:CyclicConfig", "pipelines.cyclic:run",
          "generate a batch by resampling each product x prompt until RFNet accepts it (up to K tries)",
          "Per product x prompt: generate, compute aux maps, let RFNet judge at its validated threshold; "
          "resample with the next seed up to max_attempts. Every attempt goes to <data>/attempts/<batch>.parquet, "
          "accepted samples to shards as a normal batch. Resumable."),
    Stage(("rfft",), "rfft", "pipelines.rfft:RFFTConfig", "pipelines.rfft:run",
          "fine-tune the ControlNet with RFNet's gradient (F_AC + beta * L_CC); keep the best by oracle",
          "Only the ControlNet trains. Early stopping and the kept <out>/controlnet are chosen on held-out "
          "oracle-labelled products; a re-run resumes from <out>/last. Use the result with "
          "generate.controlnet_model: <out>/controlnet."),
    Stage(("rfft-eval",), "rfft_eval", "pipelines.rfft_eval:RFFTEvalConfig", "pipelines.rfft_eval:run",
          "the base generator and the rfft stage's ControlNet on held-out products, judged by the oracle and RFNet",
          "Both arms sample the same test products x prompts x seeds (paired). Writes <out>: per arm the oracle's "
          "and RFNet's available rates with Wilson 95% intervals, their agreement (its fall = reward hacking), "
          "fixed/broken vs the base with a product-bootstrap interval, diversity within and between prompts, "
          "and cyclic's expected attempts 1/p; `rounds`: the rfft stage's validation history."),
)


def stage_config(a):
    """The chosen stage's config: params.yaml (derived paths, its section), then the flags given."""
    cls = _resolve(a.stage.config)
    return params.load(a.stage.section, cls, a.params, params.given(a, cls))


def _run_stage(a):
    cfg = stage_config(a)
    return a.stage.run(cfg, a) if callable(a.stage.run) else _resolve(a.stage.run)(cfg)


class _Parser(argparse.ArgumentParser):
    """Adds a stage's field flags only when that stage is chosen (or its help is asked for)."""

    def __init__(self, *args, stage: Stage | None = None, **kw):
        super().__init__(*args, **kw)
        self.stage, self._filled = stage, stage is None

    def _fill(self):
        if not self._filled:
            self._filled = True
            st = self.stage
            if st.extra:
                st.extra(self)
            if st.positional:
                self.add_argument(st.positional, nargs="?", default=None, help=f"overrides params {st.section}.{st.positional}")
            skip = {st.positional} | {a.dest for a in self._actions}
            params.add_field_flags(self, _resolve(st.config), st.section, skip)

    def parse_known_args(self, args=None, namespace=None):
        self._fill()
        return super().parse_known_args(args, namespace)

    def format_help(self):
        self._fill()
        return super().format_help()


# ---------------------------------------------------------------- commands that are not stages

def _regenerate(a):
    from pipelines import regenerate

    return regenerate.run(regenerate.RegenerateConfig(a.key, str(_data(a).base), a.products, a.out))


def _catalog_query(a):
    from rf1m.catalog import Catalog

    table = Catalog(_data(a).base).query(a.sql)
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

    cat = Catalog(_data(a).base)
    cat.snapshot(a.out or _data(a).catalog)
    return cat.summary()


def _storage(a):
    """Publish a local folder to object storage, or fetch one back (rf1m.storage: atomic per object,
    completion markers last)."""
    from tqdm import tqdm

    from rf1m import storage

    if a.action == "upload":
        files = sum(1 for p in Path(a.src).rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
        with tqdm(total=files, desc=f"upload {a.dst}", unit="file") as bar:
            return {"uploaded": len(storage.upload_tree(a.src, a.dst, bar.update)), "to": a.dst}
    return {"downloaded": len(storage.download_tree(a.src, a.dst)), "to": a.dst}


def _summary(a):
    import os

    from pipelines import summary

    p = params.read(a.params)
    url = os.environ.get("LABEL_STUDIO_URL") or (p.get("labelstudio") or {}).get("url") or "http://127.0.0.1:8080"
    s = summary.collect(_data(a), (p.get("release") or {}).get("out", "releases"),
                        (p.get("evaluate") or {}).get("out", "metrics/rfnet"), url,
                        (p.get("panel") or {}).get("failures", "metrics/failures.json"),
                        {"cyclic": Path((p.get("cyclic") or {}).get("metrics", "metrics/cyclic")) / "cyclic.json",
                         "prelabels": Path((p.get("round2") or {}).get("metrics", "metrics/round2")) / "prelabels.json",
                         "rfft": (p.get("rfft_eval") or {}).get("out", "metrics/rfft/eval.json")})
    if a.json:
        return s
    print(summary.text(s))
    return None


def _ls_config(a):
    import os

    from annotation.server import ServerConfig, load_dotenv

    load_dotenv()
    over = {"url": os.environ["LABEL_STUDIO_URL"]} if os.environ.get("LABEL_STUDIO_URL") else {}
    for flag in ("allow_remote_bind", "allow_loopback_ml_backend"):
        if getattr(a, flag, False):
            over[flag] = True
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


def _annotate_acceptance(a):
    from annotation import acceptance

    at = _data(a)
    return acceptance.report(at.labels(a.batch), at.predictions(a.batch), a.baseline and at.labels(a.baseline))


def _annotate_ml_backend(a):
    from annotation import ml_backend, push

    if a.predictor.startswith("rfnet:"):
        from rfnet.predict import CheckpointPredictor

        predictor = CheckpointPredictor(a.predictor[6:], a.shards or str(_data(a).shards_root))
    else:
        predictor = ml_backend.make_predictor(a.predictor)
    server = ml_backend.serve(predictor, a.host, a.port, background=bool(a.connect))
    url = f"http://{a.host}:{a.port}"
    if a.connect:
        client = _client(a)
        for p in ml_backend.attach(client, [x["id"] for x in push.require_projects(client, a.connect)], url):
            print(f"connected to project {p['project_id']} ({push.project_title(a.connect)}): Label Studio "
                  f"retrieved predictions, {p['predictions']} for {p['tasks']} tasks", file=sys.stderr)
    print(f"ML backend ({predictor.model_version}) on {url}; Ctrl+C stops it", file=sys.stderr)
    try:
        server.serve_forever() if not a.connect else threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return None


def _release(a):
    from pipelines import release as stage
    from rf1m import release

    root = params.load("release", stage.ReleaseConfig, a.params).out
    if a.action in ("verify", "diff", "promote") and not a.version or a.action == "diff" and not a.other:
        raise ValueError(f"release {a.action} needs {'two versions' if a.action == 'diff' else 'a version'}")
    if a.action == "verify":
        return release.verify(a.version, root)
    if a.action == "promote":
        return stage.promote(a.version, root)
    if a.action == "diff":
        d = release.diff(a.version, a.other, root)
        if a.out:  # the whole diff, every key (the printout keeps 20 of each)
            write_json(Path(a.out), d)
        return {**{k: d[k] for k in ("old", "new", "label_deltas")},
                **{k: {"count": len(d[k]), "keys": d[k][:20]} for k in ("added", "removed", "relabelled")}}
    return release.list_releases(root)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rf1m", description="RF1M: generate, label, release and learn from "
                "advertising images judged by people.")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--summary", metavar="FILE", help="also write the command's JSON result to FILE (DVC metrics)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = {
        "models": sub.add_parser("models", help="build local diffusion models"),
        "annotate": sub.add_parser("annotate", help="push batches to Label Studio, pull labels, consensus"),
        "release": sub.add_parser("release", help="compile, verify, promote, diff and list immutable RF1M releases"),
        "rfnet": sub.add_parser("rfnet", help="train and evaluate RFNet, the usability judge"),
    }
    subs = {name: g.add_subparsers(dest="what", required=True, metavar="STEP") for name, g in groups.items()}
    for st in STAGES:
        where = subs[st.words[0]] if len(st.words) > 1 else sub
        sp = where.add_parser(st.words[-1], help=st.help, description=st.description or st.help, stage=st)
        sp.set_defaults(fn=_run_stage, stage=st)

    rg = sub.add_parser("regenerate", help="rebuild one sample from its recipe; print the largest pixel difference",
                        description="Find KEY in the catalog, rebuild its image from recipe.json alone (product by "
                        "id, checked against the recorded sha256; models at the recorded revision; layout, seed, "
                        "sampler) and print the largest pixel difference from the stored image. Exits 2 when the "
                        "key is unknown or the product or a model changed.")
    rg.add_argument("key", help="sample key, e.g. demo-p0001-kitchen-s123")
    rg.add_argument("--out", help="write the regenerated image to this PNG file")
    rg.add_argument("--data", help="data root holding shards/ and products/ (default: params data)")
    rg.add_argument("--products", help="products folder (default: <data>/products)")
    rg.set_defaults(fn=_regenerate)

    c = sub.add_parser("catalog", help="query the catalog (DuckDB over the shard sidecars)")
    csub = c.add_subparsers(dest="what", required=True)
    q = csub.add_parser("query", help="run SQL over the views samples, products, quarantine",
                        description="Run SQL against DuckDB views over the files in the data folder. "
                        "Example: rf1m catalog query \"SELECT product_id, prompt_id, count(*) FROM samples "
                        "GROUP BY ALL\"")
    q.add_argument("sql")
    q.add_argument("--data", help="data root (default: params data)")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.set_defaults(fn=_catalog_query)
    sn = csub.add_parser("snapshot", help="materialise the views into a .duckdb file for read-only readers")
    sn.add_argument("--data", help="data root (default: params data)")
    sn.add_argument("--out", help="snapshot file (default: <data>/catalog.duckdb)")
    sn.set_defaults(fn=_catalog_snapshot)

    sm = sub.add_parser("summary", help="the loop's headline numbers: counts, usable rate, agreement, RFNet AP, URLs",
                        description="Read the files the stages wrote (catalog, agreement.json, metrics.json) and "
                        "print what make demo ends with. Stages that have not run show as 'not yet'.")
    sm.add_argument("--data", help="data root (default: params data)")
    sm.add_argument("--json", action="store_true", help="print JSON instead of text")
    sm.set_defaults(fn=_summary)

    so = sub.add_parser("storage", help="publish a folder to object storage (s3://...) or fetch one back",
                        description="upload LOCAL_FOLDER URL: every file atomically (temporary key, server-side "
                        "copy), stats/manifest files last, temporaries of a killed upload swept. download URL "
                        "LOCAL_FOLDER: the reverse. Credentials from the environment only (AWS_ACCESS_KEY_ID, "
                        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for a non-AWS server).")
    so.add_argument("action", choices=["upload", "download"])
    so.add_argument("src")
    so.add_argument("dst")
    so.set_defaults(fn=_storage)

    ls = sub.add_parser("labelstudio", help="run the Label Studio server (own venv, loopback only)",
                        description="install: create its venv (.venv-ls); up: install if needed, start it on "
                        "127.0.0.1 and wait for /health; down: stop it; status: is it answering. Credentials "
                        "come from LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD / LABEL_STUDIO_API_KEY (or .env; "
                        "made up and saved to .env when unset).")
    ls.add_argument("action", choices=["install", "up", "down", "status"])
    ls.add_argument("--allow-remote-bind", action="store_true",
                    help="up: let a non-loopback url (e.g. 0.0.0.0) bind every interface; prefer a reverse proxy")
    ls.add_argument("--allow-loopback-ml-backend", action="store_true",
                    help="up: turn off Label Studio's SSRF protection and local-IP block so that an ML backend on "
                    "127.0.0.1 can be called (single-user machines only; README)")
    ls.set_defaults(fn=_labelstudio)

    ml = subs["annotate"].add_parser("ml-backend", help="serve pre-labels to Label Studio (ML-backend protocol)",
                       description="Serve predictions over Label Studio's ML-backend protocol "
                       "(/health, /setup, /predict, /webhook).")
    ml.add_argument("--predictor", default="null",
                    help="null, predictions:<file.parquet>, or rfnet:<checkpoint dir> (e.g. rfnet:models/rfnet/best)")
    ml.add_argument("--shards", help="where rfnet: finds the tasks' samples (default: <data>/shards)")
    ml.add_argument("--data", help="data root (default: params data)")
    ml.add_argument("--host", default="127.0.0.1")
    ml.add_argument("--port", type=int, default=9090)
    ml.add_argument("--connect", metavar="BATCH_ID", help="also attach it to every project of this batch and have "
                    "Label Studio retrieve its predictions for their tasks (needs up --allow-loopback-ml-backend "
                    "for a backend on 127.0.0.1)")
    ml.set_defaults(fn=_annotate_ml_backend)

    ac = subs["annotate"].add_parser("acceptance", help="how often annotators accepted RFNet's pre-labels "
                                     "unchanged, and the lead time that saved (from labels.parquet)",
                                     description="Read BATCH's labels.parquet (pulled from Label Studio) and "
                                     "<data>/predictions/BATCH.parquet: the share of pre-labelled judgements "
                                     "accepted unchanged and their mean lead time, against --baseline, a batch "
                                     "judged without pre-labels.")
    ac.add_argument("batch", help="the batch pushed with pre-labels")
    ac.add_argument("--baseline", metavar="BATCH", help="a batch labelled without pre-labels (e.g. round 1's)")
    ac.add_argument("--data", help="data root (default: params data)")
    ac.set_defaults(fn=_annotate_acceptance)

    for action, text in (("verify", "recompute every sha256 of VERSION's manifest"),
                         ("promote", "verify VERSION and make it what load_dataset(\"rf1m\") loads (rewrites "
                          "rf1m/README.md beside the releases folder)"),
                         ("diff", "samples added, removed, relabelled from VERSION to OTHER"),
                         ("list", "the releases")):
        rp = subs["release"].add_parser(action, help=text, description=text)
        if action != "list":
            rp.add_argument("version", nargs="?", help="release version, e.g. v0.1")
        if action == "diff":
            rp.add_argument("other", nargs="?", help="the newer version")
            rp.add_argument("--out", metavar="FILE", help="also write the whole diff (every key) as JSON")
        rp.set_defaults(fn=_release, action=action, version=None, other=None, out=None)
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
            write_json(Path(args.summary), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
