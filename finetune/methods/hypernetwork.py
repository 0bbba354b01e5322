"""Hypernetworks, the training type of AUTOMATIC1111's web UI: small residual MLPs on the attention keys' and values'
inputs of a frozen Stable Diffusion UNet.

One method, one place: the config (`HypernetworkConfig`, the web UI's options), the modules (`HypernetworkModule`:
`x + mlp(x)`, its layers `linear.0`, `linear.1`, ... built in the web UI's order so its state dict keys are the web
UI's), where they apply (`Hypernetwork.attach`: a pair per context width, the first on the input of every attention
`to_k`, the second on every `to_v` whose input has that width, as the web UI's `apply_hypernetwork` picks a pair by
`context.shape[2]`; queries and the base weights are untouched), and what is saved: `hypernetwork.safetensors`
(weights `<width>.<0|1>.linear.<i>.<weight|bias>`, the structure as JSON metadata) which `load_hypernetwork` reads
back into a pipeline's UNet, and `hypernetwork.pt`, the web UI's layout ({width: (k state dict, v state dict),
"layer_structure", "activation_func", "is_layer_norm", "use_dropout", "name", "step", ...}) written with plain
tensors and built-in types only, so `torch.load(weights_only=True)` reads it. Nothing here ever unpickles.

Written by hand: neither diffusers nor PEFT has hypernetworks; the structure follows the web UI's
modules/hypernetworks/hypernetwork.py (layer order, dropout rule, "Normal" init of std 0.01 for Linear and LayerNorm).
"""

from __future__ import annotations

import inspect
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from finetune.errors import UserError
from finetune.io import atomic_write_bytes

SAFETENSORS_FILE = "hypernetwork.safetensors"
WEBUI_FILE = "hypernetwork.pt"
METADATA_KEY = "hypernetwork"  # the safetensors metadata entry holding the structure as JSON
DROPOUT_P = 0.3  # the web UI's fixed dropout probability

# the web UI's activation names: its explicit ones plus every torch.nn activation class by its lower-case name
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    name.lower(): cls
    for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
    if issubclass(cls, torch.nn.Module) and cls.__module__ == "torch.nn.modules.activation"
}
ACTIVATIONS.update(
    {
        "linear": torch.nn.Identity,
        "relu": torch.nn.ReLU,
        "leakyrelu": torch.nn.LeakyReLU,
        "elu": torch.nn.ELU,
        "swish": torch.nn.Hardswish,
        "tanh": torch.nn.Tanh,
        "sigmoid": torch.nn.Sigmoid,
    }
)
WeightInit = Literal["Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"]


@dataclass
class HypernetworkConfig:
    layer_structure: list[float] = field(
        default_factory=lambda: [1.0, 2.0, 1.0]
    )  # MLP layer widths as multiples of the context width; starts and ends with 1 (the web UI's "1, 2, 1")
    activation: str = "linear"  # activation after each hidden layer: linear (none), relu, leakyrelu, swish, ...
    layer_norm: bool = False  # a LayerNorm after each layer (the web UI's is_layer_norm)
    dropout: bool = False  # dropout p=0.3 after the hidden layers while training (the web UI's use_dropout)
    activate_output: bool = False  # also apply the activation after the last layer
    weight_init: WeightInit = "Normal"  # initialisation: Normal (std 0.01, near identity) or Xavier/Kaiming
    sizes: list[int] = field(
        default_factory=list
    )  # context widths that get a (key, value) pair; [] = every width the UNet's to_k / to_v take
    name: str = "hypernetwork"  # the name written into the files (the web UI shows it)


def validate_hypernetwork(cfg: HypernetworkConfig) -> None:
    ls = cfg.layer_structure
    if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1 or any(not w > 0 for w in ls):
        raise UserError(
            f"hypernetwork.layer_structure must start and end with 1 and be positive, got {ls}; e.g. [1, 2, 1]"
        )
    if cfg.activation not in ACTIVATIONS:
        raise UserError(
            f"hypernetwork.activation {cfg.activation!r} is unknown; use one of linear, relu, leakyrelu, elu, swish, "
            "tanh, sigmoid, gelu, silu, mish"
        )
    if any(s < 1 for s in cfg.sizes):
        raise UserError(f"hypernetwork.sizes must be positive context widths, got {cfg.sizes}; [] takes them all")


class HypernetworkModule(torch.nn.Module):
    """`x + linear(x)`: the web UI's residual MLP over a context of width `dim` (same layers, same names)."""

    def __init__(self, dim: int, cfg: HypernetworkConfig, last_layer_dropout: bool = True):
        super().__init__()
        ls, layers = cfg.layer_structure, list[torch.nn.Module]()
        for i in range(len(ls) - 1):
            layers.append(torch.nn.Linear(int(dim * ls[i]), int(dim * ls[i + 1])))
            last = i >= len(ls) - 2
            if cfg.activation != "linear" and (not last or cfg.activate_output):
                layers.append(ACTIVATIONS[cfg.activation]())
            if cfg.layer_norm:
                layers.append(torch.nn.LayerNorm(int(dim * ls[i + 1])))
            # the web UI's rule: dropout after every hidden layer but the last one's, that one too by default
            if cfg.dropout and (i < len(ls) - 3 or last_layer_dropout and i < len(ls) - 2):
                layers.append(torch.nn.Dropout(p=DROPOUT_P))
        self.linear = torch.nn.Sequential(*layers)
        self.multiplier = 1.0  # the strength at sampling time; training always uses 1
        _init_weights(self.linear, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) * (1.0 if self.training else self.multiplier)


def _init_weights(layers: torch.nn.Sequential, cfg: HypernetworkConfig) -> None:
    nonlinearity: Literal["leaky_relu", "relu"] = "leaky_relu" if cfg.activation == "leakyrelu" else "relu"
    for layer in layers:
        if not isinstance(layer, torch.nn.Linear | torch.nn.LayerNorm):
            continue
        w, b = layer.weight.data, layer.bias.data
        if cfg.weight_init == "Normal" or isinstance(layer, torch.nn.LayerNorm):  # the web UI does both this way
            torch.nn.init.normal_(w, mean=0.0, std=0.01)
        elif cfg.weight_init == "XavierUniform":
            torch.nn.init.xavier_uniform_(w)
        elif cfg.weight_init == "XavierNormal":
            torch.nn.init.xavier_normal_(w)
        elif cfg.weight_init == "KaimingUniform":
            torch.nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity)
        else:
            torch.nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)
        torch.nn.init.zeros_(b)


class Hypernetwork(torch.nn.Module):
    """{context width: (key module, value module)}, applied through forward pre-hooks on a UNet's to_k / to_v."""

    def __init__(self, sizes: list[int], cfg: HypernetworkConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = torch.nn.ModuleDict(
            {str(s): torch.nn.ModuleList([HypernetworkModule(s, cfg), HypernetworkModule(s, cfg)]) for s in sizes}
        )
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def sizes(self) -> list[int]:
        return sorted(int(s) for s in self.layers)

    def pair(self, size: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        """The (key, value) modules of context width `size`, None when it has none."""
        if str(size) not in self.layers:
            return None
        pair = cast(torch.nn.ModuleList, self.layers[str(size)])  # a ModuleList of two, built in __init__
        return cast(HypernetworkModule, pair[0]), cast(HypernetworkModule, pair[1])

    def modules_by_size(self) -> list[tuple[int, int, HypernetworkModule]]:
        """(width, 0 for the key's module / 1 for the value's, module) for every module, widths in order."""
        return [(s, i, m) for s in self.sizes for i, m in enumerate(self.pair(s) or ())]

    def attach(self, unet: torch.nn.Module) -> int:
        """Hook the pair of each width onto every attention's to_k / to_v taking that width; returns how many."""
        self.detach()
        for module in unet.modules():
            to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
            if not isinstance(to_k, torch.nn.Linear) or not isinstance(to_v, torch.nn.Linear):
                continue
            if (pair := self.pair(to_k.in_features)) is not None:
                self._handles += [to_k.register_forward_pre_hook(_apply(pair[0]))]
                self._handles += [to_v.register_forward_pre_hook(_apply(pair[1]))]
        return len(self._handles) // 2

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def set_multiplier(self, strength: float) -> None:
        for _, _, module in self.modules_by_size():
            module.multiplier = strength


def _apply(module: HypernetworkModule):
    def hook(_linear, args):
        return (module(args[0]), *args[1:])

    return hook


def _install(unet: torch.nn.Module, network: Hypernetwork) -> int:
    """Make `network` the UNet's submodule `hypernetwork` and hook it in; one it had before is unhooked first, else
    its hooks would stay on to_k / to_v and the two would apply one after the other."""
    previous = getattr(unet, "hypernetwork", None)
    if isinstance(previous, Hypernetwork):
        previous.detach()
    unet.add_module("hypernetwork", network)
    return network.attach(unet)


def context_widths(unet: torch.nn.Module) -> list[int]:
    """Every input width of the UNet's attention key projections: its blocks' widths (self attention) and the text
    encoder's (cross attention), as the web UI's default enable_sizes lists them for SD (320, 640, 1280, 768)."""
    projections = (getattr(m, "to_k", None) for m in unet.modules())
    return sorted({p.in_features for p in projections if isinstance(p, torch.nn.Linear)})


def add_hypernetwork(unet: torch.nn.Module, cfg: HypernetworkConfig) -> list[torch.nn.Parameter]:
    """Attach a fresh hypernetwork to the (frozen) `unet` and return its parameters, the only ones that train.

    It becomes the UNet's submodule `hypernetwork`, so it moves, casts and is optimized with the UNet; the UNet's own
    weights stay frozen."""
    validate_hypernetwork(cfg)
    widths = context_widths(unet)
    if missing := sorted(set(cfg.sizes) - set(widths)):
        raise UserError(
            f"hypernetwork.sizes {missing} match no attention context of this UNet; its widths are {widths}"
        )
    network = Hypernetwork(cfg.sizes or widths, cfg)
    _install(unet, network)
    params = list(network.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def structure(cfg: HypernetworkConfig, step: int = 0) -> dict:
    """The web UI's header fields (what its Hypernetwork.load reads back), from our config."""
    return {
        "step": step,
        "name": cfg.name,
        "layer_structure": [float(w) for w in cfg.layer_structure],
        "activation_func": cfg.activation,
        "is_layer_norm": cfg.layer_norm,
        "weight_initialization": cfg.weight_init,
        "use_dropout": cfg.dropout,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
        "activate_output": cfg.activate_output,
        "last_layer_dropout": True,  # the web UI's default for new hypernetworks, which HypernetworkModule follows
    }


def save_hypernetwork(out_dir: Path, network: Hypernetwork, step: int = 0) -> list[Path]:
    """Write hypernetwork.safetensors (structure in its metadata) and the web UI's hypernetwork.pt; returns both."""
    tensors = {
        f"{size}.{i}.{key}": value.detach().float().cpu().contiguous()
        for size, i, module in network.modules_by_size()
        for key, value in module.state_dict().items()
    }
    header = structure(network.cfg, step)
    meta = {METADATA_KEY: json.dumps({**header, "sizes": network.sizes, "config": asdict(network.cfg)})}
    st_path, pt_path = Path(out_dir) / SAFETENSORS_FILE, Path(out_dir) / WEBUI_FILE
    atomic_write_bytes(st_path, safetensors_save(tensors, metadata=meta))
    # the web UI's layout: {int width: (k state dict, v state dict), header...}, plain dicts of tensors only
    webui: dict = {
        size: tuple(
            {k[len(f"{size}.{i}.") :]: t for k, t in tensors.items() if k.startswith(f"{size}.{i}.")} for i in (0, 1)
        )
        for size in network.sizes
    }
    buffer = io.BytesIO()
    torch.save({**webui, **header}, buffer)
    atomic_write_bytes(pt_path, buffer.getvalue())
    return [st_path, pt_path]


def load_hypernetwork(path: str | Path, unet: torch.nn.Module | None = None, strength: float = 1.0) -> Hypernetwork:
    """Read hypernetwork.safetensors (never a pickle) and, with `unet` (e.g. `pipe.unet`), hook it in for sampling."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(
            f"'{path}' is not a readable safetensors file ({e}); pass the {SAFETENSORS_FILE} a run wrote"
        ) from None
    if not raw:
        raise UserError(f"'{path}' has no '{METADATA_KEY}' metadata; pass the {SAFETENSORS_FILE} the recipe wrote")
    meta = json.loads(raw)
    network = Hypernetwork(meta["sizes"], HypernetworkConfig(**meta["config"]))
    network.load_state_dict({f"layers.{k}": v for k, v in tensors.items()})
    network.eval().requires_grad_(False)
    network.set_multiplier(strength)
    if unet is not None:
        if not set(network.sizes) & set(context_widths(unet)):  # checked first: the UNet stays as it was
            raise UserError(f"the hypernetwork's widths {network.sizes} match no attention of this UNet")
        weight = next(unet.parameters())
        network.to(device=weight.device, dtype=weight.dtype)
        _install(unet, network)
    return network
