"""The static leaderboard page: one self-contained `index.html` (data, script and styles inline).

No CDN, fonts or fetches (a Content-Security-Policy of `default-src 'none'` forbids them), so the page
works from `file://` with no network and can be copied anywhere (CI artifacts, GitHub Pages). The table
sorts by any column; each env gets an inline-SVG bar chart of mean reward ± 95 % CI; clicking a row or a
bar shows the agent's system prompt and settings. The URL hash keeps the view, so links can point at it:
`index.html#agent=<hash>&sort=score&dir=desc` (sort keys: rank, agent, rating, score, pass1, episodes,
`env:<env key>`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

PLACEHOLDER = "__ESPL_BOARD_JSON__"


def render_html(board: dict[str, Any]) -> str:
    template = (resources.files("espl.leaderboard") / "templates" / "leaderboard.html").read_text(encoding="utf-8")
    # The data sits in a <script type="application/json"> block: escaping "<", ">" and "&" keeps a prompt
    # that contains "</script>" or "<!--" from ending the block early (prompts are user text).
    data = (json.dumps(board, ensure_ascii=False, sort_keys=True)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return template.replace(PLACEHOLDER, data)


def write_html(board: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `out_dir/index.html` (the page) and `out_dir/board.json` (the same data); return the page path."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is not a directory; give a directory path")
    out.mkdir(parents=True, exist_ok=True)
    page = out / "index.html"
    page.write_text(render_html(board), encoding="utf-8")
    (out / "board.json").write_text(json.dumps(board, indent=2, ensure_ascii=False, sort_keys=True), encoding="utf-8")
    return page
