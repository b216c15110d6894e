"""README's two set-up commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> dict:
    text = (ROOT / "README.md").read_text()
    found = dict(re.findall(r"<!-- (serve|test) -->\n```(?:bash|sh)\n(.+?)\n```", text))
    assert set(found) == {"serve", "test"}, "README must mark its serve and test commands"
    return found


def test_ci_runs_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()["test"] in ci.splitlines()


def test_readme_commands_install_cpu_torch_before_the_package():
    for cmd in readme_commands().values():
        assert cmd.index("torch==") < cmd.index("pip install -q -e")
