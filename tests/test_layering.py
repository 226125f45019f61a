"""The package's layers: the import-linter contracts in pyproject.toml, and no import cycle at all.

`lint-imports` (from the repository root) checks the same contracts from the command line.
"""
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_the_contracts_name_every_top_level_module():
    """A new module must find its layer: every module directly under mpdref is in the layers contract."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.split("|")}
    graph = grimp.build_graph("mpdref", cache_dir=None)
    top = {m for m in graph.find_children("mpdref")}
    assert top <= named, f"modules in no layer of pyproject.toml's contract: {sorted(top - named)}"


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("mpdref", cache_dir=None)


def test_no_module_imports_one_that_imports_it_back(graph):
    """No cycle anywhere, parents and children included (the contract checks siblings only)."""
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported != importer and graph.chain_exists(imported, importer):
                cycles.append(f"{importer} -> {imported} -> ... -> {importer}")
    assert not cycles, "\n".join(cycles)


def test_a_forbidden_import_breaks_a_contract(tmp_path, monkeypatch, capsys):
    """The check can fail: the same contracts over a copy of the package in which ops imports numba."""
    import shutil

    copy = tmp_path / "mpdref"
    shutil.copytree(ROOT / "mpdref", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "ops" / "dense.py").write_text((copy / "ops" / "dense.py").read_text() + "\nimport numba  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in __import__("sys").modules if m == "mpdref" or m.startswith("mpdref.")]:
        monkeypatch.delitem(__import__("sys").modules, name)
    code = lint_imports(config_filename=str(tmp_path / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 1
    assert "ops is the plain NumPy reference: no Numba, no kernels BROKEN" in capsys.readouterr().out
