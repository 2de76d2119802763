"""docs/architecture.md's package map names every module of the package, and nothing that is gone."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = re.compile(r"^(\w+\.py|\w+/),?$")


def mapped(text: str) -> set[str]:
    """Module paths (relative to pipeline/, e.g. training/driver.py) named in the map's code block:
    a line names entries in its leading tokens; indentation (2 spaces a level) places them."""
    block = text.split("## The package map", 1)[1].split("```", 2)[1]
    names, folders = set(), []
    for line in block.splitlines():
        level = (len(line) - len(line.lstrip())) // 2
        tokens = line.split()
        entries = []
        while tokens and ENTRY.match(tokens[0]):
            entries.append(tokens.pop(0).rstrip(","))
        if not entries or level > len(folders):
            continue  # a description's continuation (indented past any entry)
        folders = folders[:level]
        for entry in entries:
            if entry.endswith("/"):
                folders.append(entry)
            else:
                names.add("".join(folders[1:]) + entry)
    return names


def test_the_package_map_names_every_module():
    modules = {str(p.relative_to(ROOT / "pipeline")) for p in (ROOT / "pipeline").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    named = mapped((ROOT / "docs" / "architecture.md").read_text())
    assert sorted(modules - named) == [], "modules missing from docs/architecture.md's package map"
    assert sorted(named - modules) == [], "the package map names modules that do not exist"


def test_the_map_parser_reads_folders_and_continuations():
    text = "## The package map\n```\npipeline/\n  a.py   x\n                 b.py is prose\n  sub/\n    c.py, d.py  y\n  e.py\n```"
    assert mapped(text) == {"a.py", "sub/c.py", "sub/d.py", "e.py"}


def test_every_library_the_package_imports_is_a_declared_dependency():
    """An import of a library that pyproject.toml does not declare works here by chance (another
    package pulled it in) and breaks a clean install."""
    import ast
    import importlib.metadata
    import sys
    import tomllib

    declared = {re.split(r"[<>=!~ \[;]", spec, 1)[0].lower().replace("_", "-")
                for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    imported = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    libraries = imported - set(sys.stdlib_module_names) - {"pipeline", "__future__"}
    owners = importlib.metadata.packages_distributions()
    undeclared = {name: owners.get(name) for name in libraries
                  if not {d.lower().replace("_", "-") for d in owners.get(name, [name])} & declared}
    assert undeclared == {}
