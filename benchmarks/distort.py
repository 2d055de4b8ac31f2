"""Images per second for DiffusionNoise: povidgen's PIL and batched tensor paths against the naive
per-image loop and against the bare cost of drawing the noise, in one run.

Run:  python benchmarks/distort.py            # CPU and, when there is one, the GPU

Methods (step 500 of POVID's schedule, clamped):
  naive        per image: PIL -> float tensor, a*x + b*randn_like(x), -> PIL (POVID's and BPO's way)
  pil          povidgen: noise(image, seed=i) per PIL image
  batched      povidgen: noise.batch(x, seeds) on a (B, 3, H, W) float tensor on the device
  affine       a*x + b*randn_like(x) on the batch (unseeded, not device-independent)
  randn        torch.randn of the batch's shape: the bare noise draw
On CUDA the run also measures the card's copy bandwidth and reports the batched path's time
against the time to read the images and write the result at that bandwidth.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from povidgen import DiffusionNoise


def clock(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of fn() after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_loop(images: list[Image.Image], a: float, b: float) -> list[Image.Image]:
    out = []
    for image in images:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
        y = a * x + b * torch.randn_like(x)
        pixels = y.clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
        out.append(Image.fromarray(pixels))
    return out


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy (read + write), the card's practical peak."""
    x = torch.empty(2**28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    seconds = clock(lambda: y.copy_(x), "cuda", 20)
    return 2 * x.numel() * 4 / seconds


def run(device: str, size: int, batch: int, repeats: int) -> None:
    noise = DiffusionNoise(step=500)
    a, b = noise.signal_scale, noise.noise_scale
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    pil_images = [Image.fromarray(a_) for a_ in arrays]
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(255).to(device).contiguous()
    seeds = list(range(batch))

    results: dict[str, float] = {}
    if device == "cpu":
        results["naive"] = clock(lambda: naive_loop(pil_images, a, b), device, repeats)
        results["pil"] = clock(
            lambda: [noise(im, seed=s) for im, s in zip(pil_images, seeds, strict=True)],
            device,
            repeats,
        )
    results["batched"] = clock(lambda: noise.batch(x, seeds), device, repeats)
    results["affine"] = clock(lambda: a * x + b * torch.randn_like(x), device, repeats)
    results["randn"] = clock(lambda: torch.randn(x.shape, device=device), device, repeats)

    print(f"\n{device}: {batch} images of {size}x{size}x3")
    print(f"{'method':10} {'ms/image':>10} {'images/s':>11}")
    for name, seconds in results.items():
        print(f"{name:10} {seconds / batch * 1e3:10.4f} {batch / seconds:11.1f}")
    print(f"batched / randn: {results['batched'] / results['randn']:.2f}x the bare noise draw")
    if "naive" in results:
        print(f"naive / batched: {results['naive'] / results['batched']:.1f}x faster than the loop")
        print(f"naive / pil:     {results['naive'] / results['pil']:.1f}x (PIL path)")
    if device == "cuda":
        bound = 2 * x.numel() * 4 / copy_bandwidth()
        print(
            f"batched / memory bound: {results['batched'] / bound:.2f}x "
            f"(reading {x.numel() * 4 / 2**20:.0f} MiB and writing as much at copy bandwidth)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--cpu-batch", type=int, nargs=2, default=[32, 4], metavar=("B336", "B1024")
    )
    parser.add_argument(
        "--gpu-batch", type=int, nargs=2, default=[256, 32], metavar=("B336", "B1024")
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for size, batch in zip((336, 1024), args.cpu_batch, strict=True):
        run("cpu", size, batch, args.repeats)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
        for size, batch in zip((336, 1024), args.gpu_batch, strict=True):
            run("cuda", size, batch, args.repeats)


if __name__ == "__main__":
    main()
