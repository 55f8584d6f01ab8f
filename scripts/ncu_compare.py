#!/usr/bin/env python3
"""Nsight Compute's measurements of the fused loss kernels beside the static cost model's estimates.

    python3 scripts/ncu_compare.py --model sass-cost.jsonl --ncu ncu-d128.csv:8192:128 \\
        [--ncu ncu-d512.csv:8192:512 ...] [--out profile.md]

--model: `scripts/sass_cost.py --json` output (scripts/gpu-kit.sh puts it in the kit as
sass-cost.jsonl). --ncu: `ncu --import REPORT --csv --page raw` of a run at N rows, D features (the
GPU run kit's phase 4 profiles ckbench's NT-Xent forward + backward, bf16, one run per D). Prints a
Markdown section (and writes it to --out): one row per profiled kernel that the model knows at that
shape, with the measured value beside the model's for the time (and the bound the model names),
achieved against theoretical occupancy, warp instructions executed, shared-memory wavefronts (the
model's width rule and its floor: README, "Static cost model", says ncu's figure should fall between
them), MUFU (XU pipe) instructions and the tensor pipe's active cycles. A metric the profile lacks
shows as "not collected". Standard library only; exit status 2 for unreadable input.

The model counts the column-tile loops only (no prologue, no final stores), so measured counts a
little above the model's are expected; a time far above the estimate is latency the model cannot see.
"""

import argparse
import collections
import csv
import io
import json
import re
import sys

# Each figure: the ncu metrics that give it, the first present wins. Shared-memory wavefronts fall
# back to the sum of the per-operation metrics when the total is not in the profile.
METRICS = {
    "time": ("gpu__time_duration.sum",),
    "occupancy": ("sm__warps_active.avg.pct_of_peak_sustained_active",),
    "instructions": ("smsp__inst_executed.sum", "sm__inst_executed.sum"),
    "smem_wavefronts": ("l1tex__data_pipe_lsu_wavefronts_mem_shared.sum",),
    "mufu": ("sm__inst_executed_pipe_xu.sum", "smsp__inst_executed_pipe_xu.sum"),
    "tensor_active": ("sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
                      "sm__inst_executed_pipe_tensor_op_hmma.avg.pct_of_peak_sustained_active"),
}
SMEM_OP_PREFIX = "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_"
TIME_UNITS = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
              "second": 1e6, "s": 1e6}


class InputError(Exception):
    pass


def number(text):
    """ncu's numbers may carry thousands separators; '' or 'n/a' -> None."""
    text = (text or "").strip().replace(",", "")
    if not text or text.lower() in ("n/a", "nan"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def read_ncu_csv(text):
    """`ncu --csv --page raw`: a header row of metric names, a row of units (its ID column empty),
    then one row per profiled kernel launch. Lines before the header (==PROF== messages) are
    skipped. Returns (units {column: unit}, [ {column: text} per launch ])."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"') or line.startswith("ID,")), None)
    if start is None:
        raise InputError('no "ID" header row: not the output of ncu --csv --page raw')
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header = rows[0]
    if "Kernel Name" not in header:
        raise InputError('the header has no "Kernel Name" column')
    units, launches = {}, []
    for row in rows[1:]:
        if not row:
            continue
        record = dict(zip(header, row))
        if not record.get("ID", "").strip():
            units = record  # the units row
            continue
        launches.append(record)
    return units, launches


def kernel_name(text):
    """'contrastive_backward_bf16_g1(CkContrastiveBackwardParams)' -> 'contrastive_backward_bf16_g1'."""
    m = re.match(r"\s*(?:void\s+)?([A-Za-z_]\w*)", text or "")
    return m.group(1) if m else ""


def figure(record, units, what):
    """(value, metric name) of one figure in one launch, or (None, None)."""
    for name in METRICS[what]:
        v = number(record.get(name))
        if v is not None:
            if what == "time":
                scale = TIME_UNITS.get((units.get(name) or "nsecond").strip())
                if scale is None:
                    continue
                v *= scale
            return v, name
    if what == "smem_wavefronts":
        parts = [number(v) for k, v in record.items() if k.startswith(SMEM_OP_PREFIX) and k.endswith(".sum")]
        parts = [p for p in parts if p is not None]
        if parts:
            return sum(parts), SMEM_OP_PREFIX + "*.sum"
    return None, None


def read_model(text):
    """The cost model's JSON Lines -> {kernel: record} (kind "kernel" only)."""
    model = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise InputError(f"model line {i}: {e}")
        if rec.get("kind") == "kernel":
            model[rec["kernel"]] = rec
    if not model:
        raise InputError("the model holds no kernel records (scripts/sass_cost.py --json)")
    return model


def shape_of(rec, n, d):
    return next((s for s in rec.get("shapes", []) if s["n"] == n and s["d"] == d), None)


def fmt(v, spec="{:,.0f}"):
    return "not collected" if v is None else spec.format(v)


def ratio(measured, estimated):
    if measured is None or not estimated:
        return ""
    return f" ({measured / estimated:.2f}x)"


def compare(model, profiles):
    """profiles: [(n, d, units, launches)]. Returns (rows, notes, metrics used): one row per kernel and
    shape that the model knows (the last launch of each; the count is shown), notes for the rest."""
    rows, notes, used = [], [], set()
    for n, d, units, launches in profiles:
        last, count = {}, collections.Counter()
        for rec in launches:
            name = kernel_name(rec.get("Kernel Name"))
            last[name] = rec
            count[name] += 1
        for name, rec in last.items():
            m = model.get(name)
            shape = shape_of(m, n, d) if m else None
            if shape is None:
                notes.append(f"{name} at N = {n}, D = {d}: profiled, but the model has no estimate there")
                continue
            values = {}
            for what in METRICS:
                values[what], metric = figure(rec, units, what)
                if metric:
                    used.add(metric)
            rows.append((name, n, d, count[name], m, shape, values))
    return rows, notes, sorted(used)


def render(rows, notes, used):
    out = ["## Profile (ncu) against the static cost model", ""]
    if not rows:
        out.append("No profiled kernel matched a kernel and shape of the model.")
    else:
        out += [
            "Measured (ncu, the last launch of each kernel) / estimated (scripts/sass_cost.py, sm_90a); "
            "the model's counts cover the column-tile loops only.",
            "",
            "| kernel | N | D | launches | time us: measured / est. (bound) | occupancy: achieved / theoretical | "
            "warp instructions: measured / model | smem wavefronts: measured / model (floor) | "
            "MUFU (XU) instructions: measured / model | tensor pipe active |",
            "|---|---:|---:|---:|---|---|---|---|---|---|",
        ]
        for name, n, d, launches, m, s, v in rows:
            theo = m.get("theoretical_occupancy")
            occ = (f"{fmt(v['occupancy'], '{:.1f} %')} / {fmt(100 * theo, '{:.1f} %')}" if theo is not None
                   else f"{fmt(v['occupancy'], '{:.1f} %')} / -")
            smem = v["smem_wavefronts"]
            between = ""
            if smem is not None and s.get("smem_wavefronts") and s.get("smem_wavefronts_min") is not None:
                lo, hi = s["smem_wavefronts_min"], s["smem_wavefronts"]
                between = " between" if lo <= smem <= hi else (" below the floor" if smem < lo else " above")
            out.append(
                f"| {name} | {n} | {d} | {launches} "
                f"| {fmt(v['time'], '{:.1f}')} / {s['est_time_us']:.1f} ({s['bound']}){ratio(v['time'], s['est_time_us'])} "
                f"| {occ} "
                f"| {fmt(v['instructions'])} / {s.get('warp_instructions', 0):,.0f}{ratio(v['instructions'], s.get('warp_instructions'))} "
                f"| {fmt(smem)} / {s.get('smem_wavefronts', 0):,.0f} ({s.get('smem_wavefronts_min', 0):,.0f}){between} "
                f"| {fmt(v['mufu'])} / {s.get('mufu_instructions', 0):,.0f}{ratio(v['mufu'], s.get('mufu_instructions'))} "
                f"| {fmt(v['tensor_active'], '{:.1f} %')} |")
    if used:
        out += ["", "ncu metrics used: " + ", ".join(f"`{u}`" for u in used) + "."]
    if notes:
        out += [""] + [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


def parse_profile_arg(arg):
    m = re.match(r"^(.+):(\d+):(\d+)$", arg)
    if not m:
        raise argparse.ArgumentTypeError(f"{arg!r}: expected FILE.csv:N:D")
    return m.group(1), int(m.group(2)), int(m.group(3))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="scripts/sass_cost.py --json output")
    ap.add_argument("--ncu", required=True, action="append", type=parse_profile_arg, metavar="FILE.csv:N:D",
                    help="ncu --csv --page raw of a run at N rows and D features (repeatable)")
    ap.add_argument("--out", help="also write the Markdown here")
    args = ap.parse_args(argv)
    try:
        with open(args.model, encoding="utf-8") as f:
            model = read_model(f.read())
        profiles = []
        for path, n, d in args.ncu:
            with open(path, encoding="utf-8", errors="replace") as f:
                units, launches = read_ncu_csv(f.read())
            profiles.append((n, d, units, launches))
    except (OSError, InputError) as e:
        print(f"ncu_compare: {e}", file=sys.stderr)
        return 2
    text = render(*compare(model, profiles))
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
