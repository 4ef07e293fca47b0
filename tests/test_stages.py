"""Each fact written once: every stage notebook runs with exactly the variables its stage gives it (params.yaml's section
keys and dvc.yaml's paths), params.yaml holds no paths, and the filter chain's order exists only in dvc.yaml's wiring."""
import ast, builtins, re
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import ROOT
from medgen.stages import chain_stages, dvc_stage_commands, parse_stage_command, profiled_params, stage_values

COMMANDS = dvc_stage_commands(ROOT)
NOTEBOOK_GLOBALS = {"display", "get_ipython", "In", "Out"}  # what IPython provides


def _names(nb_path: Path) -> tuple[set, set]:
    "(names read, names bound) anywhere in the notebook's code cells, the parameters cell excluded."
    reads, binds = set(), set()
    for cell in nbformat.read(nb_path, as_version=4).cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []): continue
        src = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Name): (reads if isinstance(node.ctx, ast.Load) else binds).add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)): binds.add(node.name)
            elif isinstance(node, ast.arg): binds.add(node.arg)
            elif isinstance(node, ast.alias): binds.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name: binds.add(node.name)
    return reads, binds


@pytest.mark.parametrize("stage", list(COMMANDS))
def test_notebook_reads_exactly_its_stage_values(stage):
    a = parse_stage_command(COMMANDS[stage])
    values = stage_values(a.params, a.paths, profiled_params(ROOT))
    reads, binds = _names(ROOT / "nbs" / "pipeline" / f"{a.notebook}.ipynb")
    unread = sorted(set(values) - {"seed", "profile"} - reads)
    assert not unread, f"{stage}: params/paths given but never read by the notebook (a dead knob or path): {unread}"
    unknown = sorted(reads - binds - set(values) - {"out_dir"} - set(dir(builtins)) - NOTEBOOK_GLOBALS)
    assert not unknown, f"{stage}: the notebook reads names its stage does not give it: {unknown}"


@pytest.mark.parametrize("stage", list(COMMANDS))
def test_parameters_cell_holds_no_copied_defaults(stage):
    a = parse_stage_command(COMMANDS[stage])
    nb = nbformat.read(ROOT / "nbs" / "pipeline" / f"{a.notebook}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{a.notebook}: needs exactly one cell tagged `parameters`"
    assigned = {t.id for node in ast.walk(ast.parse(cells[0].source)) if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert assigned == {"out_dir"} and "load_stage(" in cells[0].source
    assert re.search(r'out_dir = "scratch/', cells[0].source), "by hand, outputs go to scratch/"


def _leaves(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items(): yield from _leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for v in node: yield from _leaves(v, path)
    else: yield path, node


def test_params_hold_no_paths():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    pathlike = [(k, v) for k, v in _leaves(params) if isinstance(v, str)
                and re.search(r"(^|/)(artifacts|resources|data|reports|paper_figures)(/|$)|\.(parquet|csv|json|png|ipynb)$", v)]
    assert not pathlike, f"paths belong in dvc.yaml: {pathlike}"
    assert "filter_name" not in {k.split(".")[-1] for k, _ in _leaves(params)}


def test_filter_chain_is_written_once():
    "The chain's order comes from dvc.yaml's wiring; no other project file lists the filters in order."
    chain = chain_stages(COMMANDS)
    filters = [s for s in chain if s.startswith("filter_")]
    assert chain[:4] == ["ingest", "select", "segment", "caption"] and chain[-1] == "dataset" and len(filters) == 7
    order = re.compile(r"\b" + r"\W+".join(f.split("_", 1)[1] for f in filters) + r"\b")  # all seven, in chain order
    hits = [p for p in [*ROOT.glob("params*.yaml"), *(ROOT / "params").glob("*.yaml"), *(ROOT / "medgen").rglob("*.py"),
                        *(ROOT / "nbs" / "pipeline").glob("*.ipynb")] if order.search(p.read_text())]
    assert not hits, f"the filter order is written again in {hits}"


def test_profiles_exist_and_merge():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["common"]["profile"] == "embedded" and (ROOT / "params" / "embedded.yaml").exists()
    paper = yaml.safe_load((ROOT / "params" / "paper.yaml").read_text())
    unknown = sorted(set(paper) - set(params))
    assert not unknown, f"params/paper.yaml overrides sections params.yaml does not have: {unknown}"


def test_every_recipe_step_is_a_valid_training_config_in_every_profile():
    "Each profile's recipe steps make a TrainConfig (no unknown key) whose batch splits over the profile's processes."
    from medgen.core import deep_merge, load_params
    from medgen.generate.train import TrainConfig, batch_plan, launch_processes
    base = load_params(ROOT / "params.yaml")
    for profile in ("embedded", "paper"):
        p = deep_merge(base, load_params(ROOT / "params" / f"{profile}.yaml") or {})
        common = p["train"]["common"]
        processes = launch_processes(ROOT / "resources" / "accelerate" / f"{common['launch']}.yaml" if common["launch"] else None)
        for name, variant in p["train"]["variants"].items():
            for step in variant["recipe"]:
                config = TrainConfig.from_params({**common["defaults"], **step.get("config", {})})
                plan = batch_plan(config, processes)
                assert plan["global_batch"] >= processes, (profile, name, step["name"], plan)
                if profile == "paper": assert config.gradient_checkpointing and config.seed == 1024, (name, step["name"])
