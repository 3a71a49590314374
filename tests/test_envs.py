"""The conda environment of the rule jobs (envs/nnrobustloss.yaml) and pyproject.toml agree, and
rule jobs import the package from the workflow's src/ without an install of it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / "envs" / "nnrobustloss.yaml"


def _generator():
    spec = importlib.util.spec_from_file_location("envs_generate", ROOT / "envs" / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pip_pins() -> dict[str, str]:
    env = yaml.safe_load(ENV.read_text(encoding="utf-8"))
    assert env["channels"] == ["conda-forge", "nodefaults"]
    deps = env["dependencies"]
    assert any(isinstance(d, str) and d.startswith("python=") for d in deps)
    pip = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1 and "pip" in deps
    pins = {}
    for entry in pip[0]:
        req = Requirement(entry)  # a relative path or "--editable .." is no requirement
        (spec,) = req.specifier
        assert spec.operator == "==", f"{entry}: not pinned"
        pins[req.name] = spec.version
    return pins


def test_env_file_is_valid_and_pins_every_pyproject_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"]
              + project["optional-dependencies"]["postgres"]]
    pins = _pip_pins()
    assert [canonicalize_name(n) for n in pins] == [canonicalize_name(r.name) for r in wanted]
    for req in wanted:
        version = pins[req.name]
        assert req.specifier.contains(version, prereleases=True), \
            f"{req.name}=={version} in {ENV.name} violates pyproject.toml's {req}"
    text = ENV.read_text(encoding="utf-8")
    assert "-e " not in text and "--editable" not in text and ".." not in text


def test_env_file_is_what_the_generator_writes_for_its_pins() -> None:
    gen = _generator()
    assert ENV.read_text(encoding="utf-8") == gen.render(_pip_pins())
    assert [gen.name_of(r) for r in gen.requirements()] == list(_pip_pins())


def test_rule_jobs_import_the_package_from_src_without_an_install(tmp_path: Path) -> None:
    """As in a conda env that holds the dependencies only: no site processing (so no editable
    install of the package is visible), the dependencies' folder and the Snakefile's src/ on
    PYTHONPATH."""
    snakefile = (ROOT / "Snakefile").read_text(encoding="utf-8")
    assert 'os.path.join(workflow.basedir, "src")' in snakefile and "PYTHONPATH" in snakefile
    deps = sysconfig.get_paths()["purelib"]
    code = ("import nnrobustloss.pipeline, nnrobustloss.logs, sys; "
            "print(nnrobustloss.pipeline.__file__); "
            "assert not any('__editable__' in type(f).__module__ for f in sys.meta_path)")
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), deps])})
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == ROOT / "src" / "nnrobustloss" / "pipeline.py"
    # Without src/ the same interpreter cannot import the package: the test really uses src/.
    proc = subprocess.run([sys.executable, "-S", "-c", "import nnrobustloss"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": deps})
    assert proc.returncode != 0 and "No module named 'nnrobustloss'" in proc.stderr


@pytest.mark.parametrize("name", ["nnrobustloss.def", "Dockerfile"])
def test_container_definitions_pin_the_same_dependencies_as_pyproject(name: str) -> None:
    """The Apptainer definition and the Dockerfile install exactly the env file's pins (hence
    pyproject.toml's dependencies, checked above) and are what envs/generate.py writes."""
    gen = _generator()
    pins = _pip_pins()
    text = (ROOT / "envs" / name).read_text(encoding="utf-8")
    assert text == gen.OUTPUTS[name](pins)
    installed = re.findall(r"^\s+([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?: \\)?$", text, re.M)
    assert installed == list(pins.items())
    assert "-e " not in text and "--editable" not in text


def test_snakefile_runs_jobs_in_the_configured_container() -> None:
    from nnrobustloss.config import config_schema

    snakefile = (ROOT / "Snakefile").read_text(encoding="utf-8")
    assert re.search(r'^container: config\["container"\]$', snakefile, re.M)
    default = config_schema()["properties"]["container"]["default"]
    assert default == "nnrobustloss.sif" and default in (ROOT / "envs" / "nnrobustloss.def").read_text()
