"""Every package declares its public names in `__all__`, each of them imports, and the version lives in one place."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import finetune
from tests.conftest import ROOT

PACKAGES = ["finetune"] + sorted(m.name for m in pkgutil.iter_modules(finetune.__path__, "finetune.") if m.ispkg)


def test_the_packages_the_readme_names_are_all_checked():
    for name in ("train", "models", "methods", "losses", "optim", "stabilize", "data", "metrics", "export"):
        assert f"finetune.{name}" in PACKAGES


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_in_all_imports(name):
    package = importlib.import_module(name)
    names = package.__all__
    assert names and len(names) == len(set(names)), f"{name}.__all__ is empty or repeats a name"
    for attr in names:
        assert getattr(package, attr) is not None, f"{name}.{attr}"


def test_an_unknown_name_is_an_attribute_error_naming_it():
    import finetune.data

    with pytest.raises(AttributeError, match="'finetune.data' has no attribute 'nothing_here'"):
        finetune.data.nothing_here  # noqa: B018


def test_the_lm_path_does_not_import_diffusers():
    code = (
        "import sys; from finetune.data import build_text_datasets; from finetune.models import load_causal_lm; "
        "from finetune.methods import LM_METHODS; print('diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_version_is_written_once_and_read_by_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "finetune.__version__"}
    from setuptools.config.pyprojecttoml import read_configuration

    assert read_configuration(ROOT / "pyproject.toml")["project"]["version"] == finetune.__version__
