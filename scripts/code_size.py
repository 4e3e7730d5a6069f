"""Print the largest modules and classes of a source tree, in lines.

    python scripts/code_size.py [ROOT] [--top N]

A class's lines run from its ``class`` line to its last line; a class whose bases are other
classes of the tree (mixins) also gets the sum over those bases, since its behaviour is
spread over all of them.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def main() -> None:
    """Parse the arguments, measure ROOT (default ``assetfs``) and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="assetfs")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    modules: list[tuple[int, str]] = []
    classes: dict[str, tuple[int, str, list[str]]] = {}
    for path in sorted(Path(args.root).rglob("*.py")):
        text = path.read_text()
        modules.append((len(text.splitlines()), str(path)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                end = node.end_lineno or node.lineno
                classes[node.name] = (end - node.lineno + 1, str(path), bases)

    def with_bases(name: str) -> int:
        lines, _, bases = classes[name]
        return lines + sum(with_bases(b) for b in bases if b in classes)

    print("largest modules (lines):")
    for lines, path in sorted(modules, reverse=True)[: args.top]:
        print(f"  {lines:5d}  {path}")
    print("largest classes (lines; with the tree's own base classes):")
    ranked = sorted(classes, key=lambda n: (classes[n][0], n), reverse=True)[: args.top]
    for name in ranked:
        lines, path, _ = classes[name]
        print(f"  {lines:5d} ({with_bases(name):5d})  {name}  {path}")


if __name__ == "__main__":
    main()
