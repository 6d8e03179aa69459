#!/usr/bin/python3
"""Independent plain-PyTorch reference for Hugging Face decoder checkpoints (issue 19, part 6).

Run it with Debian's interpreter, ``/usr/bin/python3`` (package ``python3-torch``; tested with
torch 1.13 and numpy 1.24).  It needs neither ``transformers`` nor ``safetensors``: the
safetensors format is written and read by hand.

What it implements
------------------
The forward pass of four Hugging Face architectures, written from the published definitions
(``modeling_llama.py``, ``modeling_qwen2.py``, ``modeling_qwen3.py``, ``modeling_qwen3_moe.py``):

* ``LlamaForCausalLM``   (``model_type`` ``llama``)     - optional ``attention_bias`` (q, k, v AND o).
* ``Qwen2ForCausalLM``   (``qwen2``)                    - biases on q, k, v (never on o).
* ``Qwen3ForCausalLM``   (``qwen3``)                    - per-head RMSNorm ``q_norm``/``k_norm`` over
  ``head_dim``, applied after the projection and BEFORE rope; no qkv bias; explicit ``head_dim``.
* ``Qwen3MoeForCausalLM`` (``qwen3_moe``)               - Qwen3 attention plus the sparse MoE block:
  ``router_logits = mlp.gate(x)`` (no bias); ``p = softmax(router_logits)`` in fp32; top-k
  (``num_experts_per_tok``); if ``norm_topk_prob`` the k weights are divided by their sum;
  ``y = sum_k w_k * down_e(silu(gate_e(x)) * up_e(x))``.  Layer ``i`` is sparse iff
  ``i not in mlp_only_layers and num_experts > 0 and (i + 1) % decoder_sparse_step == 0``, otherwise
  it is a dense SwiGLU MLP of width ``intermediate_size`` (names ``mlp.{gate,up,down}_proj``).  The
  router auxiliary loss is NOT part of the reported loss (HF adds it only with
  ``output_router_logits``).

Common to all: token embedding; per layer ``h = h + o_proj(attn(input_layernorm(h)))`` then
``h = h + mlp(post_attention_layernorm(h))``; final ``model.norm``; ``lm_head`` (or the embedding
matrix when ``tie_word_embeddings``).  RMSNorm: ``w * (x * rsqrt(mean(x^2) + rms_norm_eps))`` with
the statistics in (at least) fp32.  Rope (default type only; any ``rope_scaling`` is rejected):
``inv_freq = 1 / rope_theta ** (arange(0, head_dim, 2) / head_dim)``, angle ``pos * inv_freq``
duplicated to ``head_dim``, ``x * cos + rotate_half(x) * sin`` with
``rotate_half(x) = cat(-x[d/2:], x[:d/2])``, positions ``0..T-1``.  GQA: key/value head ``j`` serves
query heads ``j*g .. j*g+g-1`` (``g = num_attention_heads / num_key_value_heads``).  Causal
softmax attention with scale ``1/sqrt(head_dim)``.  MLP: ``down(silu(gate(x)) * up(x))`` (``hidden_act``
must be ``silu``).  Loss: HF causal-LM loss, i.e. token ``t`` (t >= 1) is predicted from positions
``0..t-1``: ``loss_t = CE(logits[t-1], labels[t])`` where ``labels`` defaults to the tokens; a label
of -100 is ignored.

The computation upcasts the weights to float32 (default) or float64 (``--double``); in float32 it
follows HF's float32 arithmetic (inv_freq/angles in fp32, softmax in fp32).  A naive, loop-based
float64 implementation (``naive_losses``) is used by ``selftest`` to cross-check the vectorised one.

Command line
------------
``/usr/bin/python3 tests/hf/hf_reference.py write DIR --arch {llama,qwen2,qwen3,qwen3_moe}
    [--dtype {float32,bfloat16,float16}] [--shards N] [--tied] [--seed S] [--preset qwen2-0.5b]
    [--vocab V] [--hidden H] [--intermediate I] [--layers L] [--heads A] [--kv-heads K]
    [--head-dim D] [--rope-theta T] [--eps E] [--max-pos P] [--std S] [--attention-bias]
    [--experts X] [--top-k k] [--moe-intermediate M] [--no-norm-topk-prob]
    [--decoder-sparse-step s] [--mlp-only-layers 0,2]``

  Writes DIR/config.json (``json.dumps(indent=2, sort_keys=True)`` + newline, as HF's
  ``save_pretrained`` does) and the weights, either ``DIR/model.safetensors`` or, with
  ``--shards N`` (N > 1), ``DIR/model-00001-of-0000N.safetensors`` ... plus
  ``DIR/model.safetensors.index.json`` = ``{"metadata": {"total_size": <bytes of tensor data>},
  "weight_map": {tensor name: shard file name}}`` (sorted keys, indent 2).  Tensors are split in
  state-dict order into N contiguous groups of about equal bytes (every shard non-empty).
  Defaults are tiny (vocab 96, hidden 64, intermediate 96, 2 layers, 4 heads, 2 kv heads, head_dim
  16, or 32 for qwen3/qwen3_moe so that heads*head_dim != hidden; qwen3_moe: 4 experts, top-2,
  moe_intermediate 32, norm_topk_prob true, decoder_sparse_step 1, mlp_only_layers []).
  ``--preset qwen2-0.5b`` gives the Qwen2-0.5B shape (vocab 151936, hidden 896, intermediate
  4864, 24 layers, 14 heads, 2 kv heads, tied, theta 1e6, eps 1e-6) for load benchmarks.
  Prints the list of written files.

  Weights are deterministic: every tensor is drawn from its own numpy PCG64 stream seeded with
  ``(seed, crc32(tensor name))`` (so tying/sharding/dtype never change the other tensors), as fp32
  ``N(0, std^2)`` with std 0.1 for matrices/biases/embeddings and ``1 + 0.1 N(0,1)`` for norm
  weights, then rounded (round-to-nearest-even) to the file dtype.  Same arguments -> same bytes.

``/usr/bin/python3 tests/hf/hf_reference.py loss DIR --tokens FILE_OR_JSON [--out FILE] [--double]
    [--logits]``

  ``--tokens`` is JSON text or a file holding it: a list of ints (one sequence), or a list of
  sequences, each a list of ints or an object ``{"input_ids": [...], "labels": [...]}`` (labels
  optional, same length, -100 = no loss).  A file that is not JSON is read as one sequence per
  non-empty line of whitespace/comma separated ints.  Each sequence is evaluated independently
  from position 0 (batch of one, no padding).  Output (stdout, or FILE with ``--out``):

    {"architecture": "Qwen3ForCausalLM", "model_type": "qwen3", "dtype": "bfloat16",
     "compute_dtype": "float32",
     "sequences": [{"length": T, "losses": [null, l_1, ..., l_{T-1}], "mean_loss": m,
                    "num_loss_tokens": n, "last_logits": [V floats] (only with --logits)}, ...],
     "mean_loss": sum of all losses / number of loss tokens (HF's token-weighted mean),
     "num_loss_tokens": n_total}

  ``losses[t]`` is the loss of predicting token t, so ``losses[0]`` is always ``null`` (and so is
  any position whose label is -100).  Floats are Python ``repr`` (round-trip exact).

``/usr/bin/python3 tests/hf/hf_reference.py selftest``

  Writes every architecture in fp32/bf16 (plus one fp16), single file and 2 shards, tied and
  untied, into a temporary directory; checks byte-for-byte determinism, that loading reproduces
  the in-memory tensors bit for bit and the in-memory loss exactly, fp32 vs ``--double`` within
  1e-5 relative, the vectorised float64 forward against the naive loop implementation (1e-9),
  causality (a prefix gives the same losses), and that malformed directories are rejected.

How the C++ tests use it
------------------------
A C++ test (run only when ``/usr/bin/python3`` with ``import torch`` works; otherwise skipped)
generates a fixture at test time, e.g.::

    /usr/bin/python3 tests/hf/hf_reference.py write $TMP/q3 --arch qwen3 --dtype float32 --shards 2
    /usr/bin/python3 tests/hf/hf_reference.py loss $TMP/q3 --tokens '[[5,17,3,88,2,41,9,60]]' --out $TMP/ref.json

then trains/evaluates with ``model.path: $TMP/q3`` on the same tokens (no training step: the loss
of the loaded weights) and requires every C++ per-token loss to match ``losses[t]`` within 1e-5
relative (fp32 computation; for bf16/fp16 files the weights are upcast exactly, so the same
tolerance applies to the computation).  Fixtures are regenerated every run, deterministically, and
nothing is checked into the repository.
"""

import argparse
import json
import math
import os
import struct
import sys
import tempfile
import time
import zlib

import numpy as np
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

ARCHS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
ARCH_TO_TYPE = {v: k for k, v in ARCHS.items()}

ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
ST_TO_TORCH = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
               "F64": torch.float64}
ST_ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8}
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------

def make_config(args):
    arch = args.arch
    heads, kv = args.heads, args.kv_heads
    head_dim = args.head_dim
    if head_dim is None:
        head_dim = 32 if arch in ("qwen3", "qwen3_moe") else args.hidden // heads
    if heads % kv:
        raise SystemExit("--heads must be a multiple of --kv-heads")
    if head_dim % 2:
        raise SystemExit("--head-dim must be even (rope)")
    if arch == "qwen2" and head_dim * heads != args.hidden:
        raise SystemExit("qwen2 has no head_dim field: hidden must equal heads * head_dim")
    theta = args.rope_theta if args.rope_theta is not None else (
        10000.0 if arch == "llama" else 1000000.0)
    eps = args.eps if args.eps is not None else (1e-5 if arch == "llama" else 1e-6)
    c = {
        "architectures": [ARCHS[arch]],
        "model_type": arch,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": args.hidden,
        "initializer_range": 0.02,
        "intermediate_size": args.intermediate,
        "max_position_embeddings": args.max_pos,
        "num_attention_heads": heads,
        "num_hidden_layers": args.layers,
        "num_key_value_heads": kv,
        "rms_norm_eps": eps,
        "rope_scaling": None,
        "rope_theta": theta,
        "tie_word_embeddings": bool(args.tied),
        "torch_dtype": args.dtype,
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": args.vocab,
    }
    if arch == "llama":
        c.update({"attention_bias": bool(args.attention_bias), "head_dim": head_dim,
                  "mlp_bias": False, "pretraining_tp": 1})
    elif arch == "qwen2":
        if args.attention_bias:
            raise SystemExit("qwen2 always has q/k/v biases; --attention-bias is not a qwen2 option")
        c.update({"max_window_layers": args.layers, "sliding_window": args.max_pos,
                  "use_sliding_window": False})
    else:
        c.update({"attention_bias": bool(args.attention_bias), "head_dim": head_dim,
                  "max_window_layers": args.layers, "sliding_window": None,
                  "use_sliding_window": False})
        if arch == "qwen3_moe":
            c.update({
                "decoder_sparse_step": args.decoder_sparse_step,
                "mlp_only_layers": [int(x) for x in args.mlp_only_layers.split(",") if x != ""],
                "moe_intermediate_size": args.moe_intermediate,
                "norm_topk_prob": not args.no_norm_topk_prob,
                "num_experts": args.experts,
                "num_experts_per_tok": args.top_k,
                "output_router_logits": False,
                "router_aux_loss_coef": 0.001,
            })
    return c


class Cfg:
    """The fields the forward pass needs, validated, read from a config.json dict."""

    def __init__(self, c, where="config.json"):
        def need(key, kind=int):
            if key not in c or c[key] is None:
                raise CheckpointError(f"{where}: missing field '{key}'")
            v = c[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise CheckpointError(f"{where}: field '{key}' is not numeric: {v!r}")
            if kind is int:
                if v != int(v):
                    raise CheckpointError(f"{where}: field '{key}' is not an integer: {v!r}")
                return int(v)
            return float(v)

        archs = c.get("architectures") or []
        if len(archs) != 1 or archs[0] not in ARCH_TO_TYPE:
            raise CheckpointError(f"{where}: unsupported 'architectures' {archs!r} "
                                  f"(supported: {sorted(ARCH_TO_TYPE)})")
        self.architecture = archs[0]
        self.arch = ARCH_TO_TYPE[self.architecture]
        if c.get("rope_scaling") not in (None, {}):
            raise CheckpointError(f"{where}: 'rope_scaling' {c['rope_scaling']!r} is not supported")
        if c.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{where}: 'hidden_act' {c['hidden_act']!r} is not supported")
        if c.get("use_sliding_window", False):
            raise CheckpointError(f"{where}: 'use_sliding_window' true is not supported")
        if c.get("mlp_bias", False):
            raise CheckpointError(f"{where}: 'mlp_bias' true is not supported")
        self.vocab = need("vocab_size")
        self.hidden = need("hidden_size")
        self.intermediate = need("intermediate_size")
        self.layers = need("num_hidden_layers")
        self.heads = need("num_attention_heads")
        self.kv_heads = need("num_key_value_heads") if "num_key_value_heads" in c else self.heads
        self.head_dim = need("head_dim") if c.get("head_dim") is not None else self.hidden // self.heads
        self.eps = need("rms_norm_eps", float)
        self.theta = need("rope_theta", float) if "rope_theta" in c else 10000.0
        self.max_pos = need("max_position_embeddings")
        self.tied = bool(c.get("tie_word_embeddings", False))
        if self.heads % self.kv_heads:
            raise CheckpointError(f"{where}: num_attention_heads {self.heads} is not a multiple of "
                                  f"num_key_value_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise CheckpointError(f"{where}: head_dim {self.head_dim} is odd")
        if self.arch == "qwen2":
            self.qkv_bias, self.o_bias = True, False
        else:
            b = bool(c.get("attention_bias", False))
            self.qkv_bias, self.o_bias = b, b
        self.qk_norm = self.arch in ("qwen3", "qwen3_moe")
        self.moe_layers = set()
        if self.arch == "qwen3_moe":
            self.experts = need("num_experts")
            self.top_k = need("num_experts_per_tok")
            self.moe_intermediate = need("moe_intermediate_size")
            self.norm_topk_prob = bool(c.get("norm_topk_prob", False))
            step = need("decoder_sparse_step") if "decoder_sparse_step" in c else 1
            only = c.get("mlp_only_layers") or []
            if self.top_k > self.experts:
                raise CheckpointError(f"{where}: num_experts_per_tok > num_experts")
            for i in range(self.layers):
                if i not in only and self.experts > 0 and (i + 1) % step == 0:
                    self.moe_layers.add(i)


# ----------------------------------------------------------------------------------------------
# tensor names and generation
# ----------------------------------------------------------------------------------------------

def tensor_specs(cfg):
    """[(name, shape, kind)] in HF state-dict order; kind is 'w' (random) or 'norm' (1 + noise)."""
    H, hd = cfg.hidden, cfg.head_dim
    q_out, kv_out = cfg.heads * hd, cfg.kv_heads * hd
    specs = [("model.embed_tokens.weight", (cfg.vocab, H), "w")]
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        for n, o in (("q", q_out), ("k", kv_out), ("v", kv_out)):
            specs.append((p + f"self_attn.{n}_proj.weight", (o, H), "w"))
            if cfg.qkv_bias:
                specs.append((p + f"self_attn.{n}_proj.bias", (o,), "w"))
        specs.append((p + "self_attn.o_proj.weight", (H, q_out), "w"))
        if cfg.o_bias:
            specs.append((p + "self_attn.o_proj.bias", (H,), "w"))
        if cfg.qk_norm:
            specs.append((p + "self_attn.q_norm.weight", (hd,), "norm"))
            specs.append((p + "self_attn.k_norm.weight", (hd,), "norm"))
        if i in cfg.moe_layers:
            specs.append((p + "mlp.gate.weight", (cfg.experts, H), "w"))
            I = cfg.moe_intermediate
            for e in range(cfg.experts):
                q = p + f"mlp.experts.{e}."
                specs.append((q + "gate_proj.weight", (I, H), "w"))
                specs.append((q + "up_proj.weight", (I, H), "w"))
                specs.append((q + "down_proj.weight", (H, I), "w"))
        else:
            I = cfg.intermediate
            specs.append((p + "mlp.gate_proj.weight", (I, H), "w"))
            specs.append((p + "mlp.up_proj.weight", (I, H), "w"))
            specs.append((p + "mlp.down_proj.weight", (H, I), "w"))
        specs.append((p + "input_layernorm.weight", (H,), "norm"))
        specs.append((p + "post_attention_layernorm.weight", (H,), "norm"))
    specs.append(("model.norm.weight", (H,), "norm"))
    if not cfg.tied:
        specs.append(("lm_head.weight", (cfg.vocab, H), "w"))
    return specs


def gen_tensor(name, shape, kind, seed, std, dtype):
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(name.encode())]))
    a = rng.standard_normal(size=shape, dtype=np.float32)
    if kind == "norm":
        a = a * np.float32(0.1) + np.float32(1.0)
    else:
        a = a * np.float32(std)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(TORCH_DTYPES[dtype])


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


# ----------------------------------------------------------------------------------------------
# safetensors, by hand
# ----------------------------------------------------------------------------------------------

def st_header(entries):
    """entries: [(name, st_dtype, shape, nbytes)] -> (header bytes incl. 8-byte length, data size)."""
    header, off = {}, 0
    for name, sd, shape, nbytes in entries:
        header[name] = {"dtype": sd, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    h += b" " * ((-len(h)) % 8)  # pad like the safetensors library (data 8-byte aligned)
    return struct.pack("<Q", len(h)) + h, off


def write_safetensors(path, entries, produce):
    """Stream tensors to path; produce(name) returns the tensor (so huge models never sit in RAM)."""
    head, total = st_header(entries)
    with open(path, "wb") as f:
        f.write(head)
        for name, sd, shape, nbytes in entries:
            t = produce(name)
            b = tensor_bytes(t)
            if tuple(t.shape) != tuple(shape) or len(b) != nbytes:
                raise AssertionError(name)
            f.write(b)
    return total


def read_safetensors_header(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: truncated (no header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100 * 1024 * 1024:
            raise CheckpointError(f"{path}: header length {n} exceeds the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: header is not JSON: {e}")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, h in header.items():
        sd = h.get("dtype")
        if sd not in ST_TO_TORCH:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {sd!r}")
        b, e = h["data_offsets"]
        want = ST_ITEMSIZE[sd] * int(np.prod(h["shape"], dtype=np.int64))
        if e - b != want or b < 0:
            raise CheckpointError(f"{path}: tensor '{name}' data_offsets {b}..{e} do not hold "
                                  f"shape {h['shape']} of {sd}")
        if e > data_size:
            raise CheckpointError(f"{path}: tensor '{name}' ends at {e} past the data "
                                  f"({data_size} bytes): file truncated")
    return header, 8 + n


def read_tensor(path, mm, base, name, h):
    b, e = h["data_offsets"]
    sd = h["dtype"]
    buf = mm[base + b: base + e]
    if sd in ("BF16", "F16"):
        t = torch.from_numpy(np.frombuffer(buf, dtype="<i2").copy()).view(ST_TO_TORCH[sd])
    else:
        t = torch.from_numpy(np.frombuffer(buf, dtype="<f4" if sd == "F32" else "<f8").copy())
    return t.reshape(h["shape"])


def load_dir(d):
    """-> (config dict, Cfg, {name: tensor in file dtype}, file dtype name)."""
    cpath = os.path.join(d, "config.json")
    if not os.path.isfile(cpath):
        raise CheckpointError(f"{cpath}: missing")
    with open(cpath) as f:
        try:
            cdict = json.load(f)
        except ValueError as e:
            raise CheckpointError(f"{cpath}: not JSON: {e}")
    cfg = Cfg(cdict, cpath)
    single = os.path.join(d, "model.safetensors")
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            wmap = json.load(f).get("weight_map")
        if not isinstance(wmap, dict):
            raise CheckpointError(f"{index}: no 'weight_map'")
        files = sorted(set(wmap.values()))
    elif os.path.isfile(single):
        wmap, files = None, ["model.safetensors"]
    else:
        raise CheckpointError(f"{d}: neither model.safetensors nor model.safetensors.index.json")
    tensors, dtypes = {}, set()
    for fn in files:
        path = os.path.join(d, fn)
        if not os.path.isfile(path):
            raise CheckpointError(f"{index}: names shard '{fn}' which is not there")
        header, base = read_safetensors_header(path)
        with open(path, "rb") as f:
            mm = f.read()
        for name, h in header.items():
            if wmap is not None and wmap.get(name) != fn:
                raise CheckpointError(f"{path}: tensor '{name}' is not mapped to this file "
                                      f"by the index")
            if name in tensors:
                raise CheckpointError(f"{path}: tensor '{name}' appears twice")
            tensors[name] = read_tensor(path, mm, base, name, h)
            dtypes.add(h["dtype"])
    if wmap is not None:
        for name, fn in wmap.items():
            if name not in tensors:
                raise CheckpointError(f"{os.path.join(d, fn)}: tensor '{name}' named by the index "
                                      f"is not in the file")
    expected = {n: s for n, s, _ in tensor_specs(cfg)}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{d}: missing tensor '{name}'")
        if tuple(tensors[name].shape) != tuple(shape):
            raise CheckpointError(f"{d}: tensor '{name}' has shape {list(tensors[name].shape)}, "
                                  f"expected {list(shape)}")
    extra = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
    extra = [n for n in extra if not n.endswith("rotary_emb.inv_freq")]
    if extra:
        raise CheckpointError(f"{d}: unexpected tensor(s) {extra[:5]}")
    inv = {v: k for k, v in ST_DTYPES.items()}
    fdtype = "+".join(sorted(inv.get(x, x) for x in dtypes))
    return cdict, cfg, tensors, fdtype


# ----------------------------------------------------------------------------------------------
# write
# ----------------------------------------------------------------------------------------------

def shard_plan(entries, n):
    """Split entries (state-dict order) into n contiguous non-empty groups of about equal bytes."""
    n = max(1, min(n, len(entries)))
    total = sum(e[3] for e in entries)
    groups, cur, acc = [], [], 0
    for i, e in enumerate(entries):
        left_entries = len(entries) - i
        left_groups = n - len(groups)
        if cur and (acc + e[3] / 2 > total * (len(groups) + 1) / n or left_entries < left_groups):
            if len(groups) < n - 1:
                groups.append(cur)
                cur = []
        cur.append(e)
        acc += e[3]
    groups.append(cur)
    assert len(groups) == n and all(groups)
    return groups


def write_checkpoint(d, cdict, seed, std, shards=1):
    cfg = Cfg(cdict)
    dtype = cdict["torch_dtype"]
    sd = ST_DTYPES[dtype]
    isz = ST_ITEMSIZE[sd]
    specs = tensor_specs(cfg)
    kinds = {n: (s, k) for n, s, k in specs}
    entries = [(n, sd, s, isz * int(np.prod(s))) for n, s, _ in specs]
    os.makedirs(d, exist_ok=True)
    for fn in os.listdir(d):  # never leave a stale layout next to the new one
        if fn.startswith("model") and (fn.endswith(".safetensors") or fn.endswith(".index.json")):
            os.remove(os.path.join(d, fn))

    def produce(name):
        s, k = kinds[name]
        return gen_tensor(name, s, k, seed, std, dtype)

    written = []
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(json.dumps(cdict, indent=2, sort_keys=True) + "\n")
    written.append("config.json")
    if shards <= 1:
        write_safetensors(os.path.join(d, "model.safetensors"), entries, produce)
        written.append("model.safetensors")
    else:
        groups = shard_plan(entries, shards)
        n = len(groups)
        wmap, total = {}, 0
        for i, g in enumerate(groups):
            fn = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            total += write_safetensors(os.path.join(d, fn), g, produce)
            for e in g:
                wmap[e[0]] = fn
            written.append(fn)
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            f.write(json.dumps({"metadata": {"total_size": total}, "weight_map": wmap},
                               indent=2, sort_keys=True) + "\n")
        written.append("model.safetensors.index.json")
    return written


def in_memory_weights(cdict, seed, std):
    cfg = Cfg(cdict)
    return {n: gen_tensor(n, s, k, seed, std, cdict["torch_dtype"]) for n, s, k in tensor_specs(cfg)}


# ----------------------------------------------------------------------------------------------
# forward pass (vectorised, follows the HF modules)
# ----------------------------------------------------------------------------------------------

def rms_norm(x, w, eps):
    # HF: hidden_states.to(float32); variance = pow(2).mean(-1); x * rsqrt(var + eps); w * x
    xf = x if x.dtype == torch.float64 else x.float()
    var = xf.pow(2).mean(-1, keepdim=True)
    return w * (xf * torch.rsqrt(var + eps)).to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(T, head_dim, theta, dt):
    if dt == torch.float64:
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    else:  # HF: inv_freq in fp32, (inv_freq @ position_ids.float()) in fp32
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.arange(T).float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dt), emb.sin().to(dt)


def linear(x, W, name_b, P):
    y = x @ W.t()
    b = P.get(name_b)
    return y + b if b is not None else y


def swiglu(x, g, u, d):
    return (torch.nn.functional.silu(x @ g.t()) * (x @ u.t())) @ d.t()


def moe_block(x, P, p, cfg):
    T = x.shape[0]
    logits = x @ P[p + "mlp.gate.weight"].t()
    probs = torch.softmax(logits, dim=1, dtype=torch.float64 if x.dtype == torch.float64
                          else torch.float32)
    w, idx = torch.topk(probs, cfg.top_k, dim=-1)
    if cfg.norm_topk_prob:
        w = w / w.sum(dim=-1, keepdim=True)
    w = w.to(x.dtype)
    out = torch.zeros_like(x)
    for e in range(cfg.experts):
        tok, slot = torch.where(idx == e)
        if tok.numel() == 0:
            continue
        q = p + f"mlp.experts.{e}."
        y = swiglu(x[tok], P[q + "gate_proj.weight"], P[q + "up_proj.weight"],
                   P[q + "down_proj.weight"]) * w[tok, slot, None]
        out.index_add_(0, tok, y)
    return out


def forward_logits(cfg, P, tokens, dt):
    """P: {name: tensor already in dt}; tokens: list[int] -> logits [T, vocab] in dt."""
    T = len(tokens)
    ids = torch.tensor(tokens, dtype=torch.long)
    h = P["model.embed_tokens.weight"][ids]
    hd, nh, nkv = cfg.head_dim, cfg.heads, cfg.kv_heads
    cos, sin = rope_cos_sin(T, hd, cfg.theta, dt)
    mask = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
    scale = hd ** -0.5
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        x = rms_norm(h, P[p + "input_layernorm.weight"], cfg.eps)
        q = linear(x, P[a + "q_proj.weight"], a + "q_proj.bias", P).view(T, nh, hd)
        k = linear(x, P[a + "k_proj.weight"], a + "k_proj.bias", P).view(T, nkv, hd)
        v = linear(x, P[a + "v_proj.weight"], a + "v_proj.bias", P).view(T, nkv, hd)
        if cfg.qk_norm:
            q = rms_norm(q, P[a + "q_norm.weight"], cfg.eps)
            k = rms_norm(k, P[a + "k_norm.weight"], cfg.eps)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, T, hd]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        g = nh // nkv
        k = k.repeat_interleave(g, dim=0)  # HF repeat_kv: kv head j -> query heads j*g..j*g+g-1
        v = v.repeat_interleave(g, dim=0)
        s = (q @ k.transpose(1, 2)) * scale + mask
        s = torch.softmax(s, dim=-1, dtype=torch.float64 if dt == torch.float64
                          else torch.float32).to(dt)
        o = (s @ v).transpose(0, 1).reshape(T, nh * hd)
        h = h + linear(o, P[a + "o_proj.weight"], a + "o_proj.bias", P)
        x = rms_norm(h, P[p + "post_attention_layernorm.weight"], cfg.eps)
        if i in cfg.moe_layers:
            h = h + moe_block(x, P, p, cfg)
        else:
            h = h + swiglu(x, P[p + "mlp.gate_proj.weight"], P[p + "mlp.up_proj.weight"],
                           P[p + "mlp.down_proj.weight"])
    h = rms_norm(h, P["model.norm.weight"], cfg.eps)
    W = P["model.embed_tokens.weight"] if cfg.tied else P["lm_head.weight"]
    return h @ W.t()


def upcast(tensors, dt):
    return {n: t.to(dt) for n, t in tensors.items()}


def seq_losses(cfg, P, tokens, labels, dt):
    logits = forward_logits(cfg, P, tokens, dt)
    lp = torch.log_softmax(logits.to(dt), dim=-1)
    out = [None]
    for t in range(1, len(tokens)):
        lab = labels[t]
        out.append(None if lab == -100 else float(-lp[t - 1, lab]))
    return out, logits[-1]


def compute_losses(cfg, P, seqs, dt, want_logits=False):
    res, tot, cnt = [], 0.0, 0
    for s in seqs:
        ids, labels = s["input_ids"], s["labels"]
        for x in list(ids) + [l for l in labels if l != -100]:
            if not 0 <= x < cfg.vocab:
                raise CheckpointError(f"token id {x} outside the vocabulary [0, {cfg.vocab})")
        ls, last = seq_losses(cfg, P, ids, labels, dt)
        vals = [x for x in ls if x is not None]
        r = {"length": len(ids), "losses": ls,
             "mean_loss": (math.fsum(vals) / len(vals)) if vals else None,
             "num_loss_tokens": len(vals)}
        if want_logits:
            r["last_logits"] = [float(x) for x in last]
        res.append(r)
        tot += math.fsum(vals)
        cnt += len(vals)
    return {"sequences": res, "mean_loss": (tot / cnt) if cnt else None, "num_loss_tokens": cnt}


# ----------------------------------------------------------------------------------------------
# naive float64 implementation: loops over positions / heads, explicit rotation pairs
# ----------------------------------------------------------------------------------------------

def naive_losses(cfg, P, tokens):
    P = upcast(P, torch.float64)
    T, hd, nh, nkv = len(tokens), cfg.head_dim, cfg.heads, cfg.kv_heads

    def norm(x, w):
        return w * x / math.sqrt(float((x * x).sum()) / x.numel() + cfg.eps)

    def rope(x, pos):  # rotate the pairs (x_j, x_{j+d/2}) by pos * theta^(-2j/d)
        y = x.clone()
        half = hd // 2
        for j in range(half):
            ang = pos * cfg.theta ** (-2.0 * j / hd)
            c, s = math.cos(ang), math.sin(ang)
            y[j] = x[j] * c - x[j + half] * s
            y[j + half] = x[j + half] * c + x[j] * s
        return y

    def lin(x, n):
        y = P[n + ".weight"] @ x
        return y + P[n + ".bias"] if n + ".bias" in P else y

    def mlp(x, pre):
        g = P[pre + "gate_proj.weight"] @ x
        return P[pre + "down_proj.weight"] @ (g / (1 + torch.exp(-g)) * (P[pre + "up_proj.weight"] @ x))

    hs = [P["model.embed_tokens.weight"][t].clone() for t in tokens]
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        xs = [norm(h, P[p + "input_layernorm.weight"]) for h in hs]
        Q, K, V = [], [], []
        for pos, x in enumerate(xs):
            q = lin(x, a + "q_proj").view(nh, hd)
            k = lin(x, a + "k_proj").view(nkv, hd)
            if cfg.qk_norm:
                q = torch.stack([norm(q[j], P[a + "q_norm.weight"]) for j in range(nh)])
                k = torch.stack([norm(k[j], P[a + "k_norm.weight"]) for j in range(nkv)])
            Q.append(torch.stack([rope(q[j], pos) for j in range(nh)]))
            K.append(torch.stack([rope(k[j], pos) for j in range(nkv)]))
            V.append(lin(x, a + "v_proj").view(nkv, hd))
        new = []
        for t in range(T):
            heads = []
            for j in range(nh):
                kj = j // (nh // nkv)
                sc = [float(Q[t][j] @ K[u][kj]) / math.sqrt(hd) for u in range(t + 1)]
                m = max(sc)
                ex = [math.exp(s - m) for s in sc]
                z = sum(ex)
                heads.append(sum(ex[u] / z * V[u][kj] for u in range(t + 1)))
            h = hs[t] + lin(torch.cat(heads), a + "o_proj")
            x = norm(h, P[p + "post_attention_layernorm.weight"])
            if i in cfg.moe_layers:
                lg = (P[p + "mlp.gate.weight"] @ x).tolist()
                m = max(lg)
                pr = [math.exp(l - m) for l in lg]
                z = sum(pr)
                pr = [v / z for v in pr]
                top = sorted(range(cfg.experts), key=lambda e: -pr[e])[:cfg.top_k]
                ws = [pr[e] for e in top]
                if cfg.norm_topk_prob:
                    ws = [w / sum(ws) for w in ws]
                h = h + sum(w * mlp(x, p + f"mlp.experts.{e}.") for w, e in zip(ws, top))
            else:
                h = h + mlp(x, p + "mlp.")
            new.append(h)
        hs = new
    W = P["model.embed_tokens.weight"] if cfg.tied else P["lm_head.weight"]
    out = [None]
    for t in range(1, T):
        lg = W @ norm(hs[t - 1], P["model.norm.weight"])
        m = float(lg.max())
        lse = m + math.log(float(torch.exp(lg - m).sum()))
        out.append(lse - float(lg[tokens[t]]))
    return out


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def parse_tokens(arg):
    text = arg
    if not arg.lstrip().startswith(("[", "{")):
        with open(arg) as f:
            text = f.read()
    try:
        data = json.loads(text)
    except ValueError:
        data = [[int(x) for x in line.replace(",", " ").split()]
                for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = [data]
    if data and all(isinstance(x, int) for x in data):
        data = [data]
    seqs = []
    for s in data:
        if isinstance(s, dict):
            ids = [int(x) for x in s["input_ids"]]
            labels = [int(x) for x in s.get("labels", ids)]
        else:
            ids = [int(x) for x in s]
            labels = list(ids)
        if len(labels) != len(ids):
            raise SystemExit("labels and input_ids differ in length")
        if not ids:
            raise SystemExit("empty sequence")
        seqs.append({"input_ids": ids, "labels": labels})
    return seqs


def cmd_write(a):
    if a.preset == "qwen2-0.5b":  # explicit flags still win over the preset
        defaults = build_parser().parse_args(["write", "x"])
        preset = {"arch": "qwen2", "vocab": 151936, "hidden": 896, "intermediate": 4864,
                  "layers": 24, "heads": 14, "kv_heads": 2, "tied": True, "max_pos": 32768,
                  "rope_theta": 1000000.0, "eps": 1e-6}
        for k, v in preset.items():
            if getattr(a, k) == getattr(defaults, k):
                setattr(a, k, v)
    if a.arch is None:
        raise SystemExit("--arch is required")
    cdict = make_config(a)
    for fn in write_checkpoint(a.dir, cdict, a.seed, a.std, a.shards):
        print(os.path.join(a.dir, fn))


def run_loss(d, seqs, double=False, want_logits=False):
    cdict, cfg, tensors, fdtype = load_dir(d)
    dt = torch.float64 if double else torch.float32
    r = compute_losses(cfg, upcast(tensors, dt), seqs, dt, want_logits)
    return dict({"architecture": cfg.architecture, "model_type": cdict.get("model_type"),
                 "dtype": fdtype, "compute_dtype": "float64" if double else "float32"}, **r)


def cmd_loss(a):
    try:
        r = run_loss(a.dir, parse_tokens(a.tokens), a.double, a.logits)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(r) + "\n"
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
        print(f"mean_loss {r['mean_loss']!r} over {r['num_loss_tokens']} tokens -> {a.out}")
    else:
        sys.stdout.write(text)
    return 0


def default_args(arch, **kw):
    p = build_parser()
    a = p.parse_args(["write", "unused", "--arch", arch])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def cmd_selftest(_a):
    t0 = time.time()
    fails = []
    ntest = 0

    def check(ok, what):
        nonlocal ntest
        ntest += 1
        if not ok:
            fails.append(what)
            print("FAIL", what)

    seqs = [{"input_ids": [5, 17, 3, 88, 2, 41, 9, 60, 33, 71, 12, 0], "labels": None},
            {"input_ids": [1, 95, 44, 44, 7], "labels": None}]
    for s in seqs:
        s["labels"] = list(s["input_ids"])
    seqs.append({"input_ids": [3, 14, 15, 92, 65, 35], "labels": [3, 14, -100, 92, -100, 35]})

    with tempfile.TemporaryDirectory() as tmp:
        combos = []
        for arch in ARCHS:
            for dtype in ("float32", "bfloat16"):
                for shards in (1, 2):
                    for tied in (False, True):
                        combos.append((arch, dtype, shards, tied))
        combos += [("qwen2", "float16", 3, False), ("llama", "float16", 1, True)]
        max_rel_d = {}
        for arch, dtype, shards, tied in combos:
            tag = f"{arch}/{dtype}/shards{shards}/{'tied' if tied else 'untied'}"
            a = default_args(arch, dtype=dtype, shards=shards, tied=tied, seed=1234)
            if arch == "llama" and not tied and dtype == "float32":
                a.attention_bias = True  # cover Llama's o_proj bias too
            if arch == "qwen3_moe" and shards == 2 and tied:
                a.layers, a.mlp_only_layers, a.decoder_sparse_step = 3, "1", 1  # a dense layer
            cdict = make_config(a)
            d = os.path.join(tmp, tag.replace("/", "_"))
            write_checkpoint(d, cdict, a.seed, a.std, shards)
            files = sorted(os.listdir(d))
            check(len([f for f in files if f.endswith(".safetensors")]) == max(1, shards),
                  f"{tag}: shard count {files}")
            # determinism: a second write gives the same bytes
            d2 = d + "_again"
            write_checkpoint(d2, cdict, a.seed, a.std, shards)
            same = sorted(os.listdir(d2)) == files and all(
                open(os.path.join(d, f), "rb").read() == open(os.path.join(d2, f), "rb").read()
                for f in files)
            check(same, f"{tag}: not byte-deterministic")
            # reload: bit-exact tensors, dtype, config
            cd2, cfg, tensors, fdtype = load_dir(d)
            check(cd2 == cdict and fdtype == dtype, f"{tag}: config/dtype round trip")
            mem = in_memory_weights(cdict, a.seed, a.std)
            check(set(mem) == set(tensors) and all(
                mem[n].dtype == tensors[n].dtype and torch.equal(mem[n], tensors[n]) for n in mem),
                f"{tag}: tensors differ after reload")
            check(("lm_head.weight" in tensors) == (not tied), f"{tag}: lm_head presence")
            # loss via files == loss in memory (exact), fp32 vs double
            r32 = run_loss(d, seqs)
            m32 = compute_losses(cfg, upcast(mem, torch.float32), seqs, torch.float32)
            check(r32["sequences"] == m32["sequences"], f"{tag}: file loss != in-memory loss")
            r64 = run_loss(d, seqs, double=True)
            worst = 0.0
            for s32, s64 in zip(r32["sequences"], r64["sequences"]):
                for x, y in zip(s32["losses"], s64["losses"]):
                    check((x is None) == (y is None), f"{tag}: ignore mask")
                    if x is not None:
                        worst = max(worst, rel(x, y))
            max_rel_d[tag] = worst
            check(worst < 1e-5, f"{tag}: fp32 vs double rel {worst:.2e}")
            check(r32["sequences"][2]["losses"][2] is None and r32["sequences"][2]["num_loss_tokens"] == 3,
                  f"{tag}: labels -100")
            check(all(3.0 < s["mean_loss"] < 7.0 for s in r32["sequences"]),
                  f"{tag}: implausible loss {r32['mean_loss']}")
            # naive float64 loop implementation (only on a subset: it is slow)
            if shards == 1 and not tied or arch == "qwen3_moe" and shards == 2 and tied:
                s = seqs[0]["input_ids"][:8]
                nv = naive_losses(cfg, tensors, s)
                vv = run_loss(d, [{"input_ids": s, "labels": s}], double=True)["sequences"][0]["losses"]
                w = max(rel(x, y) for x, y in zip(nv[1:], vv[1:]))
                check(w < 1e-9, f"{tag}: naive vs vectorised rel {w:.2e}")
            # causality: a prefix gives the same losses
            pre = seqs[0]["input_ids"][:6]
            rp = run_loss(d, [{"input_ids": pre, "labels": pre}], double=True)["sequences"][0]
            w = max(rel(x, y) for x, y in zip(rp["losses"][1:], r64["sequences"][0]["losses"][1:6]))
            check(w < 1e-12, f"{tag}: prefix losses differ rel {w:.2e}")

        # routing is not uniform and really selects experts
        a = default_args("qwen3_moe", seed=1234)
        cdict = make_config(a)
        cfg = Cfg(cdict)
        P = upcast(in_memory_weights(cdict, 1234, a.std), torch.float64)
        x = torch.randn(16, cfg.hidden, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        probs = torch.softmax(x @ P["model.layers.0.mlp.gate.weight"].t(), -1)
        check(float(probs.max()) > 0.5, "router probabilities look uniform")
        # norm_topk_prob off changes the loss
        a2 = default_args("qwen3_moe", seed=1234, no_norm_topk_prob=True)
        c2 = make_config(a2)
        l1 = compute_losses(cfg, P, seqs[:1], torch.float64)["mean_loss"]
        l2 = compute_losses(Cfg(c2), P, seqs[:1], torch.float64)["mean_loss"]
        check(abs(l1 - l2) > 1e-6, "norm_topk_prob has no effect")

        # malformed checkpoints are rejected, naming the file / tensor / field
        a = default_args("qwen2", shards=2)
        cdict = make_config(a)
        base = os.path.join(tmp, "bad")

        def fresh():
            import shutil
            shutil.rmtree(base, ignore_errors=True)
            write_checkpoint(base, cdict, 1, a.std, 2)

        def expect_error(what, needle):
            try:
                load_dir(base)
            except CheckpointError as e:
                check(needle in str(e), f"bad checkpoint '{what}': message {e} lacks {needle!r}")
                return
            check(False, f"bad checkpoint '{what}' was accepted")

        fresh()
        os.remove(os.path.join(base, "model-00002-of-00002.safetensors"))
        expect_error("missing shard", "model-00002-of-00002.safetensors")
        fresh()
        p1 = os.path.join(base, "model-00001-of-00002.safetensors")
        with open(p1, "r+b") as f:
            f.truncate(os.path.getsize(p1) - 10)
        expect_error("truncated", "truncated")
        fresh()
        c = dict(cdict)
        del c["hidden_size"]
        with open(os.path.join(base, "config.json"), "w") as f:
            json.dump(c, f)
        expect_error("missing field", "hidden_size")
        c["hidden_size"] = "64"
        with open(os.path.join(base, "config.json"), "w") as f:
            json.dump(c, f)
        expect_error("non-numeric field", "hidden_size")
        fresh()
        c = dict(cdict, rope_scaling={"rope_type": "yarn", "factor": 4.0})
        with open(os.path.join(base, "config.json"), "w") as f:
            json.dump(c, f)
        expect_error("rope scaling", "rope_scaling")
        fresh()
        c = dict(cdict, intermediate_size=cdict["intermediate_size"] + 1)
        with open(os.path.join(base, "config.json"), "w") as f:
            json.dump(c, f)
        expect_error("wrong shape", "mlp.gate_proj.weight")

    dt = time.time() - t0
    print(f"fixtures: {len(combos)} (4 archs x fp32/bf16 x 1/2 shards x tied/untied + 2 fp16)")
    print(f"max fp32-vs-double relative loss difference: {max(max_rel_d.values()):.2e}")
    for k in ARCHS:
        print(f"  {k:10s} {max(v for t, v in max_rel_d.items() if t.startswith(k + '/')):.2e}")
    print(f"checks: {ntest}, failures: {len(fails)}, time {dt:.1f} s")
    print("selftest " + ("PASSED" if not fails else "FAILED"))
    return 0 if not fails else 1


def build_parser():
    p = argparse.ArgumentParser(description="Plain-PyTorch Hugging Face decoder reference "
                                "(see the module docstring).")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write a tiny random HF checkpoint directory")
    w.add_argument("dir")
    w.add_argument("--arch", choices=sorted(ARCHS))
    w.add_argument("--dtype", choices=sorted(ST_DTYPES), default="float32")
    w.add_argument("--shards", type=int, default=1)
    w.add_argument("--tied", action="store_true")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--std", type=float, default=0.1)
    w.add_argument("--preset", choices=["qwen2-0.5b"])
    w.add_argument("--vocab", type=int, default=96)
    w.add_argument("--hidden", type=int, default=64)
    w.add_argument("--intermediate", type=int, default=96)
    w.add_argument("--layers", type=int, default=2)
    w.add_argument("--heads", type=int, default=4)
    w.add_argument("--kv-heads", type=int, default=2)
    w.add_argument("--head-dim", type=int, default=None)
    w.add_argument("--rope-theta", type=float, default=None)
    w.add_argument("--eps", type=float, default=None)
    w.add_argument("--max-pos", type=int, default=256)
    w.add_argument("--attention-bias", action="store_true")
    w.add_argument("--experts", type=int, default=4)
    w.add_argument("--top-k", type=int, default=2)
    w.add_argument("--moe-intermediate", type=int, default=32)
    w.add_argument("--no-norm-topk-prob", action="store_true")
    w.add_argument("--decoder-sparse-step", type=int, default=1)
    w.add_argument("--mlp-only-layers", default="")
    l = sub.add_parser("loss", help="per-token losses of a checkpoint directory")
    l.add_argument("dir")
    l.add_argument("--tokens", required=True)
    l.add_argument("--out")
    l.add_argument("--double", action="store_true")
    l.add_argument("--logits", action="store_true", help="include the last position's logits")
    sub.add_parser("selftest")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.cmd == "write":
        return cmd_write(a) or 0
    if a.cmd == "loss":
        return cmd_loss(a)
    return cmd_selftest(a)


if __name__ == "__main__":
    sys.exit(main())
