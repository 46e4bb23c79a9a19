"""Example workflows: valid JSON, UI and API twins describe the same graph, generated files are
current, and (with COMFYUI_PATH) every node and widget value is valid in real ComfyUI."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from markers import COMFYUI_PATH, requires_comfyui

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKFLOWS = sorted(p for p in (ROOT / "workflows").glob("*.json") if not p.name.endswith(".api.json"))
NAMES = [p.stem for p in WORKFLOWS]


def load(name: str) -> tuple[dict, dict]:
    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    api = json.loads((ROOT / "workflows" / f"{name}.api.json").read_text())
    return ui, api


def test_there_are_workflows_with_and_without_compile():
    assert {"flux1-dev-nvfp4-compile", "flux1-dev-nvfp4", "flux1-dev-nvfp4-lora"} <= set(NAMES)


def test_files_are_what_the_generator_writes(tmp_path):
    before = {p.name: p.read_text() for p in (ROOT / "workflows").glob("*.json")}
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_workflows.py")], check=True, capture_output=True)
    after = {p.name: p.read_text() for p in (ROOT / "workflows").glob("*.json")}
    assert before == after, "workflows/ is stale: run tools/make_workflows.py"


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_twins_describe_the_same_graph(name):
    ui, api = load(name)
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert set(nodes) == set(api)
    links = {link[0]: link for link in ui["links"]}
    for node_id, node in nodes.items():
        twin = api[node_id]
        assert twin["class_type"] == node["type"]
        linked = {i["name"]: links[i["link"]] for i in node["inputs"] if i.get("link") is not None}
        api_links = {k: v for k, v in twin["inputs"].items() if isinstance(v, list)}
        assert set(linked) == set(api_links)
        for input_name, link in linked.items():
            assert api_links[input_name] == [str(link[1]), link[2]]
            assert link[3] == node["id"]
        widgets = [v for k, v in twin["inputs"].items() if not isinstance(v, list)]
        ui_widgets = list(node["widgets_values"])
        if "seed" in twin["inputs"]:
            ui_widgets.pop(list(twin["inputs"]).index("seed") + 1)  # the editor's control_after_generate
        assert ui_widgets == widgets, node["type"]
    for link in ui["links"]:  # every link's origin lists it among its outputs
        origin = nodes[str(link[1])]
        assert link[0] in origin["outputs"][link[2]]["links"]


@pytest.mark.parametrize("name", NAMES)
def test_file_loaders_say_where_to_download(name):
    ui, _ = load(name)
    for node in ui["nodes"]:
        if node["type"] in ("DualCLIPLoader", "VAELoader"):
            models = node["properties"]["models"]
            assert models and all(m["url"].startswith("https://") and m["directory"] for m in models)


@pytest.fixture(scope="module")
def object_info(tmp_path_factory):
    from comfy_host import ComfyServer, make_comfy_home

    home = make_comfy_home(tmp_path_factory.mktemp("wf"), COMFYUI_PATH)
    server = ComfyServer(home)
    try:
        yield server.get("/object_info")
    finally:
        server.close()


def _valid(value, spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else opts.get("options", [])
        if options and all(isinstance(o, str) for o in options) and any(o.endswith(".safetensors") for o in options):
            return value in options
        if not options or (isinstance(value, str) and value.endswith(".safetensors")):
            return isinstance(value, str)  # a model file the test host does not have
        return value in options
    if kind == "INT":
        return isinstance(value, int) and opts.get("min", -(2**63)) <= value <= opts.get("max", 2**63)
    if kind == "FLOAT":
        return isinstance(value, (int, float)) and opts.get("min", -1e308) <= value <= opts.get("max", 1e308)
    if kind == "STRING":
        return isinstance(value, str)
    return False


@requires_comfyui
@pytest.mark.parametrize("name", NAMES)
def test_every_node_and_widget_value_is_valid_in_comfyui(name, object_info):
    _, api = load(name)
    for node_id, node in api.items():
        assert node["class_type"] in object_info, f"{node['class_type']} is not a node of this ComfyUI + pack"
        spec = object_info[node["class_type"]]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for key, value in node["inputs"].items():
            assert key in declared, f"{node_id} {node['class_type']}: unknown input {key}"
            if not isinstance(value, list):
                assert _valid(value, declared[key]), f"{node_id} {node['class_type']}.{key} = {value!r}"
        for key in spec.get("required", {}):
            assert key in node["inputs"], f"{node_id} {node['class_type']}: missing required {key}"
