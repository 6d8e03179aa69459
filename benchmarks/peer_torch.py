"""The PyTorch side of scripts/bench_peer.sh: the dense_peer model
(benchmarks/configs/dense_peer.yaml) as a PyTorch user writes it, trained on
the same synthetic tokens as the veomni side (benchmarks/peer_data.hpp).

  python3 benchmarks/peer_torch.py --threads 2                      # single process
  torchrun --nproc_per_node 2 --redirects 1 --tee 1 \
      benchmarks/peer_torch.py --threads 1                          # DDP over Gloo
  python3 benchmarks/peer_torch.py --threads 2 --profile            # where a step goes
  python3 benchmarks/peer_torch.py --seq 16384 --global-batch 1 \
      --checkpoint --steps 1 --warmup 1                             # long context (scripts/bench_long.sh)

Prints one "RESULT key=value ..." line (rank 0). The model: Llama-style
pre-norm blocks (RMSNorm, RoPE with cached tables, causal attention over
[B, H, L, L], SwiGLU), final RMSNorm, untied LM head; mean cross-entropy,
AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), clipping at 1.0.
--checkpoint recomputes each block in backward (torch.utils.checkpoint), as
veomni's activation checkpointing does.
"""
import argparse
import math
import os
import resource
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


def load_config(path):
    """The flat `key: value` lines of dense_peer.yaml (no YAML dependency)."""
    cfg = {}
    section = None
    with open(path) as f:
        for raw in f:
            line = raw.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            key, _, value = line.strip().partition(":")
            value = value.strip()
            if not value:
                section = key
                continue
            try:
                value = int(value)
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    pass
            cfg[f"{section}.{key}" if raw.startswith(" ") and section else key] = value
    return cfg


class RMSNorm(nn.Module):
    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), -1)


class Block(nn.Module):
    def __init__(self, hidden, heads, ffn, seq, causal):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.attn_norm, self.mlp_norm = RMSNorm(hidden), RMSNorm(hidden)
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(hidden, ffn, bias=False), nn.Linear(hidden, ffn, bias=False)
        self.down = nn.Linear(ffn, hidden, bias=False)
        inv = 10000.0 ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        ang = torch.arange(seq, dtype=torch.float32)[:, None] * inv[None, :]
        # constants, not buffers: DDP would broadcast buffers every step (and
        # Gloo cannot broadcast a bool mask)
        self.cos = torch.cat((ang.cos(), ang.cos()), -1)
        self.sin = torch.cat((ang.sin(), ang.sin()), -1)
        self.causal = causal  # [seq, seq], one for all blocks

    def forward(self, x):  # x [B, L, hidden]
        b, l, _ = x.shape
        h = self.attn_norm(x)
        split = lambda y: y.view(b, l, self.heads, self.head_dim).transpose(1, 2)  # [B, H, L, D]
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        s = s.masked_fill(self.causal, float("-inf"))
        a = torch.matmul(s.softmax(-1), v).transpose(1, 2).reshape(b, l, -1)
        x = x + self.o(a)
        m = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(m)) * self.up(m))


class LM(nn.Module):
    def __init__(self, vocab, hidden, layers, heads, ffn, seq, checkpoint=False):
        super().__init__()
        self.checkpoint = checkpoint
        self.embed = nn.Embedding(vocab, hidden)
        causal = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        self.blocks = nn.ModuleList(Block(hidden, heads, ffn, seq, causal) for _ in range(layers))
        self.norm = RMSNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        x = self.embed(tokens)
        for blk in self.blocks:
            if self.checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.head(self.norm(x))


def peer_batch(step, batch, seq, vocab):
    """benchmarks/peer_data.hpp's token formula: inputs and next-token targets."""
    i = torch.arange(batch, dtype=torch.int64)[:, None]
    j = torch.arange(seq + 1, dtype=torch.int64)[None, :]
    t = (i * 7919 + j * 104729 + step * 31 + (j * j) % 97) % vocab
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(here, "configs", "dense_peer.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sample (default: the config's)")
    ap.add_argument("--global-batch", type=int, default=None, help="samples per step (default: the config's)")
    ap.add_argument("--checkpoint", action="store_true", help="activation checkpointing of every block")
    args = ap.parse_args()
    cfg = load_config(args.config)
    torch.set_num_threads(args.threads)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(1234)
    vocab, hidden, layers = cfg["model.vocab"], cfg["model.hidden"], cfg["model.layers"]
    heads, ffn = cfg["model.heads"], cfg["model.ffn"]
    seq = args.seq or cfg["data.seq"]
    gbatch = args.global_batch or cfg["data.global_batch"]
    steps = args.steps or cfg["train.steps"]
    model = LM(vocab, hidden, layers, heads, ffn, seq, args.checkpoint)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["train.weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["train.lr"], betas=(0.9, 0.95), eps=1e-8)
    per_rank = gbatch // world

    def step(s):
        tokens, targets = peer_batch(s, gbatch, seq, vocab)
        tokens, targets = tokens[rank::world], targets[rank::world]  # samples d, d + D, ... as veomni
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(tokens).view(-1, vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["train.clip"])
        opt.step()
        return loss

    times, loss0, loss = [], None, None
    for s in range(args.warmup + steps):
        t0 = time.perf_counter()
        loss = step(s)
        dt = time.perf_counter() - t0
        if s == 0:
            loss0 = loss.item()
        if s >= args.warmup:
            times.append(dt)
    if args.profile and rank == 0:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for s in range(3):
                step(args.warmup + steps + s)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if rank == 0:
        st = statistics.median(times)
        print(f"RESULT side=pytorch mode={'ddp' if world > 1 else 'single'} world={world} threads={args.threads} "
              f"steps={steps} step_s={st:.6f} step_min_s={min(times):.6f} tokens_per_rank={per_rank * seq} "
              f"global_tokens_per_s={gbatch * seq / st:.1f} loss0={loss0:.6f} loss_last={loss.item():.6f} "
              f"params={sum(p.numel() for p in model.parameters())} seq={seq} checkpoint={int(args.checkpoint)} "
              f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} torch={torch.__version__}",
              flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
