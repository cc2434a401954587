"""The config reference (docs/CONFIG.md), rendered from the schema: one table per block of config.yaml.

A block is a top-level key, a named entry (`datasets.<name>`, `pretrain.<run>`, ...), a `$ref` to an object
of the schema's `$defs`, or one `if`/`then` branch (a `source` kind, a backbone `name`). Inline objects such
as `optimizer` stay in their block's table as dotted keys (`optimizer.lr`). Regenerate the file with

    python -m depthcontrast.config_reference > docs/CONFIG.md

(tests/test_docs.py fails while docs/CONFIG.md differs from what this module renders).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from depthcontrast.config import load_schema

COMMAND = "python -m depthcontrast.config_reference > docs/CONFIG.md"
PLACEHOLDERS = {"pretrain": "<run>"}  # the name a named entry is shown with; any other map: <name>

HEADER = f"""# Config reference

<!-- Generated from depthcontrast/schemas/config.schema.yaml: do not edit by hand. -->
Generated from the schema, `depthcontrast/schemas/config.schema.yaml`. After changing the schema, regenerate it:

```bash
{COMMAND}
```

`config.yaml` is validated against the schema, which also fills in every default. A wrong key, type or value
stops the workflow at once, with one line that names the key and what is allowed. `depthcontrast
validate-config --print config.yaml` prints the config with every default filled in. Write floats with a dot
and a signed exponent (`1.0e-3`), or without an exponent (`0.001`): YAML reads `1e-3` as text, and the error
message shows how to spell it.

Each table lists the keys of one block (keys inside a block are dotted), with their type, default, allowed
values and meaning. "required" in the default column means that the key has no default and must be set.
"""


@dataclass
class Row:
    key: str
    type: str
    default: str
    allowed: str
    description: str


@dataclass
class Block:
    """One table: the keys under `path`, possibly only when `condition` holds (an if/then branch)."""

    path: str
    description: str
    condition: str = ""
    rows: list[Row] = field(default_factory=list)
    children: list[Block] = field(default_factory=list)


def render(schema: dict[str, Any] | None = None) -> str:
    """The whole reference as Markdown: the header, then every block's table in schema order."""
    schema = load_schema() if schema is None else schema
    root = _Walker(schema).block("", {**schema, "description": ""}, "")
    parts, seen = [HEADER], set()
    for block in _flatten(root):
        table = _table(block)
        if (block.rows or block.description) and table not in seen:  # a $ref used twice: one table
            seen.add(table)
            parts.append(table)
    return "\n".join(parts)


class _Walker:
    """Turns schema nodes into blocks and rows, resolving `$ref`s against the schema they came from."""

    def __init__(self, schema: dict[str, Any]):
        self.schema = schema

    def resolve(self, node: Any) -> Any:
        """`node` with its `$ref` followed (repeatedly); the node's own keys win over the target's."""
        while isinstance(node, dict) and "$ref" in node:
            target = self.schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            own = {key: value for key, value in node.items() if key != "$ref"}
            node = {**target, **own} if isinstance(target, dict) else target
        return node

    def block(self, path: str, node: dict[str, Any], description: str, condition: str = "") -> Block:
        block = Block(path, _text(description or node.get("description", "")), condition)
        self._fill(block, node, prefix="", required=set(node.get("required", [])))
        self._add_branches(block, node)
        return block

    def _fill(
        self, block: Block, node: dict[str, Any], prefix: str, required: set[str], skip: frozenset[str] = frozenset()
    ) -> None:
        """Rows for `node`'s properties (inline objects as dotted keys), child blocks for the rest."""
        for name, raw in node.get("properties", {}).items():
            if name in skip or raw is True:
                continue
            sub = self.resolve(raw)
            key = prefix + name
            is_ref = isinstance(raw, dict) and "$ref" in raw
            child_path = f"{block.path}.{key}" if block.path else key
            value = self._named_entry(sub)
            if value is not None:  # datasets.<name>, pretrain.<run>, evaluate.tasks.<name>
                entry = f"{child_path}.{PLACEHOLDERS.get(key, '<name>')}"
                block.rows.append(self._row(key, sub, name in required, note=f"entries: table `{entry}`"))
                block.children.append(self.block(entry, value, _join(sub.get("description"), value.get("description"))))
            elif _has_keys(sub) and (is_ref or _branches(sub) or not block.path):
                block.rows.append(self._row(key, sub, name in required, note=f"table `{child_path}`"))
                block.children.append(self.block(child_path, sub, sub.get("description", "")))
            elif _has_keys(self.resolve(sub.get("items"))):  # a list of objects: one table for an item
                items = self.resolve(sub["items"])
                block.rows.append(self._row(key, sub, name in required, note=f"items: table `{child_path}[]`"))
                block.children.append(self.block(f"{child_path}[]", items, items.get("description", "")))
            elif _has_keys(sub):  # an inline object: its keys stay in this table
                block.rows.append(self._row(key, sub, name in required))
                self._fill(block, sub, key + ".", set(sub.get("required", [])))
            else:
                block.rows.append(self._row(key, sub, name in required))

    def _add_branches(self, block: Block, node: dict[str, Any]) -> None:
        """One child block per `if`/`then` (and `else`) of `node`'s `allOf`, named by its condition."""
        for item in node.get("allOf", []):
            if not isinstance(item, dict) or "if" not in item:
                continue
            condition = item["if"].get("properties", {})
            keys = frozenset(condition)
            branches = [("then", _condition(condition)), ("else", self._otherwise(node, condition))]
            if self._default_fails(node, condition):
                branches.reverse()  # the branch that holds when the key is left out comes first
            for branch, label in branches:
                if branch not in item:
                    continue
                target = self.resolve(item[branch])
                child = Block(block.path, _text(target.get("description", "")), label)
                self._fill(child, target, "", set(target.get("required", [])), skip=keys)
                block.children.append(child)

    def _default_fails(self, node: dict[str, Any], condition: dict[str, Any]) -> bool:
        """Whether the tested keys' defaults fail the `if` (so the `else` branch is the default one)."""
        for key, test in condition.items():
            prop = self.resolve(node.get("properties", {}).get(key, {}))
            if "default" in prop:
                values = [test["const"]] if "const" in test else test.get("enum", [])
                if prop["default"] not in values:
                    return True
        return False

    def _otherwise(self, node: dict[str, Any], condition: dict[str, Any]) -> str:
        """The `else` branch's condition: the values of the tested key that the `if` leaves out."""
        parts = []
        for key, test in condition.items():
            allowed = self.resolve(node.get("properties", {}).get(key, {})).get("enum", [])
            taken = [test["const"]] if "const" in test else test.get("enum", [])
            rest = [value for value in allowed if value not in taken]
            parts.append(f"`{key}: {_or(rest)}`" if rest else f"`{key}` other than {_or(taken)}")
        return " and ".join(parts)

    def _named_entry(self, node: Any) -> dict[str, Any] | None:
        """The schema of a map's entries when `node` is a map of named blocks (not of plain values)."""
        if not isinstance(node, dict) or "properties" in node:
            return None
        value = self.resolve(node.get("additionalProperties"))
        return value if isinstance(value, dict) and _has_keys(value) else None

    def _row(self, key: str, node: Any, required: bool, note: str = "") -> Row:
        node = self.resolve(node) if isinstance(node, dict) else {}
        default = "required" if required else (f"`{_yaml(node['default'])}`" if "default" in node else "")
        if "x-derived-default" in node:  # the value a null (or absent) key takes, derived from its block
            default = f"{default} (derived: `{_yaml(node['x-derived-default'])}`)".strip()
        return Row(key, self._type(node), default, self._allowed(node), _join(_text(node.get("description", "")), note))

    def _type(self, node: dict[str, Any]) -> str:
        node = self.resolve(node)
        if not isinstance(node, dict):
            return "any"
        for combinator in ("oneOf", "anyOf"):
            if combinator in node:
                return " or ".join(dict.fromkeys(self._type(option) for option in node[combinator]))
        kinds = node.get("type")
        if kinds is None:
            values = node.get("enum", [node["const"]] if "const" in node else [])
            kinds = list(dict.fromkeys(_json_type(value) for value in values)) or (
                ["object"] if _has_keys(node) else ["any"]
            )
        kinds = [kinds] if isinstance(kinds, str) else kinds
        names = []
        for kind in kinds:
            if kind == "array" and "items" in node:
                inner = self._type(node["items"])
                names.append(f"array of ({inner})" if " or " in inner else f"array of {inner}")
            elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
                inner = self._type(node["additionalProperties"])
                names.append(f"mapping of name → ({inner})" if " or " in inner else f"mapping of name → {inner}")
            else:
                names.append(kind)
        return " or ".join(names)

    def _allowed(self, node: dict[str, Any]) -> str:
        parts = _constraints(node)
        items = self.resolve(node.get("items"))
        if isinstance(items, dict):
            inner = _constraints(items)
            if inner:
                parts.append("each " + ", ".join(inner))
        return "; ".join(parts)


def _constraints(node: dict[str, Any]) -> list[str]:
    """The value rules of one schema node in words: enum, const, bounds, lengths, patterns."""
    parts = []
    if "enum" in node:
        parts.append(", ".join(f"`{_yaml(value)}`" for value in node["enum"]))
    if "const" in node:
        parts.append(f"`{_yaml(node['const'])}`")
    low = [f"≥ {_yaml(node['minimum'])}"] if "minimum" in node else []
    low += [f"> {_yaml(node['exclusiveMinimum'])}"] if "exclusiveMinimum" in node else []
    high = [f"≤ {_yaml(node['maximum'])}"] if "maximum" in node else []
    high += [f"< {_yaml(node['exclusiveMaximum'])}"] if "exclusiveMaximum" in node else []
    parts.extend(low + high)
    least, most = node.get("minItems"), node.get("maxItems")
    if least is not None and least == most:
        parts.append(_count(least, "item"))
    else:
        parts += [f"≥ {_count(least, 'item')}"] if least is not None else []
        parts += [f"≤ {_count(most, 'item')}"] if most is not None else []
    parts += ["unique"] if node.get("uniqueItems") else []
    parts += [f"≥ {_count(node['minProperties'], 'entry')}"] if "minProperties" in node else []
    parts += [f"matches `{node['pattern']}`"] if "pattern" in node else []
    names = node.get("propertyNames")
    if isinstance(names, dict) and "pattern" in names:
        parts.append(f"names match `{names['pattern']}`")
    return parts


def _count(number: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"


def _branches(node: dict[str, Any]) -> bool:
    return any(isinstance(item, dict) and "if" in item for item in node.get("allOf", []))


def _has_keys(node: Any) -> bool:
    """Whether `node` is an object schema with keys of its own (or branches that add keys)."""
    return isinstance(node, dict) and (bool(node.get("properties")) or _branches(node))


def _condition(condition: dict[str, Any]) -> str:
    parts = []
    for key, test in condition.items():
        values = [test["const"]] if "const" in test else test.get("enum", [])
        parts.append(f"`{key}: {_or(values)}`")
    return " and ".join(parts)


def _or(values: list[Any]) -> str:
    words = [_yaml(value) for value in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "null" if value is None else "string" if isinstance(value, str) else "any"


def _yaml(value: Any) -> str:
    """`value` as one would write it in config.yaml (flow style, one line)."""
    if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _text(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def _join(*texts: str | None) -> str:
    """Texts as consecutive sentences: each but the last ends with a full stop."""
    parts = [_text(text) for text in texts if _text(text)]
    return " ".join([part if part.endswith((".", ":", ";")) else part + "." for part in parts[:-1]] + parts[-1:])


def _flatten(block: Block) -> Iterator[Block]:
    yield block
    for child in block.children:
        yield from _flatten(child)


def _cell(text: str) -> str:
    """`text` for a table cell: `|` escaped, and `<` outside code spans (else `<name>` reads as an HTML tag)."""
    if not text:
        return "–"
    pieces = text.split("`")
    pieces[::2] = [piece.replace("<", "\\<") for piece in pieces[::2]]
    return "`".join(pieces).replace("|", "\\|")


def _table(block: Block) -> str:
    title = f"`{block.path}`" if block.path else "Top level"
    heading = f"## {title}" + (f" with {block.condition}" if block.condition else "")
    lines = [heading, ""]
    if block.description:
        lines += [_cell(block.description).replace("\\|", "|"), ""]
    if block.rows:
        lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for row in block.rows:
            cells = [f"`{row.key}`", row.type, row.default, row.allowed, row.description]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
