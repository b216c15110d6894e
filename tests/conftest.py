import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # tests never touch the network


@pytest.fixture(scope="session", autouse=True)
def native_kernel_dir(tmp_path_factory) -> Path:
    """The native decode kernel builds into the session's temporary folder, not the user's ~/.cache."""
    path = tmp_path_factory.mktemp("native")
    os.environ["TROUBADOUR_NATIVE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight MusicGen checkpoint, written through the same code as `make-test-model`."""
    from troubadour.testmodel import build_test_model

    return build_test_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def backend(tiny_model):
    from troubadour.backends import load_backend

    return load_backend(str(tiny_model), "cpu")


@pytest.fixture(scope="session")
def engine(backend):
    from troubadour.engine import Engine

    return Engine(backend)


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running the installed `troubadour` console script in a subprocess."""
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def native_kernel_expected() -> bool:
    """Where the native decode kernel must build: Linux with a C compiler (GCC's OpenMP; .ci/run installs
    gcc). Elsewhere (no compiler, Apple clang without -fopenmp) the engine falls back and says why."""
    import shutil

    return sys.platform.startswith("linux") and any(shutil.which(c) for c in ("cc", "gcc", "clang"))


def troubadour_cmd() -> list[str]:
    return [sys.executable, "-m", "troubadour.cli"]


@pytest.fixture
def nan_for(backend):
    """Text-encoder output made NaN for prompts containing the word in `word[0]` (as fp16 overflow does for
    some prompts on a GPU): the NaN stays in that row."""
    word = [None]

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        for row, text in enumerate(backend.tokenizer.batch_decode(ids)):
            if word[0] and word[0] in text:
                output.last_hidden_state[row] = float("nan")
        return output

    handle = backend.model.text_encoder.register_forward_hook(hook, with_kwargs=True)
    yield word
    handle.remove()
