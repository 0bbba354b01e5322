"""Strict configs: unknown keys, wrong types and bad files fail at once with one clear line."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from finetune.config import load_config, save_config
from finetune.errors import UserError


@dataclass
class Optim:
    lr: float = 1e-4  # learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    name: Literal["adamw", "sgd"] = "adamw"  # optimizer


@dataclass
class Cfg:
    optim: Optim = field(default_factory=Optim)
    steps: int = 10  # steps
    out: str = "x"  # output dir
    resume: str | None = None  # resume
    flag: bool = False  # a flag


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_yaml_and_overrides(tmp_path):
    cfg = load_config(
        Cfg, write(tmp_path, "steps: 5\noptim:\n  lr: 1e-3\n"), ["optim.betas=[0.5, 0.99]", "resume=latest"]
    )
    assert cfg.steps == 5 and cfg.optim.lr == 1e-3 and cfg.optim.betas == [0.5, 0.99] and cfg.resume == "latest"
    cfg = load_config(Cfg, None, ["optim.lr=3e-2", "flag=true", "resume=null"])
    assert cfg.optim.lr == pytest.approx(0.03) and cfg.flag is True and cfg.resume is None


def test_unknown_key_names_nearest(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'optim.lrr'.*did you mean 'optim.lr'"):
        load_config(Cfg, write(tmp_path, "optim:\n  lrr: 1\n"))
    with pytest.raises(UserError, match=r"unknown key 'stepz'.*did you mean 'steps'"):
        load_config(Cfg, None, ["stepz=3"])


def test_wrong_types(tmp_path):
    with pytest.raises(UserError, match=r"'steps' must be int"):
        load_config(Cfg, None, ["steps=abc"])
    with pytest.raises(UserError, match=r"'flag' must be bool"):
        load_config(Cfg, None, ["flag=3"])
    with pytest.raises(UserError, match=r"'optim.name' must be one of.*did you mean 'adamw'"):
        load_config(Cfg, None, ["optim.name=adamww"])
    with pytest.raises(UserError, match=r"'optim.betas\[1\]' must be float"):
        load_config(Cfg, None, ["optim.betas=[0.5, x]"])


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(Cfg, str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match=r"c.yaml:\d+: not valid YAML"):
        load_config(Cfg, write(tmp_path, "steps: 1\noptim: [1, 2\nflag: true\n"))
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(Cfg, write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(UserError, match="key=value"):
        load_config(Cfg, None, ["steps"])


def test_save_round_trip(tmp_path):
    cfg = load_config(Cfg, None, ["optim.lr=0.5", "steps=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Cfg, str(tmp_path / "config.yaml")) == cfg


@dataclass
class Recipe:
    optim: Optim = field(default_factory=lambda: Optim(lr=0.5, name="sgd"))  # recipe-specific defaults


def test_partial_section_keeps_recipe_defaults(tmp_path):
    cfg = load_config(Recipe, None, ["optim.betas=[0.1, 0.2]"])
    assert cfg.optim.lr == 0.5 and cfg.optim.name == "sgd" and cfg.optim.betas == [0.1, 0.2]
    cfg = load_config(Recipe, write(tmp_path, "optim:\n  lr: 0.1\n"))
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.1
