"""The docs stay true: the config reference matches the schema, links resolve, the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from depthcontrast.config import load_schema
from depthcontrast.config_reference import COMMAND, render

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 220


def test_config_reference_is_what_the_schema_renders_now():
    written = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert written == render(), f"docs/CONFIG.md is out of date with the schema: run `{COMMAND}`"


def test_config_reference_names_the_command_that_regenerates_it():
    head = render().splitlines()[:10]
    assert any(COMMAND in line for line in head)


def _property_names(node: Any) -> set[str]:
    """Every key that any `properties` of the schema defines (a `true` schema only allows a key defined elsewhere)."""
    names: set[str] = set()
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            if sub is not True:
                names.add(name)
        for value in node.values():
            names |= _property_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _property_names(value)
    return names


def test_config_reference_has_a_row_for_every_key_of_the_schema_refs_and_branches_included():
    text = render()
    keys = {match.rsplit(".", 1)[-1] for match in re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)}
    missing = _property_names(load_schema()) - keys
    assert not missing, f"keys of the schema without a row in the reference: {sorted(missing)}"


def _row(text: str, heading: str, key: str) -> list[str]:
    """The cells of `key`'s row in the table under the heading `heading`."""
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if line.startswith(f"| `{key}` |"):
            return [cell.strip() for cell in line.strip("|").split(" | ")]
    raise AssertionError(f"no row {key!r} under {heading!r}")


def test_config_reference_follows_refs_and_names_each_branch_by_its_condition():
    text = render()
    # http_options/retries is reached through a $ref into a $defs entry that is no schema itself
    assert _row(text, "`datasets.<name>.source` with `kind: http`", "retries")[2] == "`5`"
    assert _row(text, "`datasets.<name>.source` with `kind: http`", "urls")[2] == "required"
    assert _row(text, "`datasets.<name>.source.urls[]`", "sha256")[3] == "matches `^[0-9a-f]{64}$`"
    # an inline object's keys are dotted; a $ref to a plain value brings its default
    assert _row(text, "`evaluate`", "finetune.batch_size")[2] == "`8`"
    # the else branch is named by the values the if leaves out, and comes first as it holds the default
    assert text.index("## `pretrain.<run>.backbone` with `name: pointnet2_ssg`") < text.index(
        "## `pretrain.<run>.backbone` with `name: pointnet2_msg`"
    )
    assert _row(text, "`pretrain.<run>.backbone` with `name: pointnet2_msg`", "radius")[1] == (
        "array of array of number"
    )
    assert "## `datasets.<name>.source` with `kind: scannet, redwood, kitti or waymo`" in text


def test_config_reference_renders_a_schema_change():
    schema = load_schema()
    schema["$defs"]["preprocess"]["properties"]["new_key"] = {
        "type": "integer",
        "minimum": 2,
        "default": 3,
        "description": "a | b",
    }
    row = _row(render(schema), "`datasets.<name>.preprocess`", "new_key")
    assert row[1:] == ["integer", "`3`", "≥ 2", "a \\| b"]


def _links(path: Path) -> list[str]:
    """Targets of the Markdown links and images in `path`, code blocks and code spans left out."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)


@pytest.mark.parametrize("doc", [ROOT / "README.md", *DOCS], ids=lambda path: path.name)
def test_every_relative_link_points_to_an_existing_file(doc):
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


def test_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [gone](docs/NOPE.md#x) `[code](nope.md)` [web](https://example.org)\n")
    assert _links(page) == ["page.md", "docs/NOPE.md#x", "https://example.org"]


def test_readme_is_a_front_door_of_at_most_220_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move detail into docs/"
