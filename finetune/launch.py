"""`finetune train RECIPE`: a recipe run through accelerate's own launch machinery, keeping the one-line promise.

`accelerate launch` turns any failed recipe into its own CalledProcessError traceback and exit code 1, burying the
recipe's single `error:` line. This runs the same thing (accelerate's launch parser, config file handling and
single- or multi-process launchers) and exits with the recipe's exit code, adding nothing to what the recipe
printed. Written by hand: only the lookup of the recipe and the translation of the launchers' failure exceptions.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import finetune
from finetune.errors import UserError

RECIPES = {  # `finetune train NAME` -> recipes/<file>
    "lm": "train_lm.py",
    "sd": "train_sd.py",
    "gan": "gan.py",
    "vae": "vae.py",
    "autoencoder": "train_autoencoder.py",
}
ACCELERATE_CONFIG = "accelerate_config.yaml"  # the project's, at the repository root next to recipes/


def recipes_dir() -> Path:
    """recipes/ lives at the repository root, beside the (editable-installed) package, not inside it."""
    folder = Path(finetune.__file__).resolve().parent.parent / "recipes"
    if not all((folder / f).is_file() for f in RECIPES.values()):
        raise UserError(
            f"the recipes are not next to the finetune package (looked in {folder}); install the "
            "project from its source checkout with `pip install -e .`, or run `accelerate launch recipes/...`"
        )
    return folder


def recipe_path(name: str) -> Path:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return recipes_dir() / RECIPES[name]


def print_recipe_help(name: str) -> None:
    """Recipe `name`'s own --help (its docstring and every config key with type, default and meaning) in this process.

    The recipe's parser builds the key list from its config dataclass, so `finetune train NAME --help` shows exactly
    what `python recipes/<file> --help` shows; argparse names the usage line after argv[0].
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"finetune_recipe_{name}", recipe_path(name))
    assert spec is not None and spec.loader is not None  # a .py file always has a spec and a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # typing.get_type_hints and inspect.getsource find the recipe's classes here
    spec.loader.exec_module(module)
    argv0, sys.argv[0] = sys.argv[0], f"finetune train {name}"
    try:
        module.main(["--help"])
    except SystemExit as e:  # argparse exits 0 after printing help
        if e.code:
            raise
    finally:
        sys.argv[0] = argv0


def accelerate_config(path: str | None) -> Path:
    """--accelerate-config, or the project's accelerate_config.yaml; checked here so a bad file is one line."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = Path(path) if path else recipes_dir().parent / ACCELERATE_CONFIG
    if not config.is_file():
        raise UserError(
            f"accelerate config {config} does not exist; pass --accelerate-config FILE (`accelerate config` writes one)"
        )
    try:
        load_config_from_file(str(config))
    except Exception as e:  # yaml/json syntax or a key accelerate does not know
        raise UserError(
            f"accelerate config {config} is not valid: {str(e).splitlines()[0]}; "
            "compare it with the project's accelerate_config.yaml"
        ) from None
    return config


def launch(name: str, recipe_args: list[str], config: str | None = None) -> int:
    """Run recipe `name` with `recipe_args` under accelerate; returns the recipe's exit code."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    script = recipe_path(name)
    args = launch_command_parser().parse_args(
        ["--config_file", str(accelerate_config(config)), str(script), *recipe_args]
    )
    try:
        launch_command(args)
    except subprocess.CalledProcessError as e:  # the single-process launcher; the recipe has said why
        return _exit_code(e.returncode)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as e:
        failure = _child_failure(e)
        if failure is None:
            raise
        return _exit_code(failure)
    return 0


def _child_failure(e: Exception) -> int | None:
    """The first failed process's exit code when torch.distributed.run (the multi-process launcher) raised."""
    try:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    except ImportError:
        return None
    return e.get_first_failure()[1].exitcode if isinstance(e, ChildFailedError) else None


def _exit_code(returncode: int) -> int:
    """A process killed by a signal reports -signum; a shell reports that as 128 + signum, and so do we."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        print(
            f"error: the recipe was killed by {name} (out of memory, or stopped from outside)",
            file=sys.stderr,
            flush=True,
        )
        return 128 - returncode
    return returncode
