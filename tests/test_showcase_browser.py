"""The baked showcase page (index.html) in a real headless Chromium, served over http like a web server would.

Needs chromium + chromedriver (Debian: apt-get install chromium chromium-driver) and selenium; skipped only
when no Chromium is installed.
"""

import functools
import http.server
import json
import shutil
import threading

import pytest

from troubadour.bake import bake
from troubadour.bake_sources import EngineSource
from troubadour.prompts import presets

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

# This sandbox has no network: background services would only add failed requests to the logs.
CHROME_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--autoplay-policy=no-user-gesture-required", "--mute-audio")

PROFILES = """
[game]
title = "Browser <Test> & Co"
genre = "chiptune"

[defaults]
duration = 2.0
seed = 5

[contexts.menu]
mood = "happy"
bpm = 120
variants = 2

[contexts.cave]
prompt = "mysterious ambient cave drones"
loop = false
"""


@pytest.fixture(scope="module")
def baked(engine, tmp_path_factory):
    """One wav bake and an ogg re-bake of a copy of it (the copy's raw cache means no new generation)."""
    root = tmp_path_factory.mktemp("showcase")
    profiles = root / "profiles.toml"
    profiles.write_text(PROFILES)
    wav = root / "wav"
    bake(profiles, wav, EngineSource(engine), progress=False, log=lambda m: None)
    ogg = root / "ogg"
    shutil.copytree(wav, ogg)
    report = bake(profiles, ogg, EngineSource(engine), fmt="ogg", sample_rate=44100, progress=False,
                  log=lambda m: None)
    assert report.generated == 0
    return {"wav": wav, "ogg": ogg}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver is missing (Debian: apt-get install chromium-driver)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (*CHROME_ARGS, f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def serve():
    servers = []

    def start(directory):
        handler = functools.partial(_Quiet, directory=str(directory))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


AUDIO_STATE = """
return Array.from(document.querySelectorAll('audio')).map(a => ({
  src: a.getAttribute('src'), duration: a.duration, ready: a.readyState,
  error: a.error ? a.error.code : null}));
"""


@pytest.mark.parametrize("fmt", ["wav", "ogg"])
def test_showcase_page_in_chromium(baked, browser, serve, fmt):
    folder = baked[fmt]
    manifest = json.loads((folder / "manifest.json").read_text())
    browser.get_log("browser")     # drop anything left from an earlier page
    browser.get(serve(folder) + "index.html")
    assert "Browser <Test> & Co" in browser.title

    expected = {v["file"]: v for c in manifest["contexts"].values() for v in c["variants"]}
    # preload="metadata": every player learns its duration without being played.
    from selenium.webdriver.support.ui import WebDriverWait

    def all_loaded(drv):
        state = drv.execute_script(AUDIO_STATE)
        return state if state and all(s["ready"] >= 1 or s["error"] for s in state) else False

    state = WebDriverWait(browser, 30, poll_frequency=0.2).until(all_loaded)
    assert sorted(s["src"] for s in state) == sorted(expected)
    for s in state:
        assert s["error"] is None, s
        assert s["duration"] is not None and 0 < s["duration"] < 1e6, s       # finite and positive
        assert abs(s["duration"] - expected[s["src"]]["duration"]) <= 0.1, s

    for name, c in manifest["contexts"].items():
        section = browser.find_element("id", name)
        assert section.tag_name == "section"
        assert section.find_element("tag name", "h2").text == name
        assert len(section.find_elements("tag name", "audio")) == len(c["variants"])
        assert len(section.find_elements("css selector", "svg.wave")) == len(c["variants"])
        looped = len(c["variants"]) if c["loop"] else 0
        assert len(section.find_elements("css selector", "svg.wave rect.region")) == looped
        assert len(section.find_elements("css selector", "button.loopplay")) == looped
        assert c["prompt"] in section.text
    moods = browser.find_elements("css selector", "[id='presets:moods'] tbody tr")
    assert len(moods) == len(presets()["moods"])
    happy = browser.find_element("id", "mood:happy")
    assert "menu" in happy.text                            # the context using the preset is listed there
    assert browser.find_element("css selector", "#menu a.tag[href='#mood:happy']")

    # "play looped" fetches and decodes the file and loops its loop region with Web Audio.
    button = browser.find_element("css selector", "#menu button.loopplay")
    button.click()
    WebDriverWait(browser, 20, poll_frequency=0.1).until(lambda d: button.get_attribute("data-state") == "playing")
    button.click()
    assert button.get_attribute("data-state") == "stopped"

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
