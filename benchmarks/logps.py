"""Forward+backward time and peak memory of sequence log-probs, povidgen against the baselines.

Run:  python benchmarks/logps.py                 # small sizes, whatever device is there
      python benchmarks/logps.py --full          # the issue's grid (H100-sized)

Inputs, the same for every method: 2 pairs = 4 sequences of T tokens, hidden size H, vocabulary
V, the last quarter of each sequence is the response, bf16 on CUDA (fp32 on the CPU). Each
method computes the four per-sequence response log-prob sums and backpropagates a fixed random
upstream gradient into the hidden states (and into the LM head when it is trainable).

Methods:
  naive       logits = h @ W^T for every position, fp32 log_softmax, gather, masked sum (TRL's
              layout); memory O(B T V)
  ckpt-loop   response positions only, 1024-token chunks under torch.utils.checkpoint (the
              15-line loop the issue calls the floor)
  povidgen    povidgen.train.sequence_logps (default chunk_size; povid-c512: 512-token chunks)
  liger       LigerFusedLinearDPOLoss (a DPO loss, where liger-kernel is installed)

Memory is the peak allocated above what the inputs hold, gradients included; times are the
median of CUDA-event (or wall-clock) timings after warm-up. Ratios are against naive, measured
in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from povidgen.train.logps import sequence_logps

GiB = 2**30


def naive(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = (h @ w.t()).float()
    mask = labels != -100
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def ckpt_loop(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    hs, ys = h[rows, cols], labels[rows, cols]

    def chunk_logps(hc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        return (hc @ w.t()).float().log_softmax(-1).gather(-1, yc[:, None]).squeeze(-1)

    parts = [
        checkpoint(chunk_logps, hs[i : i + 1024], ys[i : i + 1024], use_reentrant=False)
        for i in range(0, hs.shape[0], 1024)
    ]
    return torch.zeros(h.shape[0], device=h.device, dtype=torch.float32).index_add(
        0, rows, torch.cat(parts)
    )


def ours(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sequence_logps(h, w, labels, shift=False)


def ours_512(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sequence_logps(h, w, labels, shift=False, chunk_size=512)


def liger_method() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
    except ImportError:
        return None
    # policy-only, like the other methods: no reference model inputs
    loss_fn = LigerFusedLinearDPOLoss(beta=0.1, use_ref_model=False)

    def liger(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # its layout: the first half of the batch is chosen, the second half rejected
        out = loss_fn(w, h, labels)
        loss = out[0] if isinstance(out, tuple) else out
        return loss.reshape(1)

    return liger


def measure(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    h: torch.Tensor,
    w: torch.Tensor,
    labels: torch.Tensor,
    upstream: torch.Tensor,
    repeats: int,
) -> tuple[float, float]:
    cuda = h.is_cuda

    def step() -> None:
        h.grad = None
        w.grad = None
        out = fn(h, w, labels)
        (out * upstream[: out.shape[0]]).sum().backward()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
        h.grad = None
        w.grad = None
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated() - base) / GiB if cuda else float("nan")
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="the issue's H100 grid")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--vocab", type=int, nargs="*", default=None)
    parser.add_argument("--seq", type=int, nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--heads", nargs="*", default=["trainable", "frozen"])
    parser.add_argument(
        "--methods", nargs="*", default=["naive", "ckpt-loop", "povidgen", "povid-c512", "liger"]
    )
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hidden = args.hidden or (3584 if args.full else 512)
    vocabs = args.vocab or ([32000, 152064] if args.full else [8192, 32000])
    seqs = args.seq or ([1024, 2048, 4096] if args.full else [256, 512])
    methods: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None]
    methods = {
        "naive": naive,
        "ckpt-loop": ckpt_loop,
        "povidgen": ours,
        "povid-c512": ours_512,
        "liger": liger_method(),
    }
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; dtype {dtype}; H={hidden}; 4 sequences")
    header = ("head", "V", "T", "method", "ms", "GiB", "x faster", "x less mem")
    print("{:9} {:>7} {:>5} {:10} {:>8} {:>7} {:>9} {:>10}".format(*header))
    for head in args.heads:
        for vocab in vocabs:
            for seq in seqs:
                torch.manual_seed(0)
                h = torch.randn(4, seq, hidden, device=device, dtype=dtype, requires_grad=True)
                w = (torch.randn(vocab, hidden, device=device) * hidden**-0.5).to(dtype)
                w.requires_grad_(head == "trainable")
                labels = torch.randint(0, vocab, (4, seq), device=device)
                labels[:, : seq - seq // 4] = -100
                upstream = torch.randn(4, device=device)
                reference: tuple[float, float] | None = None
                for method in args.methods:
                    fn = methods.get(method)
                    if fn is None:
                        print(f"{head:9} {vocab:7} {seq:5} {method:10} {'not installed':>17}")
                        continue
                    try:
                        ms, gib = measure(fn, h, w, labels, upstream, args.repeats)
                    except torch.OutOfMemoryError:
                        print(f"{head:9} {vocab:7} {seq:5} {method:10} {'out of memory':>17}")
                        torch.cuda.empty_cache()
                        continue
                    except Exception as error:  # noqa: BLE001 - one broken baseline must not end the run
                        print(f"{head:9} {vocab:7} {seq:5} {method:10} failed: {error!r}"[:200])
                        continue
                    if method == "naive":
                        reference = (ms, gib)
                    speed = f"{reference[0] / ms:9.2f}" if reference else f"{'':9}"
                    memory = f"{reference[1] / gib:10.2f}" if reference and gib == gib else ""
                    row = f"{head:9} {vocab:7} {seq:5} {method:10} {ms:8.2f} {gib:7.2f}"
                    print(f"{row} {speed} {memory}")
                del h, w, labels
                if device == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
