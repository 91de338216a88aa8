import subprocess
import sys

import pytest

from pipelines.cli import build_parser, main


def rf1m(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("cmd", [[], ["products"], ["models", "tiny"], ["generate"], ["catalog", "query"],
                                 ["catalog", "snapshot"], ["labelstudio"], ["annotate", "push"], ["annotate", "gold"],
                                 ["annotate", "simulate"], ["annotate", "pull"], ["annotate", "consensus"],
                                 ["annotate", "ml-backend"], ["release"], ["rfnet"], ["prelabel"]])
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
    (tmp_path / "params.yaml").write_text(f"generate:\n  products: {tmp_path / 'none'}\n")
    r = rf1m("--params", str(tmp_path / "params.yaml"), "generate")
    assert r.returncode == 2 and r.stderr.startswith("rf1m: error:") and "Traceback" not in r.stderr
