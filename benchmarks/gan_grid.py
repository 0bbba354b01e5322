"""The GAN stabilisation grid: every loss with and without spectral norm, plus one-sided label
smoothing and TTUR where they apply, trained on 8x8 digits at one fixed budget and judged by FID/IS.

    OMP_NUM_THREADS=1 python benchmarks/gan_grid.py [--steps 800] [--seeds 0 1] [--out benchmarks/results/gan_grid.md]

Each run is recipes/gan.py (in-process) from its loss's YAML config with a few overrides, so the
table measures exactly what a user gets. The budget is counted in generator steps; WGAN variants
take 5 critic steps per generator step and so cost more wall time, which the table shows. The
findings paragraph is computed from the numbers, so it stays true when the grid is re-run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune.data.digits import load_digits_images  # noqa: E402
from finetune.io import atomic_write_text  # noqa: E402
from finetune.metrics import judge_images, load_judge  # noqa: E402
from recipes.gan import main as train_gan  # noqa: E402

CONFIGS = ROOT / "recipes" / "configs"
TTUR = ["optim_g.lr=1e-4", "optim_d.lr=4e-4"]  # Heusel et al. 2017: the discriminator learns 4x faster


CAVEATS = (
    "The budget is short (early training), every run uses the same small MLPs and one set of learning rates per "
    "loss, and only two seeds are averaged, so differences of a few tens of FID between neighbouring rows are "
    "within noise. 'Stability' is measured only by the final FID and the seed-to-seed spread, not by long-run "
    "divergence or mode collapse over thousands of steps. FID and IS come from the project's digits judge "
    "(a small CNN on 8x8 digits), not Inception-v3, so the numbers compare runs here and nowhere else. A loss "
    "that looks poor here (e.g. weight-clipped WGAN at its paper settings) may simply need a longer budget."
)


@dataclass
class Variant:
    name: str  # row label
    config: str  # YAML under recipes/configs
    overrides: tuple[str, ...] = ()  # key=value on top of the YAML
    base: str = ""  # the row this variant changes one thing of (for the findings)


def variants() -> list[Variant]:
    rows = []
    for loss in ("minimax", "nonsaturating", "lsgan", "hinge", "wgan", "wgan_gp"):
        cfg = f"gan_{loss}.yaml"
        rows.append(Variant(loss, cfg))
        # spectral norm replaces weight clipping as WGAN's Lipschitz constraint (Miyato et al. 2018)
        sn = ("spectral_norm=true", "clip_value=0") if loss == "wgan" else ("spectral_norm=true",)
        rows.append(Variant(f"{loss} + SN", cfg, sn, base=loss))
    for loss in ("minimax", "nonsaturating", "lsgan"):
        rows.append(Variant(f"{loss} + LS 0.9", f"gan_{loss}.yaml", ("label_smoothing=0.9",), base=loss))
    rows.append(Variant("nonsaturating + TTUR", "gan_nonsaturating.yaml", tuple(TTUR), base="nonsaturating"))
    rows.append(Variant("hinge + SN + TTUR (SAGAN)", "gan_hinge_sagan.yaml", base="hinge + SN"))
    return rows


def run_one(v: Variant, seed: int, steps: int, eval_samples: int, workdir: Path) -> dict:
    out = workdir / f"{v.name.replace(' ', '_').replace('+', '').replace('(', '').replace(')', '')}_s{seed}"
    argv = [
        "--config",
        str(CONFIGS / v.config),
        *v.overrides,
        f"train.output_dir={out}",
        f"train.seed={seed}",
        f"train.max_steps={steps}",
        f"train.eval_samples={eval_samples}",
        "train.eval_every=0",
        "train.eval_at_start=false",
        "train.save_every=0",
        "train.log_every=100",
        "train.tensorboard=false",
        "train.overwrite_output_dir=true",
    ]
    start = time.perf_counter()
    summary = train_gan(argv)
    return {**summary, "wall": time.perf_counter() - start}


def untrained_and_real(seeds: list[int], eval_samples: int, workdir: Path) -> tuple[list[float], float]:
    """FID of the untrained generator (per seed) and of real train digits: the table's two anchors."""
    untrained = [
        run_one(Variant("untrained", "gan_nonsaturating.yaml"), s, 0, eval_samples, workdir)["fid"] for s in seeds
    ]
    real = load_digits_images(8, "train")[0][:eval_samples, :1]
    return untrained, judge_images(load_judge(), real)["fid"]


def fmt(values: list[float], digits: int = 1) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({' / '.join(f'{v:.{digits}f}' for v in values)})"


def findings(rows: dict[str, list[dict]], untrained: float) -> list[str]:
    """Plain statements computed from the results: which seed claims hold here, which do not."""
    fid = {name: statistics.fmean(r["fid"] for r in runs) for name, runs in rows.items()}
    spread = {name: max(r["fid"] for r in runs) - min(r["fid"] for r in runs) for name, runs in rows.items()}
    best = min(fid, key=fid.get)
    lines = [f"- Best mean FID: **{best}** ({fid[best]:.1f}); untrained generator: {untrained:.1f}."]
    sn_pairs = [(v.base, v.name) for v in variants() if v.name.endswith("+ SN")]
    helped = [b for b, s in sn_pairs if fid[s] < fid[b]]
    hurt = [b for b, s in sn_pairs if fid[s] >= fid[b]]
    lines.append(
        f"- Spectral norm on D lowered mean FID for {len(helped)} of {len(sn_pairs)} losses"
        f" ({', '.join(helped) or 'none'}); it did not for {', '.join(hurt) or 'none'}."
    )
    if len(next(iter(rows.values()))) > 1:
        steadier = [b for b, s in sn_pairs if spread[s] < spread[b]]
        lines.append(
            f"- Seed-to-seed FID spread (a rough stability proxy with this few seeds) was smaller with spectral "
            f"norm for {len(steadier)} of {len(sn_pairs)} losses ({', '.join(steadier) or 'none'})."
        )
    gp, clip = fid["wgan_gp"], fid["wgan"]
    others = {k: fid[k] for k in ("minimax", "nonsaturating", "lsgan", "hinge")}
    beaten = [k for k, v in others.items() if gp < v]
    lines.append(
        f"- WGAN-GP (FID {gp:.1f}) {'beat' if gp < clip else 'did not beat'} weight-clipped WGAN ({clip:.1f}); "
        f"it beat {len(beaten)} of 4 unconstrained losses at equal generator steps"
        f" ({', '.join(beaten) or 'none'}), at {statistics.fmean(r['wall'] for r in rows['wgan_gp']):.0f} s "
        f"per run versus {statistics.fmean(r['wall'] for r in rows['nonsaturating']):.0f} s for nonsaturating."
    )
    if fid["wgan_gp + SN"] > gp:
        lines.append(
            f"- Spectral norm on top of the gradient penalty hurt (FID {fid['wgan_gp + SN']:.1f} vs {gp:.1f}): "
            "two Lipschitz constraints on one critic are not better than one."
        )
    ns, mm = fid["nonsaturating"], fid["minimax"]
    lines.append(
        f"- The non-saturating generator loss {'beat' if ns < mm else 'did NOT beat'} the saturating minimax "
        f"loss here (FID {ns:.1f} vs {mm:.1f})."
    )
    if clip > 0.8 * untrained:
        lines.append(
            "- Weight-clipped WGAN at the paper's settings (RMSprop 5e-5, clip 0.01) barely moved from the "
            "untrained generator in this budget: it needs a far longer run than the other losses."
        )
    ls = [v for v in variants() if "LS 0.9" in v.name]
    ls_helped = [v.base for v in ls if fid[v.name] < fid[v.base]]
    lines.append(
        f"- One-sided label smoothing (0.9) lowered FID for {len(ls_helped)} of {len(ls)} losses"
        f" ({', '.join(ls_helped) or 'none'})."
    )
    tt = [v for v in variants() if "TTUR" in v.name]
    lines.append("- TTUR: " + "; ".join(f"{v.name} {fid[v.name]:.1f} vs {v.base} {fid[v.base]:.1f}" for v in tt) + ".")
    return lines


def write_report(path: Path, rows: dict, untrained: list[float], real_fid: float, args, wall: float) -> None:
    lines = [
        "# GAN stabilisation grid on 8x8 digits",
        "",
        f"Budget per run: {args.steps} generator steps, batch 64, MLP nets (hidden 128, z 16), "
        f"FID/IS by the digits judge on {args.eval_samples} samples vs the 360 real test digits; "
        f"seeds {', '.join(map(str, args.seeds))}; one CPU thread. Whole grid: {wall / 60:.1f} min.",
        f"Anchors: untrained generator FID {fmt(untrained)}; {args.eval_samples} real train digits FID {real_fid:.1f} "
        "(the floor set by sampling noise). FID: mean (per seed). Lower is better; IS is at most 10.",
        "Final D/G loss: mean over the last 100 generator steps, seed 0.",
        "Generated by `OMP_NUM_THREADS=1 python benchmarks/gan_grid.py`.",
        "",
        "| variant | n_critic | FID | IS | wall s / run | final D loss | final G loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        n_critic = 5 if name.startswith("wgan") else 1
        lines.append(
            f"| {name} | {n_critic} | {fmt([r['fid'] for r in runs])} | {fmt([r['is'] for r in runs], 2)} | "
            f"{statistics.fmean(r['wall'] for r in runs):.1f} | {runs[0]['d_loss']:.3f} | {runs[0]['g_loss']:.3f} |"
        )
    lines += [
        "",
        "## Findings (computed from the table)",
        "",
        *findings(rows, statistics.fmean(untrained)),
        "",
        "## What this grid can and cannot show",
        "",
        CAVEATS,
        "",
    ]
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="generator steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--only", nargs="*", help="run only these variant names (for a quick look)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gan_grid.md")
    args = parser.parse_args()
    start = time.perf_counter()
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="gan_grid_") as tmp:
        untrained, real_fid = untrained_and_real(args.seeds, args.eval_samples, Path(tmp))
        for v in variants():
            if args.only and v.name not in args.only:
                continue
            for seed in args.seeds:
                r = run_one(v, seed, args.steps, args.eval_samples, Path(tmp))
                rows.setdefault(v.name, []).append(r)
                print(
                    f"{v.name:28s} seed {seed}: fid {r['fid']:7.1f} is {r['is']:.2f} wall {r['wall']:.1f}s", flush=True
                )
    wall = time.perf_counter() - start
    if args.only:
        print("(partial grid: no report written)")
        return
    write_report(args.out, rows, untrained, real_fid, args, wall)
    print(f"wrote {args.out} in {wall:.0f} s")


if __name__ == "__main__":
    main()
