"""Digits-sized networks for the GAN and VAE recipes: generators, discriminators/critics and a VAE.

The digits world (scikit-learn's 8x8 handwriting, upsampled to 16 or 32 px) needs networks of a few
ten thousand parameters that train in seconds on one CPU thread. Two families:

- "mlp": fully connected layers over the flattened image (fast; the benchmark grid uses these);
- "conv": DCGAN-shaped nets (Radford et al. 2016): strided transposed convolutions up from a 4x4 map
  in the generator, strided convolutions down in the discriminator.

Images are grey, N x 1 x S x S in [-1, 1] (generator output is tanh). Discriminators return one raw,
unbounded score per image (shape N): logits for the minimax losses, critic values for WGAN. They
contain no batch norm, because the WGAN-GP penalty is defined per sample.

No library ships GAN/VAE nets for 8x8 inputs (diffusers' smallest VAE works on latents, not pixels),
so these few layers are written by hand. `image_grid_png` renders sample grids (and `reconstructions_png` rows of
images over their reconstructions) with PIL because torchvision (which has `make_grid`) cannot be installed here.
"""

from __future__ import annotations

import io
import math
from typing import Literal

import torch
from torch import Tensor, nn

from finetune.errors import UserError

Arch = Literal["mlp", "conv"]


def check_image_size(arch: str, image_size: int) -> None:
    """Raise UserError unless `arch` can produce `image_size` x `image_size` images."""
    if arch not in ("mlp", "conv"):
        raise UserError(f"arch={arch!r} is unknown; choose 'mlp' or 'conv'")
    if image_size < 8:
        raise UserError(f"image_size={image_size} must be >= 8 (the digits are 8x8 originals)")
    if arch == "conv" and (image_size & (image_size - 1)) != 0:
        raise UserError(
            f"image_size={image_size} must be a power of two (8, 16, 32) for arch=conv; use arch=mlp for other sizes"
        )


class MLPGenerator(nn.Module):
    """z (N x latent_dim) -> images (N x channels x S x S) in [-1, 1]."""

    def __init__(self, latent_dim: int, image_size: int, hidden: int = 128, channels: int = 1):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, math.prod(self.shape)),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    """Images -> one raw score per image (N)."""

    def __init__(self, image_size: int, hidden: int = 128, channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * image_size * image_size, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class ConvGenerator(nn.Module):
    """DCGAN-shaped generator: a linear map to a 4x4 feature map, then 2x transposed-conv upsampling to S."""

    def __init__(self, latent_dim: int, image_size: int, hidden: int = 32, channels: int = 1):
        super().__init__()
        n_up = int(math.log2(image_size // 4))
        width = hidden * 2 ** (n_up - 1) if n_up > 0 else hidden
        self.start = (width, 4, 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, width * 16), nn.ReLU())
        layers: list[nn.Module] = []
        for i in range(n_up):
            last = i == n_up - 1
            out_ch = channels if last else width // 2
            layers.append(nn.ConvTranspose2d(width, out_ch, 4, stride=2, padding=1))
            if not last:
                layers += [nn.BatchNorm2d(out_ch), nn.ReLU()]
                width = out_ch
        if n_up == 0:
            layers.append(nn.Conv2d(width, channels, 3, padding=1))
        layers.append(nn.Tanh())
        self.up = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.up(self.project(z).view(z.shape[0], *self.start))


class ConvDiscriminator(nn.Module):
    """DCGAN-shaped discriminator: stride-2 convolutions down to 4x4 (no batch norm), then a linear score."""

    def __init__(self, image_size: int, hidden: int = 32, channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, width, side = channels, hidden, image_size
        while side > 4:
            layers += [nn.Conv2d(c_in, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in, width, side = width, width * 2, side // 2
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(c_in * side * side, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.score(self.features(x).flatten(1)).squeeze(-1)


def build_gan_nets(
    arch: Arch, image_size: int, latent_dim: int, hidden: int, channels: int = 1
) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) of the chosen family for `image_size` x `image_size` images."""
    check_image_size(arch, image_size)
    if latent_dim < 1 or hidden < 1:
        raise UserError(f"latent_dim={latent_dim} and hidden={hidden} must be >= 1")
    if arch == "mlp":
        return MLPGenerator(latent_dim, image_size, hidden, channels), MLPDiscriminator(image_size, hidden, channels)
    return ConvGenerator(latent_dim, image_size, hidden, channels), ConvDiscriminator(image_size, hidden, channels)


class DigitsVAE(nn.Module):
    """A fully connected VAE: encoder -> (mu, logvar) of a diagonal Gaussian, decoder -> Bernoulli logits per pixel.

    Pixels are modelled in [0, 1] (the recipe maps [-1, 1] images with (x + 1) / 2).
    """

    def __init__(self, image_size: int, latent_dim: int = 8, hidden: int = 256, channels: int = 1):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.latent_dim = latent_dim
        n_pix = math.prod(self.shape)
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(n_pix, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.to_mu = nn.Linear(hidden, latent_dim)
        self.to_logvar = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_pix)
        )

    def encode(self, x01: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x01)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli logits, N x channels x S x S."""
        return self.decoder(z).view(z.shape[0], *self.shape)

    def forward(self, x01: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, mu, logvar) with z = mu + sigma * eps (the reparameterisation trick)."""
        mu, logvar = self.encode(x01)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self.decode(mu + torch.exp(0.5 * logvar) * eps), mu, logvar


def image_grid_png(images: Tensor, nrow: int = 8, scale: int | None = None, pad: int = 1) -> bytes:
    """PNG bytes of up to nrow*nrow images (N x C x H x W in [-1, 1]) tiled in a grid.

    The grid is upscaled `scale` times (default: so that each image is about 32 px) by pixel repetition.
    """
    from PIL import Image

    if images.ndim != 4 or images.shape[0] == 0:
        raise UserError(f"image grid needs an N x C x H x W batch, got shape {tuple(images.shape)}")
    x = images[: nrow * nrow].detach().float().cpu().clamp(-1, 1)
    x = x.mean(dim=1) if x.shape[1] != 3 else x.permute(0, 2, 3, 1)  # grey N x H x W, or N x H x W x 3
    n, h, w = x.shape[:3]
    cols = min(nrow, n)
    rows = -(-n // cols)
    canvas = torch.ones((rows * (h + pad) + pad, cols * (w + pad) + pad) + tuple(x.shape[3:]))
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = x[i]
    pixels = ((canvas + 1.0) * 127.5).round().to(torch.uint8).numpy()
    img = Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L")
    scale = scale or max(1, 32 // max(h, w))
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def reconstructions_png(originals: Tensor, reconstructions: Tensor, cols: int = 8, scale: int | None = None) -> bytes:
    """PNG bytes of rows of `cols` originals, each row followed by the same images reconstructed (both in [-1, 1]).

    Whole rows only, and at most `cols // 2` of them, so that the pairs fill a `cols` x `cols` grid at most.
    """
    rows = min(cols // 2, len(originals) // cols, len(reconstructions) // cols)
    if rows < 1:
        raise ValueError(f"a reconstructions grid needs at least {cols} images, got {len(originals)}")
    shape = originals.shape[1:]
    pairs = [x[: rows * cols].detach().float().cpu().view(rows, cols, *shape) for x in (originals, reconstructions)]
    return image_grid_png(torch.stack(pairs, dim=1).reshape(-1, *shape), nrow=cols, scale=scale)
