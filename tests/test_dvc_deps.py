"""Every project module a DVC stage's command can import is one of the stage's declared deps.

DVC re-runs a stage only when a declared dependency changes; a module the command imports but the
stage does not list (issue 9: generate without models.py, release without schema.py) lets stale
outputs survive a code change. The modules are found by reading the code, not by running it: the
command is parsed by the CLI's own parser, and every import statement reachable from its handler
(function-level imports included, since the stages import lazily) is followed through the project's
packages. Package `__init__` files count, because importing a submodule runs them.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rf1m", "annotation", "rfnet", "pipelines", "dashboards")
# The CLI's own plumbing runs for every command; params changes are tracked by each stage's `params:`.
PLUMBING = {"pipelines/cli.py", "pipelines/params.py"}


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    return None


def imported(tree: ast.AST) -> set[str]:
    """Project modules named by the import statements anywhere in `tree` (and their packages)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    out = set()
    for n in names:
        parts = n.split(".")
        if parts[0] in PACKAGES:
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]))}
    return out


def closure(roots: set[str]) -> set[str]:
    """Repository files of `roots` and of everything they import, transitively; empty files add nothing."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += imported(ast.parse(module_file(name).read_text()))
    files = {module_file(n) for n in seen}
    return {str(f.relative_to(REPO)) for f in files if f.read_text().strip()}


def command_modules(cmd: str) -> set[str]:
    """Project files an `rf1m ...` command can import: its handler's imports, followed transitively.
    A stage names its config and run function as "module:name" targets or as CLI adapters, whose
    body says what they import."""
    from pipelines.cli import build_parser

    argv = shlex.split(cmd)
    assert argv[0] == "rf1m", f"not an rf1m command: {cmd}"
    ns = build_parser().parse_args(argv[1:])
    stage = getattr(ns, "stage", None)
    roots: set[str] = set()
    for target in (ns.fn, *((stage.config, stage.run) if stage else ())):
        if isinstance(target, str):
            roots.add(target.partition(":")[0])
        else:
            roots |= imported(ast.parse(textwrap.dedent(inspect.getsource(target))))
    return closure(roots) - PLUMBING


def substitute(text: str, params: dict) -> str:
    """dvc.yaml's `${a.b}` templating, from params.yaml."""
    def value(path: str):
        v = params
        for k in path.split("."):
            v = v[k]
        return str(v)

    return re.sub(r"\$\{([^}]+)\}", lambda m: value(m.group(1).strip()), text)


def missing_deps(dvc_yaml: Path, params_yaml: Path = REPO / "params.yaml") -> dict[str, list[str]]:
    """Per stage: project files its command imports that no declared dependency covers."""
    params = yaml.safe_load(params_yaml.read_text())
    stages = yaml.safe_load(substitute(dvc_yaml.read_text(), params))["stages"]
    report = {}
    for name, stage in stages.items():
        deps = [str(d).rstrip("/") for d in stage.get("deps", [])]
        needed = command_modules(stage["cmd"])
        lost = sorted(f for f in needed if not any(f == d or f.startswith(d + "/") for d in deps))
        if lost:
            report[name] = lost
    return report


def test_every_stage_declares_the_modules_its_command_imports():
    assert missing_deps(REPO / "dvc.yaml") == {}


def test_a_removed_dependency_is_reported(tmp_path):
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for stage, dep in (("generate", "pipelines/models.py"), ("release", "rf1m/schema.py")):
        assert dep in dvc["stages"][stage]["deps"], f"{stage} should declare {dep}"
        dvc["stages"][stage]["deps"].remove(dep)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    report = missing_deps(tmp_path / "dvc.yaml")
    assert report == {"generate": ["pipelines/models.py"], "release": ["rf1m/schema.py"]}


def test_lazy_imports_in_a_handler_are_followed():
    """A stage imports its modules inside the handler; reading only module-level imports would find none."""
    needed = command_modules("rf1m catalog snapshot --out x.duckdb")
    assert "rf1m/catalog.py" in needed and "pipelines/generate.py" not in needed
