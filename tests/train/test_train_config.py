"""Loop counters are checked before any model loads: one `error:` line naming the key, no output directory."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from finetune.errors import UserError
from finetune.train.loop import TrainConfig, validate_train_config

BAD = [
    ("grad_accum", 0),
    ("batch_size", 0),
    ("max_steps", 0),
    ("log_every", 0),
    ("eval_every", -1),
    ("save_every", -1),
    ("keep_last", -1),
    ("early_stopping_patience", -1),
    ("max_consecutive_nonfinite", -1),
    ("max_grad_norm", -0.5),
    ("max_grad_norm", float("nan")),
]


def test_defaults_and_the_smallest_working_values_pass():
    validate_train_config(TrainConfig())
    validate_train_config(
        TrainConfig(
            max_steps=1,
            batch_size=1,
            grad_accum=1,
            log_every=1,
            eval_every=0,
            save_every=0,
            keep_last=0,
            early_stopping_patience=0,
            max_consecutive_nonfinite=0,
            max_grad_norm=0.0,
        )
    )


@pytest.mark.parametrize("key,value", BAD)
def test_a_value_below_its_minimum_is_refused_naming_the_key(key, value):
    with pytest.raises(UserError, match=rf"^train\.{key}=\S+ must be >= \d") as e:
        validate_train_config(dataclasses.replace(TrainConfig(), **{key: value}))
    assert "\n" not in str(e.value)


def test_a_train_section_without_some_keys_is_checked_on_the_ones_it_has():
    @dataclasses.dataclass
    class Partial:  # like the GAN's train section: no grad_accum, no early stopping
        max_steps: int = 10
        batch_size: int = 0

    with pytest.raises(UserError, match=r"train\.batch_size=0"):
        validate_train_config(Partial())


# Each recipe refuses the value in its own check, before a model, a dataset or the output directory exists.
RECIPES = [
    ("recipes.train_lm", ["data.train_file=unused.jsonl", "train.grad_accum=0"], "train.grad_accum=0"),
    ("recipes.train_sd", ["train.grad_accum=0"], "train.grad_accum=0"),
    ("recipes.vae", ["train.batch_size=0"], "train.batch_size=0"),
    ("recipes.train_autoencoder", ["train.max_steps=0"], "train.max_steps=0"),
    ("recipes.gan", ["train.log_every=0"], "train.log_every=0"),
]


@pytest.mark.parametrize("module,overrides,named", RECIPES, ids=[r[0] for r in RECIPES])
def test_every_recipe_refuses_before_writing_anything(module, overrides, named, tmp_path, capsys):
    main = importlib.import_module(module).main
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main([f"train.output_dir={out}", *overrides])
    assert e.value.code == 2
    err = capsys.readouterr().err  # may hold import-time library notices; the verdict is its one error line
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert named in line
    assert not out.exists()
