#!/usr/bin/env bash
# Lint (ruff) and type-check (mypy) the library, as configured in pyproject.toml. Run by .ci/run before the
# tests; run it yourself with `bash scripts/lint.sh` (pip install 'espl-gym[dev]' brings both tools).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check espl agents envs trainer sandboxes leaderboard
# mypy needs the package layout (`espl.agents` = agents/, ...): a symlink tree of it in a temp dir
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/espl"
for f in espl/*; do ln -s "$PWD/$f" "$tree/espl/$(basename "$f")"; done
for room in envs agents trainer sandboxes leaderboard; do ln -s "$PWD/$room" "$tree/espl/$room"; done
(cd "$tree" && mypy --config-file "$OLDPWD/pyproject.toml" -p espl)
