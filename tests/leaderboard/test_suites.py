"""Suites: the built-in TOML files load; a user's TOML file loads; bad fields name themselves."""

from __future__ import annotations

import pytest

from espl.envs.registration import env_ids
from espl.leaderboard.suites import SuiteError, builtin_suites, env_key, load_suite


def test_builtin_suites_load():
    assert {"math-core", "tools", "code", "smoke"} <= set(builtin_suites())
    for name in builtin_suites():
        suite = load_suite(name)
        assert suite.name == name and suite.entries and suite.num_episodes > 0
        assert all(e.split == "test" for e in suite.entries)  # leaderboards score held-out tasks


def test_builtin_math_suites_name_registered_envs():
    registered = set(env_ids())
    for name in ("math-core", "smoke"):
        assert {e.env_id for e in load_suite(name).entries} <= registered


def test_user_suite_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'description = "two configs of one env"\n'
        '[[env]]\nid = "espl/Math-v0"\nepisodes = 3\nseed = 100\n'
        '[[env]]\nid = "espl/Math-v0"\nepisodes = 2\nsplit = "train"\nsamples = 4\n'
        '[env.kwargs]\nmax_attempts = 2\n'
    )
    suite = load_suite(str(path))
    assert suite.name == "mine" and suite.num_episodes == 3 + 2 * 4
    a, b = suite.entries
    assert list(a.seeds()) == [100, 101, 102] and a.env_key == "espl/Math-v0"
    assert b.env_key.startswith("espl/Math-v0[train:") and b.make_kwargs() == {"split": "train", "max_attempts": 2}
    assert suite.content_hash == load_suite(path).content_hash
    assert env_key("espl/Math-v0", "test", {"max_attempts": 2}) != env_key("espl/Math-v0", "test", {})


@pytest.mark.parametrize("body,match", [
    ('[[env]]\nid = "espl/Math-v0"\n', "'episodes' is required"),
    ('[[env]]\nid = "espl/Math-v0"\nepisodes = 0\n', "'episodes' must be an integer >= 1"),
    ('[[env]]\nid = "espl/Math-v0"\nepisodes = 2\nsplit = "dev"\n', "'split' must be one of"),
    ('[[env]]\nid = "espl/Math-v0"\nepisodes = 2\nepisode = 3\n', "unknown keys \\['episode'\\]"),
    ('[[env]]\nepisodes = 2\n', "'id' must be an env id"),
    ('name = "x"\n', "at least one \\[\\[env\\]\\]"),
    ('[[env]]\nid = "a"\nepisodes = 1\n[[env]]\nid = "a"\nepisodes = 2\n', "listed twice"),
    ('[[env]]\nid = "a"\nepisodes = 1\n[env.kwargs]\nsplit = "train"\n', "not in its kwargs"),
    ('[[env]\n', "not valid TOML"),
])
def test_bad_suite_files(tmp_path, body, match):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(SuiteError, match=match):
        load_suite(path)


def test_unknown_suite_lists_builtins(tmp_path):
    with pytest.raises(SuiteError, match="built-in suites: .*math-core"):
        load_suite("math-cor")
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "missing.toml")
