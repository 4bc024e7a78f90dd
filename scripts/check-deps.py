#!/usr/bin/env python3
"""Checks that no module of the gem-proxy crate imports "upwards".

The rules live in ARCHITECTURE.md, in the fenced block that starts with `# tiers`: one line per
tier, lowest first, `tier-name: module module ...`. A module is a file or directory directly under
src/ (`body` is src/body.rs, `config` is src/config/ and src/config.rs). A module may use modules of
its own tier and of the tiers below it, never of a tier above. Inside `layers` (src/layers/), a
layer may not use another layer: what several layers share sits below them.

A module under src/ that the table does not name fails the check, so a new module gets its place
in the map when it is added. Run from anywhere: `scripts/check-deps.py`; exit 1 on a violation.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
LAYERS = "layers"
# The crate root and the binary's entry point sit above every tier.
ROOTS = {"lib", "main"}


def read_tiers():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    block = re.search(r"```[a-z]*\n# tiers\n(.*?)```", text, re.S)
    if not block:
        sys.exit("check-deps: ARCHITECTURE.md has no ```# tiers``` block")
    tiers = {}
    for rank, line in enumerate(
        line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")
    ):
        name, _, modules = line.partition(":")
        for module in modules.split():
            tiers[module] = (rank, name.strip())
    return tiers


def strip_comments(code):
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in code.splitlines())


def without_test_modules(code):
    """The code without its `#[cfg(test)] mod name { ... }` blocks: a unit-test module may use
    whatever it tests with."""
    # String contents may hold braces; they never hold imports.
    code = re.sub(r'r(#*)".*?"\1', '""', code, flags=re.S)
    code = re.sub(r'"(?:\\.|[^"\\])*"', '""', code, flags=re.S)
    code = re.sub(r"'(?:\\.|[^'\\])'", "' '", code)
    out, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", code):
        if m.start() < pos:
            continue
        out.append(code[pos : m.start()])
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        pos = i
    out.append(code[pos:])
    return "".join(out)


def use_trees(code):
    """Yields every path a `use` item or an inline `crate::`/`super::` path names."""
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        yield from expand(m.group(1).replace("\n", " ").replace(" ", ""))
    for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", code):
        yield m.group(1)


def expand(tree):
    """`crate::{a::B, c::{d, e}}` -> crate::a::B, crate::c::d, crate::c::e."""
    brace = tree.find("{")
    if brace < 0:
        yield tree
        return
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    depth, start = 0, 0
    for i, ch in enumerate(inner + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            part = inner[start:i]
            start = i + 1
            if part:
                yield from expand(prefix + part)


def module_of(path):
    """(top-level module, layer file or None) of a file under src/."""
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts
    layer = parts[1] if parts[0] == LAYERS and len(parts) > 1 and parts[1] != "mod" else None
    return parts[0], layer


def target_of(use, path):
    """(top-level module, layer or None) a path names, or None for std/extern crates."""
    segs = use.split("::")
    if segs[0] == "crate":
        segs = segs[1:]
    elif segs[0] == "super":
        rel = list(path.relative_to(SRC).with_suffix("").parts)
        if rel[-1] == "mod":
            rel = rel[:-1]
        while segs and segs[0] == "super":
            segs = segs[1:]
            rel = rel[:-1]
        segs = rel + segs
    else:
        return None
    segs = [s for s in segs if s not in ("self", "*")]
    if not segs:
        return None
    layer = segs[1] if segs[0] == LAYERS and len(segs) > 2 else None
    return segs[0], layer


def main():
    tiers = read_tiers()
    errors = []
    for path in sorted(SRC.rglob("*.rs")):
        module, layer = module_of(path)
        if module in ROOTS:
            continue
        if module not in tiers:
            errors.append(
                f"{path.relative_to(ROOT)}: module `{module}` has no tier in ARCHITECTURE.md "
                "(add it to the ```# tiers``` block)"
            )
            continue
        rank, tier = tiers[module]
        code = strip_comments(path.read_text())
        code = without_test_modules(code)
        seen = set()
        for use in use_trees(code):
            target = target_of(use, path)
            if target is None or target in seen:
                continue
            seen.add(target)
            to_module, to_layer = target
            if to_module == module:
                if layer and to_layer and to_layer != layer:
                    errors.append(
                        f"{path.relative_to(ROOT)}: the {layer} layer uses the {to_layer} layer "
                        f"({use}); move what they share below src/layers/"
                    )
                continue
            if to_module not in tiers:
                continue  # a module the table does not know is reported on its own files
            to_rank, to_tier = tiers[to_module]
            if to_rank > rank:
                errors.append(
                    f"{path.relative_to(ROOT)}: `{module}` ({tier}) uses `{to_module}` "
                    f"({to_tier}, a higher tier): {use}"
                )
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"check-deps: {len(errors)} problem(s), see ARCHITECTURE.md", file=sys.stderr)
        return 1
    print(f"check-deps: ok ({len(tiers)} modules in {len(set(t for _, t in tiers.values()))} tiers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
