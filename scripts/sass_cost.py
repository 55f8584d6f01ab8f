#!/usr/bin/env python3
"""Static SASS cost model of the kernels, for sm_90a (H100 / H200), with no GPU.

    python3 scripts/sass_cost.py [KERNELS_DIR_OR_CU ...] [--json] [--out FILE.md] [--filter REGEX]

(scripts/sass-cost.sh finds the toolchain and calls this.) Every number it prints is *estimated*
from the compiler's output: ptxas' report (registers, spills, shared memory), `cuobjdump -elf`
(launch bounds) and `cuobjdump -sass` (the instructions). The README's "Static cost model"
section explains the model and where it is blind. Python 3 standard library only.

Layout, one function per concern:
  toolchain        find_tool, compile_cubin
  parsing          parse_ptxas_report, parse_elf_max_threads, parse_sass, parse_header_constants,
                   parse_tile_configs
  control flow     find_loops (backward branches -> nested loop intervals)
  per kernel       analyse_kernel (k-loop, column-tile loop, epilogue counts), occupancy
  per bench shape  KERNEL_MODELS (RESOURCE_ONLY: the kernels left without one, and why),
                   forward_schedule / backward_schedule + backward_launch (mirror src/ops/contrastive/gpu.rs),
                   estimate_shape
  output           render_markdown, json_records
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Hardware constants (H100 SXM / H200: DESIGN.md section 6; occupancy rules as cuda_occupancy.h
# of the pinned toolchain for compute capability 9.x).
SMS = 132                       # SMs on H100 SXM / H200
CLOCK_HZ = 1.755e9              # SM clock assumed for issue and MUFU rates (sustained boost)
PEAK_TENSOR_FLOPS = 989e12      # dense f16 / bf16 tensor-core peak (DESIGN.md section 6)
SCHEDULERS_PER_SM = 4           # warp schedulers (sub-partitions), 1 instruction / clock each
MUFU_PER_CLK_PER_SM = 16        # MUFU (ex2, rcp, lg2, rsq, ...) lanes per clock per SM
SMEM_WAVEFRONTS_PER_CLK = 1     # 128 bytes of shared memory per clock per SM
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256            # registers, allocated per warp
SUB_PARTITIONS = 4
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32
SMEM_PER_SM = 228 * 1024        # the largest carveout (the driver picks it for these kernels)
SMEM_MAX_PER_CTA = 227 * 1024
SMEM_RESERVED_PER_CTA = 1024    # reserved by the driver per block
SMEM_ALLOC_UNIT = 128
WARP = 32

# The bench shapes of issue 13 (N rows in the self geometry, D features).
BENCH_SHAPES = [(8192, 128), (8192, 512), (65536, 128), (65536, 512)]
HEADLINE_SHAPE = (8192, 128)    # the shape of `est_percent_of_peak` in a kernel's JSON object

ARCH = "sm_90a"
# As build.rs' compile(): the same language flags, one SASS target.
NVCC_FLAGS = ["-cubin", f"-arch={ARCH}", "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-Xptxas", "-v"]

MUFU_OPS = ("MUFU",)
SHARED_LOADS = ("LDSM", "LDS")          # shared-memory reads (LDSM.*, LDS.*)
SHARED_WRITES = ("STS", "LDGSTS")       # shared-memory writes (st.shared, cp.async)
# Feeding the MMAs, besides themselves: fragment loads, cp.async and its waits, barriers, wgmma fences.
MMA_PIPELINE_OPS = ("LDSM", "LDGSTS", "LDGDEPBAR", "DEPBAR", "BAR", "WARPGROUP", "UTMALDG", "SYNCS")


# ---------------------------------------------------------------------------------------------
# Toolchain


def toolchain_bin_dirs():
    """Where build_support/cuda.rs looks for nvcc, in its order (the tools sit beside nvcc)."""
    dirs = []
    if os.environ.get("NVCC"):
        dirs.append(os.path.dirname(os.environ["NVCC"]))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], "bin"))
    dirs.extend(os.environ.get("PATH", "").split(os.pathsep))
    dirs.append("/usr/local/cuda/bin")
    toolchain = os.environ.get("CONTRASTIVE_KERNELS_TOOLCHAIN")
    if not toolchain:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        toolchain = os.path.join(cache, "contrastive-kernels", "cuda-13.0.88")
    dirs.append(os.path.join(toolchain, "nvidia", "cu13", "bin"))
    return [d for d in dirs if d]


def find_tool(name):
    """nvcc / cuobjdump: $NVCC for nvcc, else the first folder of toolchain_bin_dirs() holding the tool."""
    if name == "nvcc" and os.environ.get("NVCC") and os.path.isfile(os.environ["NVCC"]):
        return os.environ["NVCC"]
    for d in toolchain_bin_dirs():  # cuobjdump: beside $NVCC first
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def compile_cubin(nvcc, source, include_dir, out_dir):
    """nvcc -cubin for sm_90a; returns (cubin path, ptxas' report from stderr)."""
    cubin = os.path.join(out_dir, os.path.splitext(os.path.basename(source))[0] + ".cubin")
    cmd = [nvcc, *NVCC_FLAGS, "-I", include_dir, "-o", cubin, source]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{proc.stdout}{proc.stderr}")
    return cubin, proc.stderr


def run_tool(tool, *args):
    proc = subprocess.run([tool, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(tool)} {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass
class PtxasInfo:
    regs: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem_bytes: int = 0
    barriers: int = 0


def parse_ptxas_report(text):
    """ptxas -v's stderr -> {kernel: PtxasInfo} (entry functions only, for the last arch compiled)."""
    info, current = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = info.setdefault(m.group(1), PtxasInfo())
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            # Non-entry functions (the division's slow path) have properties too: not kernels.
            current = info.get(m.group(1))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.stack_bytes, current.spill_stores, current.spill_loads = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current.regs = int(m.group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            current.smem_bytes = int(sm.group(1)) if sm else 0
            bm = re.search(r"used (\d+) barriers", line)
            current.barriers = int(bm.group(1)) if bm else 0
    return info


def parse_elf_max_threads(text):
    """`cuobjdump -elf`: each kernel's EIATTR_MAX_THREADS (its __launch_bounds__ block size), if any."""
    out, kernel, want = {}, None, False
    for line in text.splitlines():
        m = re.match(r"^\.nv\.info\.(\S+)$", line.strip())
        if m:
            kernel, want = m.group(1), False
            continue
        if kernel is None:
            continue
        if "Attribute:" in line:
            want = "EIATTR_MAX_THREADS" in line
            continue
        if want and "Value:" in line:
            dims = [int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", line)]
            if dims:
                out[kernel] = math.prod(dims)
            want = False
    return out


@dataclass
class Instr:
    addr: int
    pred: str        # "" or "@P0", "@!P2", ...
    opcode: str      # full opcode with modifiers: "HMMA.16816.F32.BF16"
    operands: str

    @property
    def base(self):  # "HMMA"
        return self.opcode.split(".")[0]


SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def parse_sass(text):
    """`cuobjdump -sass` -> {kernel: [Instr]} (a kernel's listing includes its internal subroutines)."""
    kernels, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^\s*Function : (\S+)", line)
        if m:
            current = kernels.setdefault(m.group(1), [])
            continue
        if current is None:
            continue
        m = SASS_LINE.match(line)
        if not m:
            continue
        body = m.group(2).strip()
        pred = ""
        if body.startswith("@"):
            pred, body = body.split(None, 1)
        parts = body.split(None, 1)
        current.append(Instr(int(m.group(1), 16), pred, parts[0], parts[1] if len(parts) > 1 else ""))
    return kernels


def parse_header_constants(path):
    """`#define CK_NAME expr` of a params header -> {NAME without CK_: int} (integer expressions only)."""
    values = {}
    if not os.path.isfile(path):
        return values
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        m = re.match(r"\s*#define\s+CK_(\w+)\s+(.+?)\s*(//.*)?$", line)
        if not m:
            continue
        expr = re.sub(r"CK_(\w+)", lambda k: str(values.get(k.group(1), "None")), m.group(2))
        if re.fullmatch(r"[0-9+\-*/() ]+", expr):
            values[m.group(1)] = int(eval(expr.replace("/", "//"), {"__builtins__": {}}))  # digits and operators only
    return values


@dataclass
class Tile:
    name: str
    BM: int
    BN: int
    BK: int
    warps_m: int
    warps_n: int
    elem_bytes: int = 2

    @property
    def threads(self):
        return self.warps_m * self.warps_n * WARP

    @property
    def warps(self):
        return self.warps_m * self.warps_n

    @property
    def mma_per_warp_per_k_step(self):
        """m16n8k16 MMAs of one warp per BK step: MI x NI x BK / 16."""
        return (self.BM // self.warps_m // 16) * (self.BN // self.warps_n // 8) * (self.BK // 16)


def parse_tile_configs(path):
    """`using Name = MmaTileConfig<BM, BN, BK, WARPS_M, WARPS_N[, ELEM_BYTES]>;` of one source file."""
    tiles = {}
    if not os.path.isfile(path):
        return tiles
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for m in re.finditer(r"using\s+(\w+)\s*=\s*MmaTileConfig<\s*([\d\s,]+)>", text):
        args = [int(a) for a in m.group(2).split(",") if a.strip()]
        tiles[m.group(1)] = Tile(m.group(1), *args[:6])
    return tiles


# ---------------------------------------------------------------------------------------------
# Control flow: loops from backward branches


@dataclass
class Loop:
    start: int                  # the header's address (the backward branch's target)
    end: int                    # the address of the last backward branch to it
    children: list = field(default_factory=list)
    parent: "Loop" = None

    def contains(self, addr):
        return self.start <= addr <= self.end


BRANCH_OPS = ("BRA", "JMP")


def branch_target(ins):
    """The target address of a direct branch (the last hex literal of its operands), else None."""
    if ins.base not in BRANCH_OPS:
        return None
    hexes = re.findall(r"0x([0-9a-f]+)", ins.operands)
    return int(hexes[-1], 16) if hexes else None


def merge_partial_overlaps(intervals):
    """Intervals that overlap without one containing the other (irreducible or rotated loops) become
    their union, until every pair is nested or disjoint."""
    intervals = list(intervals)
    changed = True
    while changed:
        changed = False
        for i, (s1, e1) in enumerate(intervals):
            for j, (s2, e2) in enumerate(intervals):
                if i != j and s1 < s2 <= e1 < e2:
                    intervals[i] = (s1, e2)
                    del intervals[j]
                    changed = True
                    break
            if changed:
                break
    return sorted(intervals)


def find_loops(instrs):
    """Natural-loop approximation: every backward branch (target < its address) closes the interval
    [target, branch]; intervals with one header merge, partially overlapping ones merge into their
    union, and the rest nest by containment. `BRA` to itself (the trap loop after EXIT) is no loop.
    Returns the top-level loops, each with .children, sorted by address."""
    spans = {}
    for ins in instrs:
        t = branch_target(ins)
        if t is not None and t < ins.addr:
            spans[t] = max(spans.get(t, t), ins.addr)
    intervals = merge_partial_overlaps(sorted(spans.items()))
    loops = [Loop(s, e) for s, e in sorted(intervals, key=lambda se: (se[0], -se[1]))]
    roots, stack = [], []
    for lp in loops:
        while stack and not (stack[-1].start <= lp.start and lp.end <= stack[-1].end):
            stack.pop()
        if stack:
            lp.parent = stack[-1]
            stack[-1].children.append(lp)
        else:
            roots.append(lp)
        stack.append(lp)
    return roots


def all_loops(roots):
    for lp in roots:
        yield lp
        yield from all_loops(lp.children)


def slow_path_addresses(instrs):
    """Addresses of the basic blocks that hold a CALL (the IEEE division's slow-path call and its
    argument / result moves): off the hot path. Blocks start at branch targets and after a branch,
    EXIT or RET (not after a CALL, so the result move stays in the call's block)."""
    leaders = {instrs[0].addr} if instrs else set()
    for i, ins in enumerate(instrs):
        t = branch_target(ins)
        if t is not None:
            leaders.add(t)
        if ins.base in BRANCH_OPS + ("EXIT", "RET") and i + 1 < len(instrs):
            leaders.add(instrs[i + 1].addr)
    slow, block, has_call = set(), [], False
    for ins in instrs + [None]:
        if ins is None or (ins.addr in leaders and block):
            if has_call:
                slow.update(block)
            block, has_call = [], False
        if ins is not None:
            block.append(ins.addr)
            has_call |= ins.base == "CALL"
    return slow


def body(instrs, loop, exclude_children=True):
    """The instructions of a loop, without those of its inner loops (when exclude_children); NOPs dropped."""
    out = []
    for ins in instrs:
        if not loop.contains(ins.addr) or ins.opcode == "NOP":
            continue
        if exclude_children and any(c.contains(ins.addr) for c in loop.children):
            continue
        out.append(ins)
    return out


# ---------------------------------------------------------------------------------------------
# Instruction classes


def is_mma(ins, mma_op):
    return ins.base == mma_op or (mma_op == "HMMA" and ins.base == "HGMMA")


def mma_flops(ins):
    """FLOPs of one warp's MMA instruction: HMMA.MNK (e.g. 16816: m16 n8 k16) = 2 m n k; HGMMA.MxNxK
    is a warpgroup's (4 warps) instruction: 2 m n k / 4 per warp; FFMA: 2 per lane."""
    if ins.base == "FFMA":
        return 2 * WARP
    if ins.base == "HGMMA":
        m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", ins.opcode)
        return 2 * math.prod(map(int, m.groups())) // 4 if m else 0
    m = re.match(r"HMMA\.16(8)(\d+)", ins.opcode)
    return 2 * 16 * 8 * int(m.group(2)) if m else 0


def smem_wavefronts(ins):
    """128-byte shared-memory wavefronts of one warp instruction, conflict-free: LDSM .x4 = 4, .x2 = 2,
    .x1 = 1; LDS / STS / LDGSTS: 32 lanes x width / 128 B (a 32-bit access: 1)."""
    if ins.base == "LDSM":
        m = re.search(r"\.M(?:T)?88(?:\.(\d))?", ins.opcode)
        return int(m.group(1) or 1) if m else 1
    if ins.base in ("LDS",) + SHARED_WRITES:
        m = re.search(r"\.(64|128)\b", ins.opcode)
        return int(m.group(1)) // 32 if m else 1
    return 0


def smem_wavefronts_min(ins):
    """The fewest wavefronts the instruction can take: LDS / STS at least 1 whatever their width
    (lanes that share an address or 16-byte group are served by one, as the epilogues' reads of
    staged per-column / per-row data that the 4 lanes of a quad or the 8 row groups share);
    LDSM and cp.async (LDGSTS) as smem_wavefronts (distinct rows, distinct bytes)."""
    w = smem_wavefronts(ins)
    return min(w, 1) if ins.base in ("LDS", "STS") else w


@dataclass
class Counts:
    """One warp's instructions of a region. Hot-path counts leave out slow_path_addresses();
    instructions_all_paths counts every instruction once."""
    instructions: int = 0
    instructions_all_paths: int = 0
    mma_pipeline: int = 0      # MMAs, their shared-memory fragment loads, copies into shared, barriers
    mufu: int = 0
    mma: int = 0
    mma_flops: int = 0
    smem_read_wavefronts: int = 0
    smem_wavefronts: int = 0
    smem_wavefronts_min: int = 0  # LDS / STS at one wavefront each (smem_wavefronts_min)
    calls: int = 0

    def add(self, other, times=1):
        for k in vars(self):
            setattr(self, k, getattr(self, k) + times * getattr(other, k))


def count(instrs, mma_op, slow=frozenset()):
    c = Counts()
    for ins in instrs:
        if ins.opcode == "NOP":
            continue
        c.instructions_all_paths += 1
        if ins.addr in slow:
            c.calls += ins.base == "CALL"
            continue
        c.instructions += 1
        c.mma_pipeline += is_mma(ins, mma_op) or ins.base in MMA_PIPELINE_OPS
        c.mufu += ins.base in MUFU_OPS
        if is_mma(ins, mma_op):
            c.mma += 1
            c.mma_flops += mma_flops(ins)
        w = smem_wavefronts(ins)
        c.smem_wavefronts += w
        c.smem_wavefronts_min += smem_wavefronts_min(ins)
        c.smem_read_wavefronts += w if ins.base in SHARED_LOADS else 0
    return c


# ---------------------------------------------------------------------------------------------
# Per kernel


def occupancy(regs, threads, smem_bytes):
    """CTAs per SM and the limiting resource, as cuda_occupancy.h for compute capability 9.x:
    registers per warp rounded up to 256 and allocated per sub-partition (65536 / 4 each), 64 warps,
    32 blocks, shared memory (static + 1 KB reserved, rounded up to 128 B) out of 228 KB."""
    warps = -(-threads // WARP)
    limits = {"warps": MAX_WARPS_PER_SM // warps, "blocks": MAX_CTAS_PER_SM}
    regs_per_warp = -(-max(regs, 1) * WARP // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    warps_per_sub = (REGS_PER_SM // SUB_PARTITIONS) // regs_per_warp
    limits["registers"] = (warps_per_sub * SUB_PARTITIONS) // warps
    if regs_per_warp * -(-warps // SUB_PARTITIONS) * SUB_PARTITIONS > REGS_PER_SM:
        limits["registers"] = 0
    smem = -(-(smem_bytes + SMEM_RESERVED_PER_CTA) // SMEM_ALLOC_UNIT) * SMEM_ALLOC_UNIT
    limits["shared memory"] = 0 if smem - SMEM_RESERVED_PER_CTA > SMEM_MAX_PER_CTA else SMEM_PER_SM // smem
    limiter = min(limits, key=lambda k: limits[k])
    return limits[limiter], limiter


def ceil_div(a, b):
    return -(-a // b)


@dataclass
class KernelModel:
    """What the SASS does not say about a kernel: its tile (by its MmaTileConfig alias, or built by
    `tile_of` for a templated one), the engine's MMA opcode, and how a bench shape becomes its grid
    and the column tiles each CTA sweeps."""
    pattern: str
    tiles: tuple              # MmaTileConfig aliases, the first one defined is the kernel's
    mma_op: str               # "HMMA" (tensor cores; HGMMA counts too) or "FFMA" (the f32 engine)
    schedule: object          # (N, D, header constants, kernel, Tile) -> (CTAs, column tiles per CTA), or
                              # None when the host would not launch this kernel at that shape
    useful_flops: object      # (N, D) -> the DESIGN.md lower bound's FLOPs
    role: str                 # "forward" / "backward": pairs them in the per-shape table
    rows_constant: str = ""   # the header constant the tile's BM must equal (checked, noted if not)
    tile_of: object = None    # (kernel, header constants) -> Tile: a template's tile (used over `tiles`)
    dynamic_smem: object = None  # (kernel, header constants) -> bytes of dynamic shared memory per CTA
    # (tile, d) -> trips per column tile of a second MMA loop in the column-tile loop (after the
    # k-loop: the backward's H x U product); None: such loops get 1 trip.
    product_trips: object = None
    mode_arms: bool = False   # the epilogue branches per tile between two exponential paths (see mode_arms)
    # (instrs, [k-loop candidates]) -> the k-loop whose parent is the measured column-tile loop;
    # None: the first in address order (the main sweep).
    pick_sweep: object = None
    example: str = ""         # a kernel name the pattern matches (tests)


def forward_splits(row_blocks, tiles, sms, blocks_per_sm, max_splits):
    """src/ops/contrastive/gpu.rs' forward_splits: the CTAs (grid.y) sharing one row block's column
    sweep. cost(s) = waves x tiles per CTA; the fewest splits whose work fills >= 90 % of cost(s)
    x wave slots, else the cheapest (ties: fewer splits)."""
    wave = max(sms * blocks_per_sm, 1)
    row_blocks, tiles = max(row_blocks, 1), max(tiles, 1)
    most = min(tiles, max_splits)

    def cost(s):
        return ceil_div(row_blocks * s, wave) * ceil_div(tiles, s)
    first = next((s for s in range(1, most + 1) if 10 * row_blocks * tiles >= 9 * cost(s) * wave), None)
    return first if first is not None else min(range(1, most + 1), key=lambda s: (cost(s), s))


def forward_schedule(n, d, h, kernel, tile):
    """src/ops/contrastive/gpu.rs, the forward's launch: grid (ceil(n / FORWARD_ROWS), splits), each CTA
    sweeping ceil(tiles / splits) of the ceil(n / BN) column tiles. splits = 1 unless the header defines
    FORWARD_MAX_SPLITS (the column sweep split across CTAs, sized by forward_splits for blocks per SM
    FORWARD_BLOCKS_PER_SM on the aligned fixed-offset f16 / bf16 kernels, _SLOW on the others)."""
    row_blocks, tiles = ceil_div(n, h["CONTRASTIVE_FORWARD_ROWS"]), ceil_div(n, tile.BN)
    splits = 1
    if "CONTRASTIVE_FORWARD_MAX_SPLITS" in h:
        fast = re.fullmatch(r"contrastive_forward_(f16|bf16)", kernel) is not None
        blocks = h["CONTRASTIVE_FORWARD_BLOCKS_PER_SM" if fast else "CONTRASTIVE_FORWARD_BLOCKS_PER_SM_SLOW"]
        splits = forward_splits(row_blocks, tiles, SMS, blocks, h["CONTRASTIVE_FORWARD_MAX_SPLITS"])
    return row_blocks * splits, ceil_div(tiles, splits)


def forward_sym_groups(n, h, centers=0):
    """src/ops/contrastive/gpu.rs' forward_sym_groups: (S, Q), Q groups of S row blocks of the
    symmetric forward: the fewest row blocks per group whose partial slots (Q (+ 1 with prototypes)
    x n x 16 bytes) fit SYM_PARTIAL_BYTES, but at least 23 groups where there are that many row blocks."""
    row_blocks = max(ceil_div(n, h["CONTRASTIVE_FORWARD_ROWS"]), 1)
    by_memory = max(h["CONTRASTIVE_FORWARD_SYM_PARTIAL_BYTES"] // (16 * max(n, 1)) - (1 if centers else 0), 0)
    groups = min(max(by_memory, 23), row_blocks)
    per_group = ceil_div(row_blocks, max(groups, 1))
    return per_group, ceil_div(row_blocks, per_group)


def forward_sym_schedule(n, d, h, kernel, tile):
    """The symmetric forward's launch (self geometry, fixed offset): one CTA per pair of groups
    (P <= Q), Q (Q + 1) / 2 CTAs, each computing the S x S tiles of its pair (S (S + 1) / 2 on the
    diagonal pairs: counted as S x S, so slightly pessimistic), one tile at a time."""
    s, q = forward_sym_groups(n, h)
    return q * (q + 1) // 2, s * s


def most_shuffles(instrs, candidates):
    """The k-loop whose column-tile loop's own body holds the most SHFL: the symmetric forward's
    tiles above the diagonal (their column sums' butterflies), not its diagonal or prototype tiles."""
    def shuffles(lp):
        parent = lp.parent or lp
        return sum(i.base == "SHFL" for i in body(instrs, parent))
    return max(candidates, key=shuffles)


def backward_groups(kernel):
    """G of a `contrastive_backward_*_g{G}[_chunked]` kernel (its d-groups of 4 warps)."""
    m = re.search(r"_g(\d+)(_chunked)?$", kernel)
    return int(m.group(1)) if m else 1


def backward_chunked(kernel):
    """Whether a backward kernel is the `_chunked` form (d over one chunk, S through the stages)."""
    return kernel.endswith("_chunked")


def backward_tile(kernel, h):
    """BackwardTraits<T, G>::Cfg of kernels/contrastive.cu: MmaTileConfig<BACKWARD_ROWS, BN, BK,
    LOGIT_WARPS_M, LOGIT_WARPS_N, E> with BK = 16 for f32, 64 for G = 4, else 32 (whole 16-byte
    chunks per thread and stage); for f16 / bf16 at G = 1 (SQUARE) BN = WIDE_COLS and 2 x 2 warps,
    else BN = 64 and 4 x G warps (f16 / bf16 at G = 4: WARPS_HALF_G4, the logit tile on 4 x 2)."""
    g, e = backward_groups(kernel), 4 if "_f32" in kernel else 2
    bk = 16 if e == 4 else (64 if g == 4 else 32)
    square = e == 2 and g == 1
    bn = h["CONTRASTIVE_BACKWARD_WIDE_COLS"] if square else 64
    warps = h["CONTRASTIVE_BACKWARD_WARPS_HALF_G4"] if e == 2 and g == 4 else 4 * g
    return Tile(f"BackwardTraits<{'float' if e == 4 else 'half'}, {g}>::Cfg", h["CONTRASTIVE_BACKWARD_ROWS"], bn, bk,
                2 if square else 4, 2 if square else warps // 4, e)


def backward_dynamic_smem(kernel, h):
    """sizeof(BackwardShared<T, G>), the header's CK_CONTRASTIVE_BACKWARD_SMEM_{HALF,F32}_G{G}[_CHUNKED]."""
    chunked = "_CHUNKED" if backward_chunked(kernel) else ""
    return h[f"CONTRASTIVE_BACKWARD_SMEM_{'F32' if '_f32' in kernel else 'HALF'}_G{backward_groups(kernel)}{chunked}"]


def backward_launch(dtype, d, own_rows, other_rows, h):
    """src/ops/contrastive/gpu.rs' backward_shape + backward_splits (one pass: `own` rows against
    `other` rows; the same whatever the rows' alignment): G = the smallest of 1, 2, 4 with G WARP_D
    >= d, at most MAX_GROUPS (4 for f16 / bf16, 2 for f32), or CHUNKED_GROUPS_* (4 / 2) where none
    covers d (chunked: f16 / bf16 `_g4_chunked`, the resident G = 1, 4 kernels take one chunk);
    chunk = G WARP_D columns of d per block (grid.y = ceil(d / chunk));
    splits = floor(SPLIT_TARGET_CTAS / G / blocks) clamped to [1, min(MAX_SPLITS, column tiles)]
    (tiles of WIDE_COLS columns for f16 / bf16 at G = 1, else of BACKWARD_ROWS),
    1 for G = 4. Returns (G, chunk, splits, chunked)."""
    f32 = dtype == "f32"
    warp_d = h["CONTRASTIVE_BACKWARD_WARP_D_F32" if f32 else "CONTRASTIVE_BACKWARD_WARP_D_HALF"]
    most = h["CONTRASTIVE_BACKWARD_MAX_GROUPS_F32" if f32 else "CONTRASTIVE_BACKWARD_MAX_GROUPS_HALF"]
    g = next((g for g in (1, 2, 4) if g <= most and g * warp_d >= d), None)
    chunked = g is None
    if chunked:
        g = h["CONTRASTIVE_BACKWARD_CHUNKED_GROUPS_F32" if f32 else "CONTRASTIVE_BACKWARD_CHUNKED_GROUPS_HALF"]
    chunk = g * warp_d
    blocks = ceil_div(own_rows, h["CONTRASTIVE_BACKWARD_ROWS"]) * max(ceil_div(d, chunk), 1)
    cols = h["CONTRASTIVE_BACKWARD_WIDE_COLS"] if not f32 and g == 1 else h["CONTRASTIVE_BACKWARD_ROWS"]
    tiles = ceil_div(other_rows, cols)  # the kernel's column tiles (backward_tile's BN)
    if g == 4 or blocks == 0 or tiles == 0:
        return g, chunk, 1, chunked
    splits = max(min(h["CONTRASTIVE_BACKWARD_SPLIT_TARGET_CTAS"] // g // blocks, h["CONTRASTIVE_BACKWARD_MAX_SPLITS"],
                     tiles), 1)
    return g, chunk, splits, chunked


def backward_kernel_dtype(kernel):
    """The dtype of a backward kernel name (one kernel per dtype and G: f16 / bf16 multiply S from
    the packed rows, always aligned; f32 loads element-wise)."""
    m = re.match(r"contrastive_backward_(f16|bf16|f32)_g", kernel)
    return m.group(1) if m else None


def backward_schedule(n, d, h, kernel, tile):
    """src/ops/contrastive/gpu.rs' backward_raw, the self geometry's one pass (own = other = the n
    rows, no prototypes): grid (ceil(n / 64), ceil(d / chunk), splits), each CTA sweeping its
    split's ceil(tiles / splits) of the ceil(n / BN) column tiles. None when the host picks another
    G or chunking at this d (backward_launch)."""
    dtype = backward_kernel_dtype(kernel)
    g, chunk, splits, chunked = backward_launch(dtype, d, n, n, h)
    # f32's G = 2 kernel takes chunks itself (no `_chunked` name)
    if g != backward_groups(kernel) or (chunked and dtype != "f32") != backward_chunked(kernel):
        return None
    tiles = ceil_div(n, tile.BN)
    return ceil_div(n, tile.BM) * ceil_div(d, chunk) * splits, ceil_div(tiles, splits)


def backward_product_trips(tile, d):
    """The H x U loop (bwd::h_times_tile): one k16 step of H's BN columns per trip, each of the
    warp's WARP_D / 8 MMAs; BN / 16 trips per column tile whatever d (a block's chunk is fixed)."""
    return tile.BN // 16


def forward_flops(n, d):
    return 2 * n * n * d          # S = U U^T


def backward_flops(n, d):
    return 2 * 2 * n * n * d      # S again, then (G + G^T) U


# Kernel name -> model. Edit here when a kernel changes its tile (its MmaTileConfig alias), its grid
# or the column tiles a CTA sweeps (a triangular or persistent schedule).
KERNEL_MODELS = [
    KernelModel(r"^contrastive_forward_(f16|bf16)(_online)?$", ("ForwardTile", "Tile128"), "HMMA",
                forward_schedule, forward_flops, "forward", "CONTRASTIVE_FORWARD_ROWS",
                example="contrastive_forward_bf16"),
    # The self geometry's symmetric forward: tiles on and above the diagonal, each serving its rows
    # and its columns (useful FLOPs stay DESIGN.md's 2 N^2 D: the work of the whole matrix).
    KernelModel(r"^contrastive_forward_sym_(f16|bf16)$", ("ForwardTile", "Tile128"), "HMMA",
                forward_sym_schedule, forward_flops, "forward", "CONTRASTIVE_FORWARD_ROWS",
                pick_sweep=most_shuffles, example="contrastive_forward_sym_bf16"),
    # The rebuilt backward: a block = 4 row warps x G d-groups (f16 / bf16 G = 4: 8 warps), a 64 x BN
    # logit tile per column tile for the whole chunk of d, H through (dynamic) shared memory, then H x U
    # (BackwardTraits).
    KernelModel(r"^contrastive_backward_(f16|bf16)_g(1|2|4)(_chunked)?$", (), "HMMA",
                backward_schedule, backward_flops, "backward", "CONTRASTIVE_BACKWARD_ROWS",
                tile_of=backward_tile, dynamic_smem=backward_dynamic_smem, product_trips=backward_product_trips,
                mode_arms=True, example="contrastive_backward_bf16_g1"),
]

# Kernels with the resource columns only, on purpose (pattern, why). scripts/tests checks that every
# contrastive kernel matches a model or this list, so a rename cannot silently drop a kernel's rows.
RESOURCE_ONLY = [
    (r"^contrastive_(forward_(sym_)?f32(_online)?|backward_f32_g\d)$",
     "f32 on the FFMA engine: its k-loop (FFMA from shared memory) is not the MMA-count rule's"),
    (r"^contrastive_(forward|backward)_merge$", "memory-bound merge of the column splits' partials (no MMA)"),
    (r"^contrastive_forward_columns$", "per-column data prepared once per forward, O(N)"),
    (r"^contrastive_backward_columns$", "per-column data prepared once per backward pass, O(N)"),
    (r"^contrastive_(pack|pad|norm_penalty_backward)_\w+$", "one warp per row, O(N D) memory traffic"),
    (r"^contrastive_(backward_prepare|reduce|check_inputs)$", "single-block / grid-stride checks and reductions"),
]


def resource_only_reason(kernel):
    return next((why for pat, why in RESOURCE_ONLY if re.match(pat, kernel)), None)


def model_tile(model, tiles, kernel=None, header=None):
    """The model's tile: `tile_of` (kernel, header) when it has one, else the first of its tile
    aliases that the kernel sources define; None when neither gives one."""
    if model.tile_of is not None:
        try:
            return model.tile_of(kernel or model.example, header or {})
        except KeyError:
            return None  # a header constant it reads is missing
    return next((tiles[name] for name in model.tiles if name in tiles), None)


def model_for(kernel):
    return next((m for m in KERNEL_MODELS if re.match(m.pattern, kernel)), None)


@dataclass
class KernelCost:
    kernel: str
    module: str
    ptxas: PtxasInfo
    threads: int
    ctas_per_sm: int
    occupancy_limiter: str
    calls: int                        # CALL instructions anywhere (slow paths: IEEE division, ...)
    tile: Tile = None
    mma_op: str = ""
    loops: int = 0
    k_loop: Counts = None             # one iteration of the k-loop
    k_per_iteration: int = 0          # reduction-dim elements one k-loop iteration covers
    epilogue: Counts = None           # the column-tile loop's body minus its inner loops
    other_inner_loops: Counts = None  # inner loops of the column loop besides the k-loop (1 trip assumed)
    product_loop: Counts = None       # the second MMA loop of the column loop (H x U), model.product_trips trips
    product_trips: object = None      # (tile, d) -> the product loop's trips per column tile
    k_tail: Counts = None             # whole BK steps of MMAs outside the k-loop (an unrolled k-loop's remainder)
    k_tail_steps: int = 0
    k_peel_steps: int = 0             # BK steps of the k-loop peeled into the column loop's body (run once per tile)
    k_peel_pipeline: int = 0          # their MMA and ldmatrix instructions, k-loop work: not the epilogue's
    dynamic_smem: int = 0             # bytes per CTA, from the params header (not in ptxas' report)
    arms: dict = None                 # the epilogue's two exponential paths: {"hot"/"cold": (insts, MUFU)}
    logits_per_thread: int = 0
    k_unrolled: bool = False          # no k-loop: the MMAs sit in the column-tile loop's own body
    notes: list = field(default_factory=list)

    @property
    def epilogue_instructions_per_logit(self):
        if not self.epilogue:
            return None
        pipeline = self.epilogue.mma_pipeline if self.k_unrolled else self.k_peel_pipeline
        return (self.epilogue.instructions - pipeline) / self.logits_per_thread

    @property
    def epilogue_instructions_per_logit_all_paths(self):
        if not self.epilogue:
            return None
        pipeline = self.epilogue.mma_pipeline if self.k_unrolled else self.k_peel_pipeline
        return (self.epilogue.instructions_all_paths - pipeline) / self.logits_per_thread

    @property
    def mufu_per_logit(self):
        return self.epilogue.mufu / self.logits_per_thread if self.epilogue else None

    @property
    def smem_wavefronts_per_mma(self):
        if not self.k_loop or not self.k_loop.mma:
            return None
        return self.k_loop.smem_read_wavefronts / self.k_loop.mma

    def k_trips(self, d):
        """k-loop trips per column tile at reduction dim d (after a peeled first step, if any)."""
        if not self.k_per_iteration:
            return 0
        peeled = self.k_peel_steps * self.tile.BK if self.k_peel_steps and self.tile else 0
        return -(-max(d - peeled, 0) // self.k_per_iteration)

    def k_tail_trips(self, d):
        """Passes through the k-loop's remainder code (k_tail) at reduction dim d: the BK steps left
        over by a k-loop unrolled over several steps, k_tail_steps per pass."""
        if not self.k_tail or not self.k_tail_steps or not self.tile:
            return 0
        steps, per_iteration = -(-d // self.tile.BK), max(self.k_per_iteration // self.tile.BK, 1)
        return (steps % per_iteration) // self.k_tail_steps

    def per_tile(self, d):
        """One warp's counts for one column tile at reduction dim d."""
        c = Counts()
        c.add(self.epilogue)
        c.add(self.other_inner_loops)
        c.add(self.k_loop, self.k_trips(d))
        if self.product_loop:
            c.add(self.product_loop, self.product_trips(self.tile, d) if self.product_trips else 1)
        if self.k_tail:
            c.add(self.k_tail, self.k_tail_trips(d))
        return c


def analyse_kernel(name, module, instrs, ptxas, max_threads, tiles, header=None):
    """Occupancy from the resources; then, for a kernel with a model, the loop structure: the k-loop
    is the first innermost loop holding MMA instructions, the column-tile loop its parent, the epilogue
    that loop's own body (its inner loops excluded), per logit = / (BM BN / threads)."""
    model = model_for(name)
    tile = model_tile(model, tiles, name, header) if model else None
    threads = max_threads or (tile.threads if tile else 0)
    dynamic, missing = 0, None
    if model is not None and model.dynamic_smem is not None:
        try:
            dynamic = model.dynamic_smem(name, header or {})
        except KeyError as e:
            missing = e.args[0]
    # Occupancy counts the dynamic shared memory the host launches with (not in ptxas' report).
    ctas, limiter = occupancy(ptxas.regs, threads, ptxas.smem_bytes + dynamic) if threads else (0, "unknown block size")
    calls = sum(ins.base == "CALL" for ins in instrs)
    cost = KernelCost(name, module, ptxas, threads, ctas, limiter, calls)
    cost.dynamic_smem = dynamic
    if missing:
        cost.notes.append(f"dynamic shared memory: header constant CK_{missing} missing (counted as 0)")
    roots = find_loops(instrs)
    cost.loops = sum(1 for _ in all_loops(roots))
    if model is None:
        return cost
    if tile is None:
        what = "its tile_of found no header constant" if model.tile_of else \
            f"none of the tiles {', '.join(model.tiles)} is defined (MmaTileConfig aliases)"
        cost.notes.append(what)
        return cost
    if max_threads and max_threads != tile.threads:
        cost.notes.append(f"launch bounds {max_threads} threads != tile {tile.name}'s {tile.threads}: "
                          "update KERNEL_MODELS")
    rows = (header or {}).get(model.rows_constant)
    if rows is not None and rows != tile.BM:
        cost.notes.append(f"CK_{model.rows_constant} = {rows} != tile {tile.name}'s BM {tile.BM}: update KERNEL_MODELS")
    cost.tile, cost.mma_op = tile, model.mma_op
    slow = slow_path_addresses(instrs)
    mma_in = {id(lp): count(body(instrs, lp), model.mma_op).mma for lp in all_loops(roots)}
    per_step = tile.mma_per_warp_per_k_step if model.mma_op == "HMMA" else (
        (tile.BM // tile.warps_m) * (tile.BN // tile.warps_n) * tile.BK // WARP)  # FFMA: one per product

    def mma_below(lp):
        return any(mma_in[id(c)] or mma_below(c) for c in lp.children)

    # The k-loop: the first (in address order: the main sweep) innermost loop holding MMAs, preferring
    # one whose count is a whole number of the tile's BK steps (an f32 load loop has FFMAs too).
    innermost = [lp for lp in all_loops(roots) if mma_in[id(lp)] and not mma_below(lp)]
    whole = [lp for lp in innermost if mma_in[id(lp)] % per_step == 0]
    candidates = whole or innermost
    k_loop = (model.pick_sweep(instrs, candidates) if model.pick_sweep and candidates else
              (candidates or [None])[0])
    if k_loop is None:
        cost.notes.append("no loop with MMA instructions")
        return cost
    column_loop = k_loop.parent
    if column_loop is None:
        column_loop, cost.k_unrolled = k_loop, True
        cost.notes.append("the k-loop has no enclosing loop: it is taken as the column-tile loop (k unrolled for "
                          "the compiled D; per logit leaves out the MMA pipeline's instructions)")
    sweeps = {id(lp.parent or lp): lp.parent or lp for lp in innermost}
    if len(sweeps) > 1:
        which = "the one its model picks" if model.pick_sweep else "the first"
        cost.notes.append(f"{len(sweeps)} column-tile loops (e.g. a prototype sweep): {which} is measured")
    cost.k_loop = count(body(instrs, k_loop), model.mma_op, slow) if column_loop is not k_loop else Counts()
    if cost.k_loop.mma and cost.k_loop.mma % per_step == 0:
        cost.k_per_iteration = tile.BK * cost.k_loop.mma // per_step
    elif cost.k_loop.mma:
        cost.k_per_iteration = tile.BK
        cost.notes.append(f"k-loop holds {cost.k_loop.mma} MMAs, not a multiple of {per_step} per BK: one BK assumed")
    cost.logits_per_thread = tile.BM * tile.BN // tile.threads
    epilogue = body(instrs, column_loop)
    if model.mode_arms:
        arms = mode_arms(epilogue)
        if arms is None:
            cost.notes.append("no two exponential paths (a per-tile branch between MUFU arms) found: both counted")
        else:
            hot, cold = sorted(arms, key=lambda arm: (sum(i.base in MUFU_OPS for i in arm), len(arm)))
            cost.arms = {k: (sum(i.opcode != "NOP" for i in arm) / cost.logits_per_thread,
                             sum(i.base in MUFU_OPS for i in arm) / cost.logits_per_thread)
                         for k, arm in (("hot", hot), ("cold", cold))}
            slow = slow | {i.addr for i in cold}  # the cold arm: all paths only
    cost.epilogue = count(epilogue, model.mma_op, slow)
    if column_loop is not k_loop and cost.epilogue.mma and cost.k_per_iteration > tile.BK \
            and cost.epilogue.mma % per_step == 0:
        # An unrolled k-loop's remainder (odd BK steps) sits in the column loop's body: its MMAs run
        # only when the steps do not divide evenly (k_tail_trips), not once per tile.
        cost.k_tail = Counts(mma=cost.epilogue.mma, mma_flops=cost.epilogue.mma_flops)
        cost.k_tail_steps = cost.epilogue.mma // per_step
        cost.epilogue.mma, cost.epilogue.mma_flops = 0, 0
    elif column_loop is not k_loop and cost.epilogue.mma and cost.epilogue.mma % per_step == 0:
        # A peeled first k-step (tile.cuh's mma_resident_tile: its MMAs take a zero accumulator, so
        # the tile's accumulators need no zeroing): it runs once per tile in place of a k-loop trip
        # (k_trips), and its MMAs and ldmatrix loads are k-loop work, not the epilogue's.
        cost.k_peel_steps = cost.epilogue.mma // per_step
        cost.k_peel_pipeline = sum(1 for ins in epilogue if ins.addr not in slow and
                                   (is_mma(ins, model.mma_op) or ins.base == "LDSM"))
        cost.notes.append(f"first k-step peeled into the column loop: its {cost.k_peel_pipeline} MMA / ldmatrix "
                          "instructions counted as k-loop work (one trip fewer)")
    cost.other_inner_loops = Counts()
    for child in column_loop.children:
        if child is k_loop:
            continue
        counts = count(body(instrs, child, exclude_children=False), model.mma_op, slow)
        if counts.mma and model.product_trips and cost.product_loop is None:
            cost.product_loop, cost.product_trips = counts, model.product_trips
            continue
        cost.other_inner_loops.add(counts)
        cost.notes.append(f"inner loop at 0x{child.start:x} besides the k-loop: 1 trip assumed")
    return cost


def mode_arms(instrs):
    """The two arms of the largest if / else in `instrs` (a column-tile loop's own body) whose both
    arms hold MUFU ops: a conditional forward branch to t, the then-arm ending in an unconditional
    BRA to t2 > t, the else-arm [t, t2). The backward's per-tile choice between one and two
    exponentials per logit (bwd::sweep_mode). Returns ([then instructions], [else instructions]) or None."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    best = None
    for i, ins in enumerate(instrs):
        t = branch_target(ins)
        if t is None or not ins.pred or t <= ins.addr or t not in index or index[t] == 0:
            continue
        jump = instrs[index[t] - 1]
        t2 = branch_target(jump)
        if jump.base != "BRA" or jump.pred or t2 is None or t2 <= t:
            continue
        then = instrs[i + 1:index[t]]
        other = [x for x in instrs[index[t]:] if x.addr < t2]
        if any(x.base in MUFU_OPS for x in then) and any(x.base in MUFU_OPS for x in other):
            if best is None or len(then) + len(other) > len(best[0]) + len(best[1]):
                best = (then, other)
    return best


# ---------------------------------------------------------------------------------------------
# Per bench shape


@dataclass
class ShapeEstimate:
    kernel: str
    n: int
    d: int
    ctas: int
    waves: int
    wave_efficiency: float
    mma_per_tile: int            # per CTA (all warps), one column tile
    useful_flops: float
    mma_flops: float             # executed by the MMA instructions (>= useful: recomputation, padding)
    t_tensor: float
    t_issue: float
    t_mufu: float
    t_smem: float
    t_smem_min: float = 0.0      # the shared-memory bound with LDS / STS at one wavefront each
    # Whole-launch totals of the column-tile loops (every CTA, tile and warp; prologues and final
    # stores left out), the counts a profiler reports (scripts/ncu_compare.py): warp instructions,
    # MMA and MUFU instructions, shared-memory wavefronts by the width rule and at its floor.
    warp_instructions: float = 0.0
    mma_instructions: float = 0.0
    mufu_instructions: float = 0.0
    smem_wavefronts: float = 0.0
    smem_wavefronts_min: float = 0.0

    @property
    def time(self):
        return max(self.t_tensor, self.t_issue, self.t_mufu, self.t_smem)

    @property
    def bound(self):
        times = {"tensor": self.t_tensor, "issue": self.t_issue, "MUFU": self.t_mufu, "smem": self.t_smem}
        return max(times, key=times.get)

    @property
    def percent_of_peak(self):
        return 100.0 * self.useful_flops / self.time / PEAK_TENSOR_FLOPS if self.time else 0.0

    @property
    def time_min(self):
        """The estimate with the shared-memory bound at its floor (t_smem_min): the other end of the
        model's blind spot on broadcast loads."""
        return max(self.t_tensor, self.t_issue, self.t_mufu, self.t_smem_min)

    @property
    def percent_of_peak_max(self):
        return 100.0 * self.useful_flops / self.time_min / PEAK_TENSOR_FLOPS if self.time_min else 0.0


def wave_quantization(ctas, ctas_per_sm):
    """(waves, efficiency): waves = ceil(CTAs / (SMs x CTAs per SM)), efficiency = CTAs / (waves x SMs x
    CTAs per SM), the share of the busiest SM's CTA slots that hold work."""
    slots = SMS * ctas_per_sm
    waves = ceil_div(ctas, slots)
    return waves, ctas / (waves * slots)


def estimate_shape(cost, n, d, header):
    """Waves and time bounds of one kernel at (n, d), self geometry: each CTA sweeps ceil(n / BN)
    column tiles; the busiest SM runs waves x CTAs-per-SM CTAs."""
    model = model_for(cost.kernel)
    if model is None or cost.epilogue is None or cost.ctas_per_sm == 0:
        return None
    launch = model.schedule(n, d, header, cost.kernel, cost.tile)
    if launch is None:  # the host launches another variant at this shape
        return None
    ctas, tiles = launch
    waves, efficiency = wave_quantization(ctas, cost.ctas_per_sm)
    per_tile = cost.per_tile(d)
    warps = cost.tile.warps
    per_cta_scale = tiles * warps
    ctas_busiest_sm = waves * cost.ctas_per_sm
    t_tensor = ctas_busiest_sm * per_cta_scale * per_tile.mma_flops / (PEAK_TENSOR_FLOPS / SMS)
    t_issue = ctas_busiest_sm * per_cta_scale * per_tile.instructions / (SCHEDULERS_PER_SM * CLOCK_HZ)
    t_mufu = ctas_busiest_sm * per_cta_scale * per_tile.mufu * WARP / (MUFU_PER_CLK_PER_SM * CLOCK_HZ)
    t_smem = ctas_busiest_sm * per_cta_scale * per_tile.smem_wavefronts / (SMEM_WAVEFRONTS_PER_CLK * CLOCK_HZ)
    t_smem_min = ctas_busiest_sm * per_cta_scale * per_tile.smem_wavefronts_min / (SMEM_WAVEFRONTS_PER_CLK * CLOCK_HZ)
    launch_scale = ctas * per_cta_scale
    return ShapeEstimate(cost.kernel, n, d, ctas, waves, efficiency, per_tile.mma * warps, model.useful_flops(n, d),
                         launch_scale * per_tile.mma_flops, t_tensor, t_issue, t_mufu, t_smem, t_smem_min,
                         warp_instructions=launch_scale * per_tile.instructions,
                         mma_instructions=launch_scale * per_tile.mma, mufu_instructions=launch_scale * per_tile.mufu,
                         smem_wavefronts=launch_scale * per_tile.smem_wavefronts,
                         smem_wavefronts_min=launch_scale * per_tile.smem_wavefronts_min)


def backward_for(forward, estimates, n, d):
    """The backward kernel the host launches with `forward` at (n, d): same dtype (`_online` and
    `_sym` dropped), the G variant of backward_launch, i.e. the one with an estimate there."""
    base = forward.replace("_forward_", "_backward_").replace("_online", "").replace("_sym", "")
    variant = re.escape(base) + r"(_g\d+(_chunked)?)?"
    return next((k for (k, kn, kd) in estimates if (kn, kd) == (n, d) and re.fullmatch(variant, k)), None)


def pair_estimates(costs, estimates):
    """forward + backward of one dtype / alignment at each shape: times add (pack, prepare, reduce
    and the split merge kernels left out)."""
    out = []
    for fwd in costs:
        if model_for(fwd.kernel) is None or model_for(fwd.kernel).role != "forward":
            continue
        for (n, d) in BENCH_SHAPES:
            bwd = backward_for(fwd.kernel, estimates, n, d)
            ef, eb = estimates.get((fwd.kernel, n, d)), estimates.get((bwd, n, d))
            if ef and eb:
                t, t_min = ef.time + eb.time, ef.time_min + eb.time_min
                useful = ef.useful_flops + eb.useful_flops
                out.append({"kernel": f"{fwd.kernel} + {bwd}", "n": n, "d": d, "time_us": t * 1e6,
                            "useful_flops": useful, "percent_of_peak": 100.0 * useful / t / PEAK_TENSOR_FLOPS,
                            "time_min_us": t_min * 1e6, "percent_of_peak_max": 100.0 * useful / t_min / PEAK_TENSOR_FLOPS})
    return out


# ---------------------------------------------------------------------------------------------
# Output


def fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


# Issue 13's targets, judged on this model: bf16 aligned kernels at N = 8192, D = 128 and 512.
# The forwards: the row sweep (pairwise geometry, small tau) and the symmetric kernel the host
# launches in the self geometry at the target shapes; the backward last.
TARGET_KERNELS = ("contrastive_forward_bf16", "contrastive_forward_sym_bf16", "contrastive_backward_bf16")
TARGET_SHAPES = [(8192, 128), (8192, 512)]
TARGET_MAX_INSTRUCTIONS_PER_LOGIT = 12
TARGET_MAX_MUFU_PER_LOGIT = 1
TARGET_MIN_CTAS_PER_SM = 2
TARGET_MIN_WAVE_EFFICIENCY = 0.90
TARGET_MIN_PERCENT_OF_PEAK = 35.0  # forward + backward


def target_checks(costs, estimates, pairs):
    """[(what, target, estimated value, met)] for TARGET_KERNELS present in `costs`: a name itself, or
    its `_g{G}` variants that the host launches at a target shape (those with an estimate there)."""
    def targeted(kernel):
        for name in TARGET_KERNELS:
            if kernel == name:
                return True
            if re.fullmatch(re.escape(name) + r"_g\d+", kernel):
                return any((kernel, n, d) in estimates for (n, d) in TARGET_SHAPES)
        return False
    rows = []
    for c in costs:
        if not targeted(c.kernel) or c.epilogue is None:
            continue
        name = c.kernel
        rows.append((f"{name}: epilogue instructions / logit", f"<= {TARGET_MAX_INSTRUCTIONS_PER_LOGIT}",
                     f"{c.epilogue_instructions_per_logit:.1f}",
                     c.epilogue_instructions_per_logit <= TARGET_MAX_INSTRUCTIONS_PER_LOGIT))
        for (n, d) in TARGET_SHAPES[:1]:
            e = estimates.get((name, n, d))
            if e and e.mma_flops < e.useful_flops:  # a symmetric kernel: a computed logit serves two
                share = e.mma_flops / e.useful_flops
                rows.append((f"{name}: epilogue instructions / logit of the n x n matrix (x {share:.2f} computed), "
                             f"N = {n}", f"<= {TARGET_MAX_INSTRUCTIONS_PER_LOGIT}",
                             f"{c.epilogue_instructions_per_logit * share:.1f}",
                             c.epilogue_instructions_per_logit * share <= TARGET_MAX_INSTRUCTIONS_PER_LOGIT))
                rows.append((f"{name}: MUFU / logit of the n x n matrix, N = {n}", f"<= {TARGET_MAX_MUFU_PER_LOGIT}",
                             f"{c.mufu_per_logit * share:.2f}", c.mufu_per_logit * share <= TARGET_MAX_MUFU_PER_LOGIT))
        if c.arms:  # the per-logit work alone, as the kernel's author counts it (per-tile overhead left out)
            rows.append((f"{name}: one-exponential path's own instructions / logit",
                         f"<= {TARGET_MAX_INSTRUCTIONS_PER_LOGIT}", f"{c.arms['hot'][0]:.1f}",
                         c.arms["hot"][0] <= TARGET_MAX_INSTRUCTIONS_PER_LOGIT))
        rows.append((f"{name}: MUFU / logit", f"<= {TARGET_MAX_MUFU_PER_LOGIT}", f"{c.mufu_per_logit:.2f}",
                     c.mufu_per_logit <= TARGET_MAX_MUFU_PER_LOGIT))
        rows.append((f"{name}: CTAs / SM", f">= {TARGET_MIN_CTAS_PER_SM}", str(c.ctas_per_sm),
                     c.ctas_per_sm >= TARGET_MIN_CTAS_PER_SM))
        for (n, d) in TARGET_SHAPES:
            e = estimates.get((name, n, d))
            if e:
                rows.append((f"{name}: wave efficiency, N = {n}, D = {d}",
                             f">= {100 * TARGET_MIN_WAVE_EFFICIENCY:.0f} %",
                             f"{100 * e.wave_efficiency:.1f} %", e.wave_efficiency >= TARGET_MIN_WAVE_EFFICIENCY))
    pair_name = "(" + "|".join(re.escape(k) for k in TARGET_KERNELS[:-1]) + ") \\+ " + re.escape(TARGET_KERNELS[-1]) + \
        r"(_g\d+)?"
    for p in pairs:
        if re.fullmatch(pair_name, p["kernel"]) and (p["n"], p["d"]) in TARGET_SHAPES:
            rows.append((f"{p['kernel']}: forward + backward % of 989 TFLOP/s, N = {p['n']}, D = {p['d']}",
                         f">= {TARGET_MIN_PERCENT_OF_PEAK:.0f} %", f"{p['percent_of_peak']:.1f} %",
                         p["percent_of_peak"] >= TARGET_MIN_PERCENT_OF_PEAK))
    return rows


def render_markdown(costs, estimates, pairs, sources):
    lines = [
        "# Static SASS cost model (estimated, no GPU)",
        "",
        f"Generated by `scripts/sass-cost.sh` from {', '.join(sources)} for {ARCH}. Every figure is an",
        "*estimate* from ptxas' report and the SASS (README: \"Static cost model\" for the model and its",
        f"blind spots). Constants: {SMS} SMs, {CLOCK_HZ / 1e9:.3f} GHz, {PEAK_TENSOR_FLOPS / 1e12:.0f} TFLOP/s dense,"
        f" {SCHEDULERS_PER_SM} x 1 instruction/clock/SM, {MUFU_PER_CLK_PER_SM} MUFU/clock/SM,"
        f" {SMEM_WAVEFRONTS_PER_CLK} shared-memory wavefront (128 B)/clock/SM.",
        "",
        "## Per kernel",
        "",
        "Epilogue = the column-tile loop's body without its inner loops, one warp's instructions counted once each"
        " (predicated and branched-over ones included), on the hot path: basic blocks holding a CALL (the IEEE"
        " division's slow path) left out, which `(all paths)` keeps. Per logit = / (BM x BN / threads). MMA / k-iter:"
        " one warp's MMA instructions per k-loop iteration; smem wf / MMA: shared-memory read wavefronts (LDSM / LDS,"
        " conflict-free) per MMA in the k-loop. CALLs: call instructions anywhere in the kernel."
        " smem B: static (ptxas) + dynamic (the params header's launch constant); occupancy counts both. Where the epilogue branches per tile"
        " between two exponential paths (the backward), insts / logit and MUFU / logit take the path with fewer MUFU"
        " (one ex2 per logit, tau >= ~0.029) and `(all paths)` both; `arm` = that path's own branch alone per logit"
        " (insts / MUFU), the other path's in brackets.",
        "",
        "| kernel | regs | spill st/ld B | smem B | threads | CTAs/SM (limit) | tile BMxBNxBK | MMA / k-iter"
        " | k-loop insts | epilogue insts | logits / thread | insts / logit | (all paths) | MUFU / logit"
        " | arm insts / MUFU per logit | smem wf / MMA"
        " | CALLs | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in costs:
        t = c.tile
        smem = f"{c.ptxas.smem_bytes} + {c.dynamic_smem}" if c.dynamic_smem else str(c.ptxas.smem_bytes)
        arms = "-" if not c.arms else (f"{c.arms['hot'][0]:.1f} / {c.arms['hot'][1]:.2f}"
                                       f" ({c.arms['cold'][0]:.1f} / {c.arms['cold'][1]:.2f})")
        notes = c.notes + ([f"resource columns only: {resource_only_reason(c.kernel)}"]
                           if model_for(c.kernel) is None and resource_only_reason(c.kernel) else [])
        lines.append(
            f"| {c.kernel} | {c.ptxas.regs} | {c.ptxas.spill_stores}/{c.ptxas.spill_loads} | {smem}"
            f" | {c.threads} | {c.ctas_per_sm} ({c.occupancy_limiter}) | {f'{t.BM}x{t.BN}x{t.BK}' if t else '-'}"
            f" | {c.k_loop.mma if c.k_loop else '-'} | {c.k_loop.instructions if c.k_loop else '-'}"
            f" | {c.epilogue.instructions if c.epilogue else '-'} | {c.logits_per_thread or '-'}"
            f" | {fmt(c.epilogue_instructions_per_logit)} | {fmt(c.epilogue_instructions_per_logit_all_paths)}"
            f" | {fmt(c.mufu_per_logit, '{:.2f}')} | {arms}"
            f" | {fmt(c.smem_wavefronts_per_mma, '{:.2f}')} | {c.calls} | {'; '.join(notes)} |")
    lines += [
        "",
        "## Per bench shape (self geometry; column tiles per CTA from the kernel's schedule)",
        "",
        "waves = ceil(CTAs / (132 x CTAs/SM)); wave eff. = CTAs / (waves x 132 x CTAs/SM). Times are lower"
        " bounds of the busiest SM: tensor = executed MMA FLOPs / (peak / 132), issue = warp instructions /"
        " (4 x clock), MUFU = MUFU lanes / (16 x clock), smem = wavefronts / clock; estimate = the largest."
        " Useful FLOPs (DESIGN.md section 6 lower bounds): forward 2 N^2 D, backward 2 x 2 N^2 D.",
        "",
        "`smem min us` and `% at smem min`: the other end of the model's blind spot on broadcast loads, every LDS /"
        " STS at one wavefront whatever its width (the epilogues' reads of staged per-column and per-row data are"
        " shared by the lanes of a quad or a row group, which the width rule counts as distinct): the estimate is"
        " `est. us`; what ncu measures should fall between the two.",
        "",
        "| kernel | N | D | CTAs | waves | wave eff. | MMA / tile | MMA FLOPs / useful | tensor us | issue us"
        " | MUFU us | smem us | est. us | bound | est. % of peak | smem min us | % at smem min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in estimates.values():
        lines.append(
            f"| {e.kernel} | {e.n} | {e.d} | {e.ctas} | {e.waves} | {100 * e.wave_efficiency:.1f} % | {e.mma_per_tile}"
            f" | {e.mma_flops / e.useful_flops:.2f} | {e.t_tensor * 1e6:.1f} | {e.t_issue * 1e6:.1f}"
            f" | {e.t_mufu * 1e6:.1f} | {e.t_smem * 1e6:.1f} | {e.time * 1e6:.1f} | {e.bound}"
            f" | {e.percent_of_peak:.1f} % | {e.t_smem_min * 1e6:.1f} | {e.percent_of_peak_max:.1f} % |")
    if pairs:
        lines += ["", "## Forward + backward (estimated; pack / prepare / reduce / split-merge kernels left out)", "",
                  "| kernels | N | D | est. us | est. % of peak | at smem min: us | % |", "|---|---|---|---|---|---|---|"]
        for p in pairs:
            lines.append(f"| {p['kernel']} | {p['n']} | {p['d']} | {p['time_us']:.1f} | {p['percent_of_peak']:.1f} %"
                         f" | {p['time_min_us']:.1f} | {p['percent_of_peak_max']:.1f} % |")
    checks = target_checks(costs, estimates, pairs)
    if checks:
        lines += ["", "## Issue 13's targets (bf16, N = 8192, D = 128 and 512; estimated)", "",
                  "| what | target | estimated | met |", "|---|---|---|---|"]
        for what, target, value, met in checks:
            lines.append(f"| {what} | {target} | {value} | {'yes' if met else '**no**'} |")
    return "\n".join(lines) + "\n"


def json_records(costs, estimates, pairs):
    """JSON Lines: one object per kernel ("kind": "kernel"), then one per forward + backward pair and
    shape ("kind": "forward+backward"), then one per issue-13 target ("kind": "target").
    `est_percent_of_peak`: at HEADLINE_SHAPE (N = 8192, D = 128);
    `shapes` holds every bench shape."""
    records = []
    for c in costs:
        shapes = [e for (k, _, _), e in estimates.items() if k == c.kernel]
        headline = estimates.get((c.kernel, *HEADLINE_SHAPE))
        records.append({
            "kind": "kernel",
            "kernel": c.kernel,
            "module": c.module,
            "regs": c.ptxas.regs,
            "spill_store_bytes": c.ptxas.spill_stores,
            "spill_load_bytes": c.ptxas.spill_loads,
            "stack_bytes": c.ptxas.stack_bytes,
            "smem_bytes": c.ptxas.smem_bytes,
            "dynamic_smem_bytes": c.dynamic_smem,
            "threads": c.threads,
            "ctas_per_sm": c.ctas_per_sm,
            "theoretical_occupancy": (c.ctas_per_sm * c.threads / WARP / MAX_WARPS_PER_SM) if c.threads else None,
            "occupancy_limiter": c.occupancy_limiter,
            "calls": c.calls,
            "loops": c.loops,
            "tile": None if c.tile is None else {"name": c.tile.name, "bm": c.tile.BM, "bn": c.tile.BN, "bk": c.tile.BK,
                                                 "threads": c.tile.threads},
            "mma_per_k_iteration": c.k_loop.mma if c.k_loop else None,
            "k_loop_instructions": c.k_loop.instructions if c.k_loop else None,
            "k_peeled_steps": c.k_peel_steps,
            "epilogue_instructions": c.epilogue.instructions if c.epilogue else None,
            "logits_per_thread": c.logits_per_thread or None,
            "epilogue_instructions_per_logit": c.epilogue_instructions_per_logit,
            "epilogue_instructions_per_logit_all_paths": c.epilogue_instructions_per_logit_all_paths,
            "mufu_per_logit": c.mufu_per_logit,
            "hot_arm_instructions_per_logit": c.arms["hot"][0] if c.arms else None,
            "hot_arm_mufu_per_logit": c.arms["hot"][1] if c.arms else None,
            "cold_arm_instructions_per_logit": c.arms["cold"][0] if c.arms else None,
            "cold_arm_mufu_per_logit": c.arms["cold"][1] if c.arms else None,
            "product_loop_mma": c.product_loop.mma if c.product_loop else None,
            "smem_wavefronts_per_mma": c.smem_wavefronts_per_mma,
            "est_percent_of_peak": headline.percent_of_peak if headline else None,
            "shapes": [{"n": e.n, "d": e.d, "ctas": e.ctas, "waves": e.waves, "wave_efficiency": e.wave_efficiency,
                        "mma_per_tile": e.mma_per_tile, "useful_flops": e.useful_flops, "mma_flops": e.mma_flops,
                        "t_tensor_us": e.t_tensor * 1e6, "t_issue_us": e.t_issue * 1e6, "t_mufu_us": e.t_mufu * 1e6,
                        "t_smem_us": e.t_smem * 1e6, "est_time_us": e.time * 1e6, "bound": e.bound,
                        "est_percent_of_peak": e.percent_of_peak, "t_smem_min_us": e.t_smem_min * 1e6,
                        "est_percent_of_peak_at_smem_min": e.percent_of_peak_max,
                        "warp_instructions": e.warp_instructions, "mma_instructions": e.mma_instructions,
                        "mufu_instructions": e.mufu_instructions, "smem_wavefronts": e.smem_wavefronts,
                        "smem_wavefronts_min": e.smem_wavefronts_min} for e in shapes],
            "notes": c.notes,
        })
    for p in pairs:
        records.append({"kind": "forward+backward", **p, "est_percent_of_peak": p["percent_of_peak"]})
    for what, target, value, met in target_checks(costs, estimates, pairs):
        records.append({"kind": "target", "what": what, "target": target, "estimated": value, "met": met})
    return records


# ---------------------------------------------------------------------------------------------
# Driver


def analyse_cubin(cubin, report, module, cuobjdump, tiles, name_filter=None, header=None):
    """[KernelCost] of one compiled module (its ptxas report given), sorted by kernel name."""
    ptxas = parse_ptxas_report(report)
    max_threads = parse_elf_max_threads(run_tool(cuobjdump, "-elf", cubin))
    sass = parse_sass(run_tool(cuobjdump, "-sass", cubin))
    costs = []
    for kernel in sorted(sass):
        if kernel not in ptxas or (name_filter and not re.search(name_filter, kernel)):
            continue
        costs.append(analyse_kernel(kernel, module, sass[kernel], ptxas[kernel], max_threads.get(kernel), tiles,
                                    header))
    return costs


def tile_configs(include_dir, sources=()):
    """The MmaTileConfig aliases of kernels/common/*.cuh and the given sources (a kernel may define its own)."""
    tiles = {}
    common = os.path.join(include_dir, "common")
    files = sorted(os.path.join(common, f) for f in os.listdir(common) if f.endswith(".cuh")) \
        if os.path.isdir(common) else []
    for path in files + list(sources):
        tiles.update(parse_tile_configs(path))
    return tiles


def analyse_sources(sources, include_dir, work_dir, nvcc, cuobjdump, header, name_filter=None):
    """Compiles each source and returns [KernelCost], module by module."""
    costs = []
    for src in sources:
        module = os.path.splitext(os.path.basename(src))[0]
        cubin, report = compile_cubin(nvcc, src, include_dir, work_dir)
        tiles = tile_configs(include_dir, [src])
        costs += analyse_cubin(cubin, report, module, cuobjdump, tiles, name_filter, header)
    return costs


def header_constants(include_dir):
    values = {}
    params = os.path.join(include_dir, "params")
    if os.path.isdir(params):
        for h in sorted(os.listdir(params)):
            if h.endswith(".h"):
                values.update(parse_header_constants(os.path.join(params, h)))
    return values


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="kernel folder(s) or .cu files (default: kernels/)")
    ap.add_argument("--json", action="store_true", help="print JSON Lines (one object per kernel) instead of Markdown")
    ap.add_argument("--out", help="also write the Markdown report here (default: the repository's "
                                  "benches/reports/sass-cost.md, untracked; '-': no file)")
    ap.add_argument("--filter", help="only kernels whose name matches this regular expression")
    ap.add_argument("--include", help="the include folder (default: the kernels folder, as build.rs' -I kernels)")
    ap.add_argument("--check-targets", action="store_true",
                    help="exit with status 1 when an issue-13 target in the report is not met")
    args = ap.parse_args(argv)

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = args.paths or [os.path.join(repo, "kernels")]
    out = args.out or os.path.join(repo, "benches", "reports", "sass-cost.md")
    sources = []
    for p in paths:
        if os.path.isdir(p):
            sources += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".cu"))
        elif os.path.isfile(p):
            sources.append(p)
        else:
            ap.error(f"{p}: neither a folder nor a .cu file")
    include_dir = args.include or (paths[0] if os.path.isdir(paths[0]) else os.path.dirname(os.path.abspath(paths[0])))
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    if not nvcc or not cuobjdump:
        sys.exit("sass_cost: nvcc / cuobjdump not found ($NVCC, $CUDA_HOME, PATH, the toolchain folder): "
                 "bash scripts/install-cuda-toolchain.sh")
    header = header_constants(include_dir)
    with tempfile.TemporaryDirectory(prefix="sass-cost-") as work:
        costs = analyse_sources(sources, include_dir, work, nvcc, cuobjdump, header, args.filter)
    estimates = {}
    for c in costs:
        for (n, d) in BENCH_SHAPES:
            e = estimate_shape(c, n, d, header)
            if e:
                estimates[(c.kernel, n, d)] = e
    pairs = pair_estimates(costs, estimates)
    markdown = render_markdown(costs, estimates, pairs, [os.path.relpath(s, repo) for s in sources])
    if out != "-":
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(markdown)
    if args.json:
        for r in json_records(costs, estimates, pairs):
            print(json.dumps(r))
    else:
        sys.stdout.write(markdown)
    if args.check_targets:
        missed = [what for what, _, _, met in target_checks(costs, estimates, pairs) if not met]
        if missed:
            sys.exit("sass_cost: targets not met (estimated): " + "; ".join(missed))


if __name__ == "__main__":
    main()
