import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import cli, params
from pipelines.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def rf1m(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("cmd", [[], ["products"], ["models", "tiny"], ["generate"], ["catalog", "query"],
                                 ["catalog", "snapshot"], ["labelstudio"], ["annotate", "push"], ["annotate", "gold"],
                                 ["annotate", "simulate"], ["annotate", "pull"], ["annotate", "consensus"],
                                 ["annotate", "ml-backend"], ["annotate", "acceptance"], ["release"], ["release", "compile"],
                                 ["release", "verify"], ["release", "promote"], ["rfnet"], ["rfnet", "train"],
                                 ["rfnet", "eval"], ["prelabel"], ["regenerate"], ["cyclic"], ["rfft"], ["rfft-eval"]])
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: rf1m" in capsys.readouterr().out


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("generate:\n  stepz: 3\n")
    cases = [
        (["--params", str(tmp_path / "p.yaml"), "generate"], "unknown key(s) in params [generate]: stepz"),
        (["products", "--source", str(tmp_path / "nope")], "is not a folder"),
        (["catalog", "query", "SELEC 1", "--data", str(tmp_path)], "syntax error"),
        (["--params", str(tmp_path / "p2.yaml"), "generate", "--batch-id", "a.b"], "batch_id"),
        (["--params", str(tmp_path / "p2.yaml"), "release", "verify", "v9"], "no release v9"),
        (["--params", str(tmp_path / "p2.yaml"), "release", "diff", "v1"], "needs two versions"),
        (["--params", str(tmp_path / "p2.yaml"), "rfnet", "train", "--drop", "caption"], "--out"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("rf1m: error:") and expected in err and err.count("\n") == 1


def test_generate_without_products_is_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text(f"data: {tmp_path / 'none'}\n")
    r = rf1m("--params", str(tmp_path / "params.yaml"), "generate")
    assert r.returncode == 2 and r.stderr.startswith("rf1m: error:") and "Traceback" not in r.stderr


def config_of(argv):
    return cli.stage_config(build_parser().parse_args(argv))


def test_overrides_reach_the_config_over_params_and_derived_paths(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"data": str(tmp_path / "d"), "batch_id": "b1",
                                 "generate": {"steps": 5, "layout": {"size": 96, "dilate": 3}},
                                 "rfnet": {"model": {"dim": 32}}}))
    gen = config_of(["--params", str(p), "generate", "--steps", "3", "--layout.size", "64", "--no-durable"])
    assert (gen.steps, gen.layout.size, gen.layout.dilate, gen.durable) == (3, 64, 3, False)
    assert (gen.batch_id, gen.out, gen.products) == ("b1", str(tmp_path / "d/shards"), str(tmp_path / "d/products"))
    assert config_of(["--params", str(p), "generate", "--batch-id", "b2"]).batch_id == "b2"
    rel = config_of(["--params", str(p), "release", "compile", "v0.3", "--policy.min-annotators", "2",
                     "--splits", "0.5", "0.25", "0.25"])
    assert (rel.version, rel.batches, rel.policy.min_annotators, rel.splits) == ("v0.3", ("b1",), 2, (0.5, 0.25, 0.25))
    train = config_of(["--params", str(p), "rfnet", "train", "--drop", "caption", "--out", "x"])
    assert (train.model.drop, train.model.dim, train.out) == (("caption",), 32, "x")


def test_a_bad_value_exits_2(capsys):
    for argv, expected in ((["generate", "--steps", "many"], "invalid int value: 'many'"),
                           (["rfnet", "train", "--drop", "colour"], "invalid choice: 'colour'")):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(argv)
        assert e.value.code == 2 and expected in capsys.readouterr().err


def test_one_batch_id_and_one_data_root_reach_every_stage(tmp_path):
    """params.yaml used to repeat batch_id six times and data/shards five times; dvc.yaml used one of
    the copies, so a stage could write one batch while DVC tracked another."""
    repo = yaml.safe_load((REPO / "params.yaml").read_text())
    for section in params.DERIVED:
        assert not set(repo.get(section) or {}) & {"batch_id", "shards", "labels", "media", "files_root"}, section
    moved = tmp_path / "params.yaml"
    moved.write_text(yaml.safe_dump({**repo, "batch_id": "b7", "data": str(tmp_path / "d7")}))
    seen = set()
    for stage in cli.STAGES:
        cfg = params.load(stage.section, cli._resolve(stage.config), moved)
        values = vars(cfg)
        if "batch_id" in values:
            assert values["batch_id"] == "b7", stage.words
            seen.add(stage.section)
        for name in ("shards", "labels", "media", "files_root", "products"):
            if isinstance(values.get(name), str):
                assert values[name].startswith(str(tmp_path / "d7")), (stage.words, name)
    assert seen == {"generate", "annotate_push", "panel", "annotate_pull", "consensus", "prelabel"}
    assert params.load("release", cli._resolve("pipelines.release:ReleaseConfig"), moved).batches == ("b7",)
    # RFNet trains and is evaluated on the release the release stage compiles, named once
    moved.write_text(yaml.safe_dump({**repo, "release": {**repo["release"], "version": "v9", "out": "rel9"}}))
    for section, cls in (("rfnet", "rfnet.train:TrainConfig"), ("evaluate", "rfnet.evaluate:EvalConfig")):
        cfg = params.load(section, cli._resolve(cls), moved)
        assert (cfg.release, cfg.releases) == ("v9", "rel9"), section


def test_generate_grid_writes_one_row_per_prompt_preset(tmp_path, tiny_model, capsys):
    """`rf1m generate --grid` is the look a person takes at a generator: 8 rows (one per preset),
    6 columns, each row from its own prompt, and no shards written."""
    import numpy as np
    from PIL import Image

    from pipelines.scenes import PROMPTS

    out = tmp_path / "sheet.png"
    assert main(["generate", "--grid", str(out), "--base-model", str(tiny_model), "--steps", "2",
                 "--layout.size", "64", "--out", str(tmp_path / "shards")]) == 0
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[0] == 64 * len(PROMPTS) and sheet.shape[1] == 72 + 6 * 64
    rows = [sheet[64 * i:64 * (i + 1), 72:] for i in range(len(PROMPTS))]
    assert all(r.std() > 5 for r in rows)  # images, not blank strips
    assert not (tmp_path / "shards").exists()


def test_generate_grid_uses_the_given_controlnet(tmp_path, tiny_model):
    """`--grid --controlnet-model X` used to ignore X (and sample at the pipeline's scale 1.0, not
    generate's): a fine-tuned ControlNet could not be looked at."""
    import numpy as np
    import torch
    from diffusers import ControlNetModel
    from PIL import Image

    cn = ControlNetModel.from_pretrained(tiny_model / "controlnet")
    with torch.no_grad():  # a fresh ControlNet's output convolutions are zero (a no-op): wake them up
        for block in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
    cn.save_pretrained(tmp_path / "cn")
    sheets = {}
    for name, extra in (("own", []), ("given", ["--controlnet-model", str(tmp_path / "cn")])):
        out = tmp_path / f"{name}.png"
        assert main(["generate", "--grid", str(out), "--base-model", str(tiny_model), "--steps", "2",
                     "--layout.size", "64", *extra]) == 0
        sheets[name] = np.asarray(Image.open(out)).astype(int)
    assert np.abs(sheets["own"] - sheets["given"]).mean() > 1
