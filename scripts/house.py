"""The house at a glance: per room (espl/, envs/, agents/, trainer/, sandboxes/, leaderboard/) its files and
lines, and the longest functions of the library, at the working tree or at any git revision.

    python scripts/house.py              # the working tree
    python scripts/house.py 9ec69b7      # a commit (read with `git show REV:path`, nothing checked out)
    python scripts/house.py --top 20
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("espl", "envs", "agents", "trainer", "sandboxes", "leaderboard")


def sources(rev: str | None) -> dict[str, str]:
    """path -> text of every .py file of the rooms, at `rev` (None: the working tree)."""
    if rev is None:
        return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
                for room in ROOMS for p in sorted((ROOT / room).rglob("*.py")) if "__pycache__" not in p.parts}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *ROOMS], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout for n in names if n.endswith(".py")}


def functions(path: str, text: str) -> list[tuple[int, str]]:
    """(lines, "path:Class.name") of every function and method, nested ones included."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append(((child.end_lineno or child.lineno) - child.lineno + 1, f"{path}:{name}"))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(text), "")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", nargs="?", help="a git revision (default: the working tree)")
    ap.add_argument("--top", type=int, default=10, help="how many of the longest functions to list")
    args = ap.parse_args()
    files = sources(args.rev)
    print(f"house at {args.rev or 'the working tree'}")
    print(f"{'room':<12} {'files':>5} {'lines':>6}")
    for room in ROOMS:
        mine = [t for p, t in files.items() if p.split("/", 1)[0] == room]
        print(f"{room + '/':<12} {len(mine):>5} {sum(t.count(chr(10)) for t in mine):>6}")
    funcs = sorted((f for p, t in files.items() for f in functions(p, t)), reverse=True)
    print(f"\n{args.top} longest functions (lines):")
    for n, name in funcs[:args.top]:
        print(f"{n:>5}  {name}")


if __name__ == "__main__":
    main()
