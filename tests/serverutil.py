"""The client tests' server: tests/servers.py's ServerProcess with its own tiny profiles (1 s tracks)."""

from __future__ import annotations

from pathlib import Path

import servers
from servers import free_port  # noqa: F401  (re-exported for the client tests)

TEST_PROFILES = """
[game]
title = "Client test"
genre = "orchestral"

[defaults]
duration = 1.0
seed = 7
variants = 1

[contexts.menu]
prompt = "calm piano with soft strings"

[contexts.battle]
prompt = "epic orchestral battle theme with drums"
variants = 2
bpm = 140

[contexts.explore]
prompt = "exploration music for a forest level with flutes"
"""


class ServerProcess(servers.ServerProcess):
    def __init__(self, model, workdir, profiles: str | None = TEST_PROFILES, port: int | None = None,
                 extra_args: tuple = ()):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = None
        if profiles is not None:
            path = workdir / "profiles.toml"
            path.write_text(profiles)
        super().__init__(model, workdir, path, args=extra_args, port=port)
