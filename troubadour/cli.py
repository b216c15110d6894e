"""`troubadour` command line: generate, make-test-model, serve, fetch, prefetch, status, cache."""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import sys

from . import __version__
from .backends.base import DEFAULT_MODEL
from .errors import EngineFault, ModelLoadError, TroubadourError

# OpenMP threads (PyTorch's and the native kernel's) spin ~300 000 times waiting for work by default. When the
# game or its editor runs on the same cores, spinning threads hold cores the others need: one busy core made a
# generation 2-3x slower on 2 cores. A short spin keeps the speed on an idle machine (bench/contention.py).
# Set before torch loads OpenMP; a user's own setting wins.
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"

EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_NO_SERVER = 4
EXIT_FAILED = 5       # bake: some tracks could not be generated (the others are done)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=os.environ.get("TROUBADOUR_MODEL", DEFAULT_MODEL),
                   help="hub id (facebook/musicgen-small|medium|large, stereo variants) or a local checkpoint "
                        f"directory (default {DEFAULT_MODEL}, or $TROUBADOUR_MODEL)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                   help="decoder precision: auto (fp32 on CPU, fp16 on GPU); int8 (CPU) is ~2x faster at a "
                        "measured quality cost; bf16 is no faster than the native fp32 kernel on CPUs "
                        "(bench/README.md)")
    p.add_argument("--threads", type=int, help="CPU threads for the model (default: PyTorch's choice)")
    p.add_argument("--compile", action="store_true", dest="compile_step",
                   help="run the decode step through torch.compile (CUDA graphs on an NVIDIA GPU); compiles on "
                        "first use. For GPUs: on CPUs ~0.2x the default's speed (bench/README.md)")


def _add_param_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, help="seconds (default 10, or the context's)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int, dest="top_k")
    p.add_argument("--top-p", type=float, dest="top_p", help="nucleus sampling; 0 = off (use top-k)")
    p.add_argument("--cfg", type=float, dest="cfg_coef", help="classifier-free guidance (1-100)")
    p.add_argument("--seed", type=int, help="integer seed; the same seed and settings give the same audio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="troubadour", description="MusicGen music server for games.")
    parser.add_argument("--version", action="version", version=f"troubadour {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate tracks to files")
    g.add_argument("prompt", nargs="?", help="text description of the music (asked for on a terminal if omitted)")
    g.add_argument("--context", help="a game context from the profiles file (e.g. battle)")
    g.add_argument("--profiles", help="profiles TOML file (default: the bundled profiles)")
    g.add_argument("--mood", help="mood preset or free text (uplifting, tense, sad, mysterious, ...)")
    g.add_argument("--genre", help="genre preset or free text (orchestral, electronic, jazz, chiptune, ...)")
    g.add_argument("--fix", help="troubleshooting preset: repetitive, chaotic, bland, ...")
    _add_param_args(g)
    g.add_argument("--variations", type=int, default=None, help="number of variations (seeds seed, seed+1, ...)")
    g.add_argument("--out", default="out", help="output directory (default ./out)")
    g.add_argument("--format", choices=["wav", "ogg"], default="wav")
    g.add_argument("--loudness", type=float, default=None, help="target integrated loudness in LUFS (default -16)")
    _add_model_args(g)

    m = sub.add_parser("make-test-model", help="write a tiny random-weight MusicGen checkpoint (makes noise)")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--stereo", action="store_true")
    m.add_argument("--melody", action="store_true", help="a musicgen-melody-style checkpoint (follows a theme)")

    c = sub.add_parser("cache", help="inspect or clear a track cache")
    c.add_argument("action", choices=["ls", "stats", "clear"])
    c.add_argument("--cache", default="troubadour-cache", help="cache directory (default ./troubadour-cache)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=cmd_cache)

    for name, fn in _extra_commands().items():
        fn(sub)
    return parser


def _extra_commands() -> dict:
    """Subcommands that live with their feature (server, client, cache) register themselves here."""
    found = {}
    for mod in ("serve_cli", "client_cli", "auth", "bake_cli"):
        try:
            module = __import__(f"troubadour.{mod}", fromlist=["add_cli"])
        except ImportError:
            continue
        if hasattr(module, "add_cli"):
            found[mod] = module.add_cli
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "make-test-model":
            return cmd_make_test_model(args)
        return args.func(args)
    except ModelLoadError as e:
        print(f"troubadour: {e.message}", file=sys.stderr)
        return EXIT_MODEL
    except TroubadourError as e:
        print(f"troubadour: error: {e.message}", file=sys.stderr)
        # (bake --server: a server that does not answer is exit 4, as for fetch/prefetch/status)
        if e.code in ("engine_error", "engine_dead"):   # (bake --server: the server's model failed)
            return EXIT_FAILED
        return EXIT_NO_SERVER if e.code in ("connection_lost", "timeout") else EXIT_USAGE
    except EngineFault as e:   # generate: the model failed (bake reports these per context)
        print(f"troubadour: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("troubadour: interrupted", file=sys.stderr)
        return 130
    except sqlite3.Error as e:   # the cache's database (diskcache): a full disk, a read-only folder
        print(f"troubadour: error: track cache: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # an output path that cannot be written (a file in the way, no permission, disk full)
        where = f": {e.filename}" if e.filename else ""
        print(f"troubadour: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


def cmd_make_test_model(args) -> int:
    from transformers.utils import logging as hf_logging

    from .testmodel import build_test_model

    # (its config notes that the pad token is the vocabulary size, MusicGen's own layout; and a shard-writing
    # progress bar: noise in a CI log)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = build_test_model(args.dir, seed=args.seed, stereo=args.stereo, melody=args.melody)
    print(path)
    return 0


def cmd_cache(args) -> int:
    import json
    from pathlib import Path

    from .cache import LS_PROMPT_CHARS, TrackCache

    if not (Path(args.cache) / "cache.db").is_file():   # (opening any other folder would make a cache in it)
        raise TroubadourError(f"no track cache at {args.cache} (a cache folder holds cache.db)", code="not_found",
                              field="cache")
    with TrackCache(args.cache) as cache:
        if args.action == "clear":
            n = cache.clear()
            print(json.dumps({"removed": n}) if args.json else f"removed {n} tracks")
        elif args.action == "stats":   # (session counts and pins belong to the process holding them)
            st = {k: v for k, v in cache.stats().items() if not k.startswith("session_") and k != "pinned"}
            print(json.dumps(st) if args.json else "\n".join(f"{k}: {v}" for k, v in st.items()))
        else:
            rows = cache.ls()
            if args.json:
                print(json.dumps(rows))
            for r in rows if not args.json else []:
                ctx = f"{r.get('context')}#{r.get('variant')}" if r.get("context") else "-"
                prompt = "".join(c if c.isprintable() else "\ufffd" for c in str(r["prompt"]))   # from the network
                prompt = prompt if len(prompt) <= LS_PROMPT_CHARS else prompt[:LS_PROMPT_CHARS - 1] + "\u2026"
                print(f"{r['key']}  {r['duration']:6.1f}s  {r['bytes'] / 1e6:7.2f} MB  {ctx:20}  {prompt}")
    return 0


def plan_from_args(args):
    """Turn generate's arguments into a Plan, validating everything before the model loads."""
    from .generate import Plan
    from .params import GenParams, validate_prompt
    from .profiles import load_and_warn
    from .prompts import apply_presets, compose_prompt

    overrides = {k: getattr(args, k) for k in GenParams.names() if getattr(args, k, None) is not None}
    if args.loudness is not None and not -40 <= args.loudness <= -5:   # the range profiles and bake accept
        raise TroubadourError(f"--loudness must be in [-40, -5] LUFS, got {args.loudness}", code="invalid_param",
                              field="loudness")
    if args.context:
        if args.prompt:
            raise TroubadourError("give either a PROMPT or --context, not both", code="invalid_param",
                                  field="context")
        for name in ("mood", "genre", "fix"):   # a context has its own; ignoring them silently misleads
            if getattr(args, name):
                raise TroubadourError(f"--{name} builds a prompt and does not combine with --context: set "
                                      f"{name} in the profiles file", code="invalid_param", field=name)
        profiles = load_and_warn(args.profiles)
        # strict: files named after a context that is not in the profiles, made of fallback music, would be
        # a typo's output (and "Battle" would overwrite battle's files)
        ctx = profiles.get(args.context, strict=True)
        theme = profiles.get(ctx.theme) if ctx.theme else None
        base = ctx.params.to_dict()
        variants = args.variations if args.variations is not None else ctx.variants
        loudness = ctx.loudness
        prompt, context = ctx.prompt, ctx.name
        looping = ctx.loop
    else:
        prompt = args.prompt
        if not prompt and not (args.mood or args.genre):
            prompt = _ask_prompt()
        if args.mood or args.genre or args.fix:
            prompt = compose_prompt(genre=args.genre, mood=args.mood, fix=args.fix, extra=prompt)
        base = apply_presets(GenParams().to_dict(), genre=args.genre, mood=args.mood, fix=args.fix)
        variants = args.variations if args.variations is not None else 1
        loudness, context, theme, looping = -16.0, None, None, False
    if "seed" not in overrides and not args.context:
        overrides["seed"] = secrets.randbelow(2**31)   # recorded in the metadata, so any take can be redone
    params = GenParams(**{**base, **overrides}).validate()
    if not 1 <= variants <= 16:
        raise TroubadourError(f"--variations must be in [1, 16], got {variants}", code="invalid_param",
                              field="variations")
    plan = Plan(validate_prompt(prompt), params, variants, context,
                args.loudness if args.loudness is not None else loudness)
    if looping:   # generate renders raw takes to listen to; games loop what bake makes of them
        print(f"troubadour: note: {context!r} loops in games; these files are raw takes without loop points "
              "(`troubadour bake` writes the seamless loops, as the server streams them)", file=sys.stderr)
    return plan, theme


def make_engine(args, same_thread: bool = True):
    """Load the model and build the engine from --model/--device/--precision/--threads/--compile.
    `same_thread`: the engine runs only on this thread (generate; the server hands it to its engine thread)."""
    from .backends import load_backend
    from .engine import Engine

    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise TroubadourError(f"--threads must be >= 1, got {threads}", code="invalid_param", field="threads")
    if threads:
        import torch
        torch.set_num_threads(threads)
    return Engine(load_backend(args.model, args.device), precision=args.precision,
                  compile_step=getattr(args, "compile_step", False), same_thread=same_thread)


def _ask_prompt() -> str:
    if not sys.stdin.isatty():
        raise TroubadourError("no prompt given: pass PROMPT, --context NAME or --mood/--genre",
                              code="empty_prompt", field="prompt")
    return input("Describe the music (e.g. 'calm piano with soft strings'): ").strip()


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from .generate import render

    import dataclasses

    from .engine import Job

    plan, theme = plan_from_args(args)
    engine = make_engine(args)
    backend = engine.backend
    if theme is not None:
        if not backend.info.melody:
            raise TroubadourError(f"context {plan.context!r} follows theme {theme.name!r}, which needs a "
                                  f"musicgen-melody checkpoint; {backend.info.model_id} is text-only",
                                  code="profile_error", field="theme")
        print(f"rendering theme {theme.name!r} first", file=sys.stderr)
        melody = engine.generate([Job(theme.prompt, theme.params_for(0))])[0].audio
        plan = dataclasses.replace(plan, melody=melody)
    engine.validate(plan.jobs())
    print(f"model {backend.info.model_id} on {backend.info.device}; prompt: {plan.prompt}", file=sys.stderr)
    bar = tqdm(total=engine.steps_for(plan.params.duration), unit="step", desc="generating", file=sys.stderr,
               disable=None)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        paths = render(engine, plan, args.out, args.format, progress=progress)
    finally:
        bar.close()
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
