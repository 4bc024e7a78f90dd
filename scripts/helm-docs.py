#!/usr/bin/env python3
"""Writes the values table of helm/gem-proxy/README.md from the comments in values.yaml.

The comment convention is helm-docs's: a `# -- text` block (continued by further `#` lines) right
above a key documents that key; documenting a map documents everything under it; a
`# @default -- text` line replaces the default shown. Every key must be documented, itself or
through a map above it: an undocumented one is an error.

    scripts/helm-docs.py           # rewrite the table between the README's markers
    scripts/helm-docs.py --check   # exit 1 if the table is out of date (the test command runs this)
"""

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent / "helm" / "gem-proxy"
START = "<!-- values-table:start (scripts/helm-docs.py) -->"
END = "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?P<rest>.*)$")


def documented_keys(text):
    """[(path, description, default override)] in file order; exits on undocumented keys."""
    lines = text.splitlines()
    entries, undocumented = [], []
    stack = []  # (indent, key, documented here or above)
    comment, default = None, None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        i += 1
        if not stripped:
            continue
        if stripped == "# --" or stripped.startswith("# -- "):
            comment, default = [stripped[5:]], None
            continue
        if stripped.startswith("# @default -- "):
            default = stripped[len("# @default -- ") :]
            continue
        if stripped.startswith("#"):
            if comment is not None and default is None:
                comment.append(stripped[1:].strip())
            continue
        m = KEY.match(line)
        if not m:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k, _ in stack] + [m["key"]])
        inherited = any(doc for _, _, doc in stack)
        if comment is not None:
            entries.append((path, " ".join(c for c in comment if c), default))
        elif not inherited and m["rest"].strip():
            undocumented.append(path)
        stack.append((indent, m["key"], comment is not None or inherited))
        comment, default = None, None
        # A block list's lines are its value, not keys of the chart: skip them.
        nxt = next((n for n in lines[i:] if n.strip() and not n.strip().startswith("#")), "")
        if not m["rest"].strip() and nxt.strip().startswith("- "):
            if not inherited and not stack[-1][2]:
                undocumented.append(path)
            while i < len(lines):
                item = lines[i].strip()
                if item and len(lines[i]) - len(lines[i].lstrip(" ")) <= indent and not item.startswith("- "):
                    break
                i += 1
            stack.pop()
    if undocumented:
        raise SystemExit("values.yaml: keys without a '# --' comment: " + ", ".join(undocumented))
    return entries


def lookup(values, path):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def type_of(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    return "object"


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def table(values_text):
    values = yaml.safe_load(values_text)
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for path, desc, default in documented_keys(values_text):
        value = lookup(values, path)
        shown = default if default is not None else "`" + json.dumps(value, separators=(",", ":")) + "`"
        rows.append(f"| {cell(path)} | {type_of(value)} | {cell(shown)} | {cell(desc)} |")
    return "\n".join(rows)


def main():
    check = "--check" in sys.argv[1:]
    values_text = (CHART / "values.yaml").read_text()
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"{readme_path}: the markers {START} and {END} are missing")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table(values_text)}\n{END}{tail}"
    if check:
        if new != readme:
            print(
                "helm/gem-proxy/README.md: the values table is out of date; run scripts/helm-docs.py", file=sys.stderr
            )
            return 1
        return 0
    if new != readme:
        readme_path.write_text(new)
        print("helm/gem-proxy/README.md: values table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
