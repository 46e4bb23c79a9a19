"""The pack imports as ComfyUI imports it and as tools import `kernels`, without ComfyUI."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_kernels_import_from_repo_root_without_comfyui():
    code = (
        "import sys\n"
        "from kernels import nvfp4_quantize, nvfp4_dequantize, FP4Linear\n"
        "assert 'comfy' not in sys.modules, 'kernels pulled in ComfyUI'\n"
        "import kernels, pathlib\n"
        f"assert pathlib.Path(kernels.__file__).parent == pathlib.Path({str(ROOT / 'kernels')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_kernels_has_no_comfyui_imports():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "kernels").rglob("*.py")
        if any(
            line.strip().startswith(("import comfy", "from comfy", "import folder_paths"))
            for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []


def test_pack_imports_as_a_package_without_comfyui():
    """Loaded the way ComfyUI loads custom nodes (a package from a folder path)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('nvfp4_pack', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['nvfp4_pack'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert mod.NODE_CLASS_MAPPINGS == {}\n"
        "import nvfp4_pack.kernels as k; k.nvfp4_quantize\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd="/", check=True)


def test_op_survives_two_import_names():
    """`kernels` and `<pack>.kernels` in one process share one op and one backend registry."""
    code = (
        "import importlib.util, sys, torch\n"
        "import kernels\n"
        f"spec = importlib.util.spec_from_file_location('nvfp4_pack', {str(ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(ROOT)!r}])\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['nvfp4_pack'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "import nvfp4_pack.kernels as k2\n"
        "assert k2.FP4Linear is not kernels.FP4Linear\n"
        "from nvfp4_pack.kernels.backends import register_backend\n"
        "register_backend('probe', lambda x, w, *rest: x.new_full((*x.shape[:-1], w.shape[0]), 7.0))\n"
        "m = kernels.FP4Linear.from_linear(torch.nn.Linear(32, 8)); m.backend = 'probe'\n"
        "assert (m(torch.randn(2, 32)) == 7).all()\n"
        "import kernels.tracing as t1, nvfp4_pack.kernels.tracing as t2\n"
        "with t1.tracing():\n"
        "    assert t2.is_tracing(), 'the traced op of one import runs backends of the other'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_pyproject_declares_comfy_registry_fields():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    for key in ("name", "version", "license", "description", "dependencies"):
        assert key in project, key
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert key in comfy, key
    assert not any(d.split()[0].startswith("torch") for d in project["dependencies"])
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not any(r.startswith("torch") for r in reqs if r), "torch must come from ComfyUI"


def test_importlib_spec_finds_pack_root():
    assert importlib.util.find_spec("kernels").origin == str(ROOT / "kernels" / "__init__.py")
