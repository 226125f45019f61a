"""What README.md promises that code can check.

- The first code block holds the set-up command and the test command (CI reads the latter
  from it with awk).
- The audit recipe under "Auditing another framework" is run as it is written, beside a
  PyTorch LeNet-5 defined here: loaded into mpdref in float64, the logits, the loss and
  every gradient must agree to 1e-12; and the recipe must see it when the architectures
  differ (a LeNet-5 with a ReLU after each convolution).
- The layout block names only paths that exist, and every module of the package.
- Every config and benchmark script either README names exists, and benchmarks/README.md
  covers every script in benchmarks/.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS_README = ROOT / "benchmarks" / "README.md"
AUDIT_HEADING = "Auditing another framework"
LAYOUT_HEADING = "Layout"
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test,cuda,interop,sweep]' && .venv/bin/python -m pytest -q"


def _code_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number of the opening fence, info string, body) of every fenced code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start, info, body = i, lines[i][3:].strip(), []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, info, "\n".join(body)))
        i += 1
    return blocks


def _block_after_heading(text: str, heading: str) -> str:
    """The first code block between the heading that contains `heading` and the next heading."""
    lines = text.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("#") and heading in line]
    assert len(at) == 1, f"README.md: expected one heading containing {heading!r}, found {len(at)}"
    start = at[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")
                and not _inside_block(lines, i)), len(lines))
    blocks = [body for line, _, body in _code_blocks(text) if start < line < end]
    assert blocks, f"README.md: no code block under the heading {heading!r}"
    return blocks[0]


def _inside_block(lines: list[str], i: int) -> bool:
    return sum(line.startswith("```") for line in lines[:i]) % 2 == 1


def test_the_first_code_block_holds_the_set_up_and_the_test_command():
    text = README.read_text()
    assert text.startswith("# mpdref\n\n```\n")
    _, _, first = _code_blocks(text)[0]
    # CI: awk '/^```/{n++; next} n==1 && /pytest/' README.md
    assert [line for line in first.splitlines() if "pytest" in line] == [TEST_COMMAND]
    assert first.splitlines()[0] == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/mpdref demo"


# ----------------------------------------------------------------------------- the audit recipe


def _torch_lenet5(relu_after_convs: bool = False):
    """A PyTorch LeNet-5 with mpdref's parameter names: Caffe's LeNet, no ReLU after the convolutions."""
    from torch import nn

    act = nn.ReLU if relu_after_convs else nn.Identity
    torch_layers = OrderedDict(
        conv1=nn.Conv2d(1, 20, 5), act1=act(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(20, 50, 5), act2=act(), pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(800, 500), relu=nn.ReLU(), fc2=nn.Linear(500, 10),
    )
    return nn.Sequential(torch_layers)


def _run_recipe(model, rng) -> dict:
    recipe = _block_after_heading(README.read_text(), AUDIT_HEADING)
    x = rng.standard_normal((8, 1, 28, 28))  # float64, as the recipe asks
    y = rng.integers(0, 10, size=8).astype(np.int64)
    namespace = {"model": model, "x": x, "y": y}
    exec(compile(recipe, f"{README}: the block under {AUDIT_HEADING!r}", "exec"), namespace)
    assert "diff" in namespace, "the recipe must leave its differences in `diff`"
    return namespace["diff"]


@needs_torch
def test_the_audit_recipe_finds_a_torch_lenet5_equal_to_1e_12(rng):
    import torch

    torch.manual_seed(0)
    model = _torch_lenet5()
    assert set(model.state_dict()) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                       "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    diff = _run_recipe(model, rng)
    assert set(diff) == {"logits", "loss", *model.state_dict()}, "logits, loss and every gradient are compared"
    worst = {k: float(v) for k, v in diff.items()}
    assert all(np.isfinite(v) and v <= 1e-12 for v in worst.values()), worst


@needs_torch
def test_the_audit_recipe_sees_another_architecture(rng):
    import torch

    torch.manual_seed(0)
    diff = _run_recipe(_torch_lenet5(relu_after_convs=True), rng)
    assert diff["logits"] > 1e-6 and diff["conv1.weight"] > 1e-6, diff


# ----------------------------------------------------------------------------- paths the READMEs name


def _layout_paths() -> list[str]:
    block = _block_after_heading(README.read_text(), LAYOUT_HEADING)
    return [line.split()[0] for line in block.splitlines() if line.strip() and not line.startswith(" ")]


def test_the_layout_names_existing_paths_and_every_module():
    paths = _layout_paths()
    for path in paths:
        assert list(ROOT.glob(path)), f"README.md's layout names {path}, which does not exist"
    named = {p for path in paths for p in ROOT.glob(path)}
    named_dirs = {p for p in named if p.is_dir()}
    for module in sorted((ROOT / "mpdref").rglob("*.py")):
        if module.name == "__init__.py":
            assert module in named or module.parent in named_dirs, \
                f"README.md's layout does not name {module.parent.relative_to(ROOT)}/"
        else:
            assert module in named, f"README.md's layout does not name {module.relative_to(ROOT)}"


def test_named_configs_and_benchmarks_exist_and_every_benchmark_is_described():
    text = README.read_text() + BENCHMARKS_README.read_text()
    for path in sorted(set(re.findall(r"\b(?:configs|benchmarks)/[\w./-]+\.(?:toml|py|md)\b", text))):
        if "*" not in path and "NAME" not in path:  # globs and placeholders (benchmarks/NAME.py)
            assert (ROOT / path).exists() or (ROOT / "mpdref" / path).exists(), f"the READMEs name {path}"
    described = BENCHMARKS_README.read_text()
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        assert f"`{script.name}`" in described or f"benchmarks/{script.name}" in described, \
            f"benchmarks/README.md does not describe {script.name}"
