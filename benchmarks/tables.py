"""Rewrite the README's tables of figures from ``benchmarks/results/*.json``, so they cannot drift.

Each generated table sits between two markers in the README::

    <!-- table: NAME -->
    ...  (written by this script: a line naming the command and the run, then the table)
    <!-- end -->

and is rendered from the JSON its benchmark wrote (:data:`TABLES`: the file and the command
that writes it). A table whose JSON is missing is left as it is. ``tests/test_tables.py``
checks that the README's tables equal what this script renders from the committed JSON.

    python benchmarks/tables.py [--check] [--readme PATH] [--results DIR]

``--check`` changes nothing and exits 1 if a table differs from its JSON.

SPU's figures (the ``SPU 0.9.5`` columns of ``ops`` and ``llama``) come from ``spu.json``
(``benchmarks/measure_spu.py``) when it is in the results folder, else from the copy the
benchmark recorded; the line above the table names that file and its date.

The table ``costs`` (rounds, bytes per element and error of each op) comes from the ops'
declared costs (``puma_async.protocols.costs``, which ``tests/test_costs.py`` checks against
measured runs), not from a benchmark JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import reporting  # benchmarks/: this script's folder
from reporting import span

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
SECTION = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end -->)", re.DOTALL)
Data = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Table:
    """A generated table: the JSON it is rendered from (in the results folder), the command
    that writes that JSON, and the renderer (JSON -> markdown lines)."""

    source: str
    command: str
    render: Callable[[Data], list[str]]


# ----------------------------------------------------------------------------- formatting


def _mb(nbytes: float) -> str:
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.3g} GB"
    return f"{nbytes / 1e6:.3g} MB" if nbytes >= 1e5 else f"{nbytes / 1e6:.2f} MB"


def _seconds(seconds: float) -> str:
    return f"{seconds:.3g} s"


def _run_line(command: str, source: str, machine: Data, extra: str = "") -> str:
    """The line above a table: what produced it, on how busy a machine."""
    load = machine.get("load_average_at_start", [None])[0]
    memory = machine.get("memory_read_gbps")  # recorded from stop 36 on
    memory_check = (f", memory check {memory:.0f} GB/s (a one-row ring product's reads of a "
                    f"cold matrix)" if memory is not None else "")
    return (f"`{command}` -> `benchmarks/results/{source}`: one run, Python-loop check "
            f"{machine['python_loop_1e7_seconds']:.2f} s (quiet: 0.36 s; slower means a busy "
            f"host and proportionally slower times){memory_check}, load average {load:.1f} at "
            f"start{extra}.")


# ----------------------------------------------------------------------------- renderers


def _error(result: Data) -> str:
    if "max_error_ulp" in result:
        return f"{result['max_error_ulp']:.0f} ulp"
    if "max_abs_error" in result:
        return f"{result['max_abs_error']:.2g}"
    if "wrong" in result:
        return f"{result['wrong']} wrong"
    return ""


def _spu(spu: Data | None) -> str:
    if not spu:
        return ""
    parts = [_seconds(spu["seconds"]), _mb(spu["bytes_all_parties"])]
    if "messages_p0" in spu:
        parts.append(f"{spu['messages_p0']} messages at P0")
    if "send_actions_max" in spu:
        parts.append(f"{spu['send_actions_max']} messages per party (max)")
    if "wrong" in spu:
        parts.append(f"{spu['wrong']} wrong")
    return ", ".join(parts)


def render_ops(data: Data) -> list[str]:
    """Secure operations (``benchmarks/ops.py``): time, online bytes and rounds, the offline
    part's, messages, error, and SPU's figures beside them where they were measured."""
    lines = [
        "| operation | seconds (best; median) | MB sent by P0-P2 | rounds | offline "
        "| messages at P0 | error | SPU 0.9.5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in data.items():
        if name == "machine" or "bytes_all_parties" not in result:
            continue
        offline = (f"{result['offline_rounds']} rounds, "
                   f"{_mb(result['offline_bytes_all_parties'])}"
                   if result.get("offline_bytes_all_parties") else "")
        lines.append(
            f"| {result['description']} | {_seconds(result['seconds'])}; "
            f"{_seconds(result['median_seconds'])} | {_mb(result['bytes_all_parties'])} "
            f"| {result['rounds']} | {offline} | {result['messages_p0']} | {_error(result)} "
            f"| {_spu(result.get('spu'))} |")
    rate = data.get("ring_matmul_rate")
    if rate is not None:
        lines.append(f"| {rate['description']} | {_seconds(rate['seconds'])} "
                     f"({rate['gmacs_per_second']:.2f} G multiply-adds/s) | | | | | exact | |")
    return lines


def render_transport(data: Data) -> list[str]:
    """Cost of a message (``benchmarks/transport.py``): round trips and one-way throughput."""
    results = data["results"]
    links = {"memory": "in-memory", "tcp": "loopback TCP", "tls": "TLS 1.3"}
    levels = ("raw_trio", "transport", "runtime")

    def cell(level: str, link: str) -> str:
        figures = results.get(level, {}).get(link)
        if figures is None:
            return ""
        rate = f", {figures['gib_per_s']:.3g} GiB/s" if "gib_per_s" in figures else ""
        return f"{figures['rtt_us']:.0f} us{rate}"

    lines = ["| link | raw Trio | transport | runtime |", "|---|---|---|---|"]
    for link, label in links.items():
        lines.append(f"| {label} | " + " | ".join(cell(level, link) for level in levels) + " |")
    return lines


def render_ring_matmul(data: Data) -> list[str]:
    """The local ring layer (``benchmarks/ring_matmul.py``): matmul rates and the PRG."""
    lines = [
        "| (m x k) @ (k x n) | method | one call | three threads (ratio) | per CPU second |",
        "|---|---|---|---|---|",
    ]
    for row in data["matmul"]:
        m, k, n = row["shape"]
        lines.append(
            f"| ({m}x{k})@({k}x{n}) | {row['method']} | {row['gmacs_1']:.2f} G/s "
            f"| {row['gmacs_3_threads']:.2f} G/s ({row['ratio_3_over_1']:.2f}) "
            f"| {row['gmacs_per_cpu_second']:.2f} G/s |")
    lines += ["", "| PRG | output | rate |", "|---|---|---|"]
    for row in data["prg"]:
        lines.append(f"| AES-{row['aes_bits']}-CTR | {row['bytes']} bytes "
                     f"| {row['gbytes_per_s']:.2f} GB/s |")
    return lines


def _phases(passes: list[Data]) -> tuple[str, str]:
    """The online and the offline cells of one pass or of several (min-max): rounds, MB."""
    cells = []
    for phase in ("online", "offline"):
        rounds = span([p[phase]["rounds"] for p in passes], ".0f")
        nbytes = [p[phase]["bytes"] for p in passes]
        unit, scale = ("GB", 1e9) if max(nbytes) >= 1e9 else ("MB", 1e6)
        cells.append(f"{rounds} rounds, {span([b / scale for b in nbytes], '.3g')} {unit}")
    return cells[0], cells[1]


def render_llama(data: Data) -> list[str]:
    """SmolLM2-135M and one LLaMA-7B-shape block (``benchmarks/llama.py``): per pass the
    seconds, the online and the offline rounds and bytes (all parties); then the set-up and
    each part's peak memory."""
    spu = data.get("spu_reference") or {}
    smol = data["smollm2"]
    lines = ["| pass | seconds | online | offline | SPU 0.9.5 |", "|---|---|---|---|---|"]
    for i, prompt in enumerate(smol["prompts"]):
        pp, tokens = prompt["prompt_pass"], prompt["new_tokens"]
        forward = spu.get("smollm2_forward_5_tokens") if prompt["prompt_tokens"] == 5 else None
        lines.append(
            f"| SmolLM2-135M, {prompt['prompt_tokens']}-token prompt pass "
            f"| {pp['seconds']:.1f} s | {' | '.join(_phases([pp]))} "
            f"| {_spu(forward) if forward else ''} |")
        if tokens:
            lines.append(
                f"| SmolLM2-135M, each of {len(tokens)} new tokens (KV cache) "
                f"| {span([t['seconds'] for t in tokens], '.1f')} s "
                f"| {' | '.join(_phases(tokens))} "
                f"| {'(no cache: a full pass)' if i == 0 else ''} |")
    block = data.get("block7b")
    if block is not None:
        layer = block["block"]  # the decoder layer alone; the forward adds embedding and head
        figures = {"online": {"rounds": layer["rounds"], "bytes": layer["bytes_all_parties"]},
                   "offline": layer["offline"]}
        lines.append(
            f"| one LLaMA-7B-shape block, {block['config']['tokens']} tokens "
            f"| {block['forward']['seconds']:.1f} s (the forward) "
            f"| {' | '.join(_phases([figures]))} "
            f"| {_spu(spu.get('llama7b_block_8_tokens'))} |")
        derived = data["llama7b_derived"]
        lines.append(
            f"| LLaMA-7B (8 -> 1), derived from the block | {derived['seconds']:.0f} s "
            f"| {derived['bytes_all_parties'] / 1e9:.3f} GB online and offline together | "
            f"| PUMA's paper: {derived['puma']['seconds']:.0f} s, "
            f"{derived['puma']['bytes'] / 1e9:.3f} GB |")
    spu_peak = spu.get("smollm2_forward_5_tokens", {}).get("peak_memory_bytes")
    peaks = f"the SmolLM2 session {smol['peak_memory_bytes'] / 1e9:.1f} GB" + (
        f" (SPU's forward: {spu_peak / 1e9:.1f} GB)" if spu_peak else "")
    if block is not None:
        peaks += f", the 7B-shape block {block['peak_memory_bytes'] / 1e9:.1f} GB"
    lines += ["", f"SmolLM2 set-up (the model owner shares the weights; not in the passes): "
                  f"{smol['setup']['seconds']:.1f} s, the model owner sent "
                  f"{_mb(smol['setup']['model_owner_bytes_sent'])}. Peak memory: {peaks}."]
    return lines


ONCE_PER_PASS = ("io", "embed", "tuples", "head")
"""The accounting's rows outside the layers (``puma_async.session.accounting.component_rows``)."""


def render_llama_components(data: Data) -> list[str]:
    """SmolLM2's first new token (KV cache, 5-token prompt) by component of a layer
    (``benchmarks/llama.py``'s accounting): online rounds on the critical path and bytes per
    layer (min-max over the layers), and the offline bytes; ``io``, ``embed``, ``tuples`` (the
    pass's TP1 tuples, offline) and ``head`` once per pass. The rows' rounds and bytes, over
    all layers, sum to the pass's."""
    token = data["smollm2"]["prompts"][0]["new_tokens"][0]
    lines = ["| component | online rounds per layer | online KB per layer | offline KB per layer |",
             "|---|---|---|---|"]
    layer_rounds = [0] * len(token["components"]["attn.norm"]["online"]["rounds"])
    for name, figures in token["components"].items():
        on, off = figures["online"], figures["offline"]
        once = name in ONCE_PER_PASS
        if not once:
            layer_rounds = [a + b for a, b in zip(layer_rounds, on["rounds"], strict=True)]
        offline = span([b / 1e3 for b in off["bytes"]], ".1f") if any(off["bytes"]) else ""
        lines.append(f"| `{name}`{' (once)' if once else ''} "
                     f"| {span(on['rounds'], 'd')} "
                     f"| {span([b / 1e3 for b in on['bytes']], '.1f')} | {offline} |")
    lines.append(f"| a layer (its components) | {span(layer_rounds, 'd')} | | |")
    online, offline_all = token["online"], token["offline"]
    lines.append(f"| the pass ({len(layer_rounds)} layers; online, offline) "
                 f"| {online['rounds']} rounds | {online['bytes'] / 1e6:.3g} MB "
                 f"| {offline_all['bytes'] / 1e6:.3g} MB |")
    return lines


def render_costs(rows: Iterable[Data]) -> list[str]:
    """The declared cost of each op (``puma_async.protocols.costs.rows()``): one row per
    measured case, online rounds and bytes per element from all parties together; the error
    bound on an op's first row. An offline column appears once any op has an offline part."""
    rows = list(rows)
    offline = any(r["offline_rounds"] or r["offline_bytes"] for r in rows)
    head = "| op | inputs | rounds | bytes per element |" + (" offline |" if offline else "")
    lines = [head + " error |", "|---|---|---|---|" + ("---|" if offline else "") + "---|"]
    previous = None
    for r in rows:
        label = f"`{r['op'].rsplit('.', 1)[0]}.{r['name']}`"  # the variant, if any, is in name
        first = label != previous
        shapes = ", ".join("(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"
                           for s in r["shapes"])
        per = "" if r["per"] == "element" else f" per {r['per']}"
        cells = [label if first else "", shapes, str(r["online_rounds"]),
                 f"{r['online_bytes']:g}{per}"]
        if offline:
            has = r["offline_rounds"] or r["offline_bytes"]
            rounds = r["offline_rounds"]
            cells.append(f"{rounds} round{'s' * (rounds != 1)}, {r['offline_bytes']:g}" if has
                         else "")
        cells.append(r["error"].replace("|", "\\|") if first else "")
        lines.append("| " + " | ".join(cells) + " |")
        previous = label
    return lines


def cost_rows() -> list[Data]:
    """The ops' declared costs (``puma_async.protocols.costs``, checked against measured ones
    by ``tests/test_costs.py``)."""
    from puma_async.protocols import costs

    return list(costs.rows())


def render_deployment(data: Data) -> list[str]:
    """Five processes over loopback TLS (``benchmarks/deployment.py``): time to first token,
    set-up, passes (seconds, the three parties' MB), each party's CPU per pass (the process and
    its event loop), peak memory."""
    tokens = data["per_token_mb_parties"]
    cpu = data.get("cpu_seconds_per_pass") or {}
    peaks = data["peak_memory_bytes"]
    party_peak = max(peaks[p] for p in ("P0", "P1", "P2"))
    prompt_mb = data["prompt_pass"]["mb_parties"]

    def party_cpu(passes: slice) -> str:
        return ", ".join(
            f"{party} {span(c['process'][passes], '.2f')} ({span(c['event_loop'][passes], '.2f')})"
            for party, c in cpu.items())

    rows = [
        ("time to first token from start (processes started, owner loaded its file at "
         f"{data['owner_loaded_seconds']:.1f} s, set-up, prompt pass)",
         f"{data['time_to_first_token_seconds']:.1f} s"),
        ("set-up as the client saw it (connected until every party stored its shares)",
         f"{data['setup_seconds_client']:.1f} s"),
        (f"prompt pass ({data['prompt_tokens']} tokens): seconds, MB sent by the three parties",
         f"{data['prompt_pass']['seconds']:.2f} s, {prompt_mb['online']:.1f} MB online + "
         f"{prompt_mb['offline']:.1f} MB offline"),
        ("each new token", f"{span(data['per_token_seconds'], '.2f')} s, "
         f"{span([t['online'] for t in tokens], '.1f')} MB online + "
         f"{span([t['offline'] for t in tokens], '.1f')} MB offline"),
    ]
    if cpu and all(c is not None for c in cpu.values()):
        rows += [
            ("CPU seconds of each new token, per party: whole process (its event loop)",
             party_cpu(slice(1, None))),
            ("CPU seconds of the prompt pass, per party: whole process (its event loop)",
             party_cpu(slice(0, 1))),
        ]
    rows.append(("peak memory: each party / model owner / client",
                 f"{party_peak / 2**30:.2f} GiB / {peaks['model-owner'] / 2**30:.2f} GiB / "
                 f"{peaks['client'] / 2**30:.2f} GiB"))
    return ["| figure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]


TABLES = {
    "ops": Table("ops.json", "python benchmarks/ops.py", render_ops),
    "transport": Table("transport.json", "python benchmarks/transport.py", render_transport),
    "ring-matmul": Table("ring_matmul.json", "python benchmarks/ring_matmul.py",
                         render_ring_matmul),
    "llama": Table("llama.json", "python benchmarks/llama.py", render_llama),
    "llama-components": Table("llama.json", "python benchmarks/llama.py",
                              render_llama_components),
    "deployment": Table("deployment.json", "python benchmarks/deployment.py",
                        render_deployment),
}


# ----------------------------------------------------------------------------- the README


def render(name: str, results: Path = RESULTS) -> str | None:
    """The body of table ``name`` (ending in a newline), or None when its data is missing."""
    if name == "costs":
        head = ("Declared in `protocols/costs.py` (`tests/test_costs.py` measures every case); "
                "`python benchmarks/tables.py` renders them.\n\n")
        return head + "\n".join(render_costs(cost_rows())) + "\n"
    table = TABLES.get(name)
    if table is None:
        raise KeyError(f"unknown table {name!r} (known: costs, {', '.join(TABLES)})")
    path = results / table.source
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    machine = data.get("machine")
    spu = reporting.spu_figures(results / "spu.json") if name in ("ops", "llama") else None
    extra = ""
    if spu is not None:
        data = with_spu(name, data, spu)
        runs = (list(spu["ops"].values()) if name == "ops" else
                [spu[key] for key in ("smollm2_forward_5_tokens", "llama7b_block_8_tokens")
                 if key in spu])
        loads = sorted({f"{run['load_average_at_start'][0]:.1f}" for run in runs}, key=float)
        load_span = "-".join(dict.fromkeys([loads[0], loads[-1]])) if loads else ""
        extra = (f"; the SPU column: `python benchmarks/measure_spu.py` -> "
                 f"`{spu['source']}`, {spu['date']}"
                 + (f", load average {load_span} at its runs' starts" if load_span else ""))
    head = [_run_line(table.command, table.source, machine, extra), ""] if machine else []
    return "\n".join([*head, *table.render(data)]) + "\n"


def with_spu(name: str, data: Data, spu: Data) -> Data:
    """``data`` (of table ``ops`` or ``llama``) with SPU's figures from ``spu`` (as
    ``reporting.spu_figures`` gives them) in place of those the benchmark recorded."""
    if name == "llama":
        return {**data, "spu_reference": spu}
    return {key: {**result, "spu": reporting.spu_op(spu, key)}
            if isinstance(result, Mapping) and "bytes_all_parties" in result else result
            for key, result in data.items()}


def rewrite(text: str, results: Path = RESULTS) -> str:
    """``text`` with every table whose data exists rendered anew."""

    def replace(match: re.Match[str]) -> str:
        body = render(match["name"], results)
        return match.group(0) if body is None else match.group(1) + body + match.group(4)

    return SECTION.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a table differs from its JSON")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = rewrite(text, args.results)
    names = [m["name"] for m in SECTION.finditer(text)]
    if args.check:
        if new != text:
            print(f"{args.readme}: tables differ from {args.results}; run "
                  f"python benchmarks/tables.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme}: tables {', '.join(names) or '(none)'} rendered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
