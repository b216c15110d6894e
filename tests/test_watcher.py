"""The profiles watcher (troubadour/watcher.py) against the ways editors and tools change a file: real files,
real inotify (watchdog), the callback counted."""

import os
import shutil
import threading
import time

import pytest

from troubadour.watcher import POLL_S, ProfilesWatcher, file_digest


class Seen:
    def __init__(self):
        self.n = 0
        self.cond = threading.Condition()

    def __call__(self):
        with self.cond:
            self.n += 1
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.n >= n, timeout)


@pytest.fixture
def watch(tmp_path):
    made = []

    def start(path):
        seen = Seen()
        w = ProfilesWatcher(path, seen)
        w.start()
        made.append(w)
        return w, seen

    yield start
    for w in made:
        w.stop()


def write(path, text):
    path.write_text(text)


def test_plain_and_atomic_saves_each_count_once(tmp_path, watch):
    f = tmp_path / "game.toml"
    write(f, "a = 1\n")
    w, seen = watch(f)
    write(f, "a = 2\n")
    assert seen.wait_for(1)
    tmp = tmp_path / ".game.toml.tmp"
    write(tmp, "a = 3\n")
    os.replace(tmp, f)                        # VS Code, JetBrains "safe write", sed -i
    assert seen.wait_for(2)
    os.rename(f, tmp_path / "game.toml~")     # vim: original to a backup, a new file written
    write(f, "a = 4\n")
    assert seen.wait_for(3)
    time.sleep(3 * POLL_S)
    assert seen.n == 3                        # each save once; nothing for the backup file


def test_no_rereading_loop_after_an_edit(tmp_path, watch):
    """The watcher's own reads raise inotify events; they must not start further checks (the file was read
    four times a second forever). Only the slow poll reads it while nothing changes."""
    f = tmp_path / "game.toml"
    write(f, "a = 1\n")
    w, seen = watch(f)
    write(f, "a = 2\n")
    assert seen.wait_for(1)
    time.sleep(0.5)
    before = w.checks
    time.sleep(4 * POLL_S)
    assert w.checks - before <= 5, w.checks - before   # the poll alone: about one a second
    assert seen.n == 1


def watched_in_a_folder(tmp_path, watch):
    conf = tmp_path / "conf"
    conf.mkdir()
    f = conf / "game.toml"
    write(f, "a = 1\n")
    return conf, f, watch(f)[1]


def test_directory_deleted_and_recreated_keeps_watching(tmp_path, watch):
    conf, f, seen = watched_in_a_folder(tmp_path, watch)
    shutil.rmtree(conf)
    assert seen.wait_for(1)                   # gone: the server says "not found" and keeps its profiles
    conf.mkdir()
    write(f, "a = 2\n")
    assert seen.wait_for(2)
    write(f, "a = 3\n")                       # and edits in the new directory are seen
    assert seen.wait_for(3)


def test_directory_moved_away_and_replaced(tmp_path, watch):
    conf, f, seen = watched_in_a_folder(tmp_path, watch)
    conf.rename(tmp_path / "conf.old")
    conf.mkdir()
    write(f, "a = 2\n")
    assert seen.wait_for(1)                   # the new file (the gap may fall inside one debounce)
    time.sleep(0.5)
    n = seen.n
    write(tmp_path / "conf.old" / "game.toml", "a = 9\n")   # the old directory is not the path any more
    time.sleep(3 * POLL_S)
    assert seen.n == n
    write(f, "a = 3\n")
    assert seen.wait_for(n + 1)


def test_symlinked_file_repointed_and_target_edited(tmp_path, watch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = tmp_path / "a" / "game.toml", tmp_path / "b" / "game.toml"
    write(one, "a = 1\n")
    write(two, "a = 2\n")
    link = tmp_path / "game.toml"
    link.symlink_to(one)
    w, seen = watch(link)
    write(one, "a = 10\n")                    # the target edited in its own directory
    assert seen.wait_for(1)
    tmp = tmp_path / "game.toml.new"
    tmp.symlink_to(two)
    os.replace(tmp, link)                     # re-pointed (ln -sfn)
    assert seen.wait_for(2)
    write(two, "a = 20\n")                    # the new target's edits are seen
    assert seen.wait_for(3)
    assert file_digest(link) == file_digest(two)


def test_file_replaced_by_a_symlink(tmp_path, watch):
    f = tmp_path / "game.toml"
    write(f, "a = 1\n")
    (tmp_path / "other").mkdir()
    real = tmp_path / "other" / "real.toml"
    write(real, "a = 2\n")
    w, seen = watch(f)
    f.unlink()
    f.symlink_to(real)
    assert seen.wait_for(1)
    write(real, "a = 3\n")
    assert seen.wait_for(2)


def test_edit_before_start_is_seen(tmp_path):
    """The baseline is what the caller loaded; a change between loading and watching is a change."""
    f = tmp_path / "game.toml"
    write(f, "a = 1\n")
    loaded = file_digest(f)
    write(f, "a = 2\n")
    seen = Seen()
    w = ProfilesWatcher(f, seen, baseline=loaded)
    w.start()
    try:
        assert seen.wait_for(1, timeout=3 * POLL_S + 5)
    finally:
        w.stop()
