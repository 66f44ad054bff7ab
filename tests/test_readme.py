"""README's "write your own env" code runs as written, and its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_write_your_own_env_example_runs(tmp_path):
    (block,) = [b for b in _python_blocks() if "class EchoEnv" in b]
    block = block.replace('"acme/Echo-v0"', '"readme/Echo-v0"')
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["reward"] == 1.0 and scope["terminated"] is True
    assert scope["obs"] == [] and scope["info"]["reason"] == "correct"
    from espl.envs.checker import check_chat_env

    assert all(r.ok for r in check_chat_env("readme/Echo-v0"))


def test_readme_test_command_is_the_one_ci_runs():
    m = re.search(r"Run the tests:\n\n```bash\n(.+?)\n```", README)
    assert m, "README lost its test command"
    assert m.group(1) in (ROOT / ".ci" / "run").read_text()


def test_readme_example_matches_the_plugin_fixture():
    fixture = (ROOT / "tests/fixtures/acme_envs/acme_envs/__init__.py").read_text()
    for line in ('i = 2 * index + (self.split == "test")', "word = WORDS[i % len(WORDS)] + str(i // len(WORDS))",
                 "ok = task.answer in reply[\"content\"]"):
        assert line in README and line in fixture
