// The block executor of the CPU emulator (see emu/include/ckemu/runtime.h and emu/README.md).
//
// A launch runs its blocks on a few worker threads. A block runs on one worker: its GPU threads are
// fibers, resumed in thread order by a small scheduler and switched only where a GPU thread would
// wait for others (__syncthreads, warp collectives, ldmatrix, mma). The checks a GPU does not make
// but a kernel author wants are errors naming kernel, block, thread and source line: a barrier not
// reached by every thread, barriers at different lines, lanes of a warp at different collectives,
// reads from exited lanes, ldmatrix / cp.async outside shared memory or misaligned, cp.async copies
// never waited for, deadlocks.
#include "ckemu/runtime.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fiber.h"

#if CKEMU_ASAN
extern "C" void __sanitizer_set_death_callback(void (*callback)(void));
#endif

namespace ckemu {

thread_local ThreadInfo* tls_thread __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

// Device limits of the emulated sm_90 device (as the driver stand-in reports them).
constexpr size_t kMaxStaticShared = 48 * 1024;
constexpr size_t kMaxSharedPerBlock = 227 * 1024;
constexpr size_t kSharedGap = 64;    // poisoned bytes around every shared variable (AddressSanitizer)
constexpr size_t kMaxSharedVars = 64;
constexpr unsigned char kSharedFill = 0xff;  // uninitialized shared memory reads as NaN / -1
constexpr int kMaxWarpOps = 4;               // collectives with disjoint masks pending at once in one warp

enum class State : uint8_t { Runnable, AtBarrier, AtWarp, Exited };
enum class Schedule : uint8_t { Warps, Threads, Reverse };

enum class Op : uint8_t { SyncWarp, ShflIdx, ShflXor, ShflDown, ShflUp, Ballot, MatchAny, Ldmatrix, LdmatrixTrans, MmaF16, MmaBF16 };

const char* op_name(Op op) {
    switch (op) {
        case Op::SyncWarp: return "__syncwarp";
        case Op::ShflIdx: return "__shfl_sync";
        case Op::ShflXor: return "__shfl_xor_sync";
        case Op::ShflDown: return "__shfl_down_sync";
        case Op::ShflUp: return "__shfl_up_sync";
        case Op::Ballot: return "__ballot_sync";
        case Op::MatchAny: return "__match_any_sync";
        case Op::Ldmatrix: return "ldmatrix.sync.aligned.m8n8.x4.shared.b16";
        case Op::LdmatrixTrans: return "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16";
        case Op::MmaF16: return "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32";
        case Op::MmaBF16: return "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    }
    return "?";
}
// .aligned instructions: every lane of the warp executes them, none may have exited.
bool is_aligned(Op op) { return op >= Op::Ldmatrix; }

// One lane's operands and result of a warp collective (lives on the lane's fiber stack).
struct LaneArg {
    uint64_t value = 0;  // shuffles, ballot, match
    int lane_arg = 0;    // shuffle source lane / lane mask / delta
    int width = 32;
    uint64_t result = 0;
    const void* ptr = nullptr;  // ldmatrix row address
    uint32_t* regs = nullptr;   // ldmatrix destination
    float* c = nullptr;         // mma accumulator (in / out)
    const uint32_t* a = nullptr;
    const uint32_t* b = nullptr;
};

struct WarpOp {
    Op op;
    unsigned mask;
    Site site;
    unsigned arrived;
    LaneArg* args[32];
};

struct AsyncCopy {
    void* dst;
    unsigned char bytes[16];
};

struct Block;

struct Thread : ThreadInfo {
    Block* blk = nullptr;
    int linear = 0, lane = 0, warp = 0;
    State state = State::Runnable;
    Site wait_site{nullptr, 0};
    FiberContext ctx;
    std::vector<AsyncCopy> open_copies;                // issued, not yet committed
    std::deque<std::vector<AsyncCopy>> committed;      // committed groups, oldest first
};

struct Warp {
    unsigned lanes = 0;   // lanes that exist (a partial last warp has fewer)
    unsigned exited = 0;
    int pending_count = 0;
    WarpOp pending[kMaxWarpOps];
};

struct SharedVar {
    const void* key;
    size_t offset, size;
};

struct Block {
    const ckemu_kernel* kernel = nullptr;
    void** args = nullptr;
    BlockInfo info{};
    int nthreads = 0, alive = 0, exited = 0;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    int barrier_count = 0;
    Site barrier_site{nullptr, 0};
    // Shared memory: one arena per block, [gap][dynamic][gap][var][gap][var]...
    unsigned char* arena = nullptr;
    size_t arena_cap = 0, dyn_offset = 0, dyn_size = 0, static_end = 0, static_used = 0;
    std::vector<SharedVar> vars;
    Schedule schedule = Schedule::Warps;
    bool failed = false;
    std::string error;
    FiberContext sched;
};

struct Worker {
    Block block;
    std::vector<void*> stacks;  // one per GPU thread, with a guard page below
    size_t stack_size = 0;
    void* altstack = nullptr;
    // AddressSanitizer: a failed block abandons its fibers mid-call, leaving their frames' redzones
    // poisoned; the next block then unpoisons whole stacks instead of their tops.
    bool stacks_dirty = true;
};

// The part of a fiber stack in use when a GPU thread exits normally: every frame of the kernel has
// returned (unpoisoning its redzones); only fiber_main's and thread_exit's frames remain.
constexpr size_t kStackTopInUse = 64 * 1024;

size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

size_t env_size(const char* name, size_t fallback) {
    const char* v = getenv(name);
    if (v == nullptr || *v == 0) return fallback;
    char* end = nullptr;
    unsigned long long x = strtoull(v, &end, 10);
    return (end != v && x > 0) ? (size_t)x : fallback;
}

size_t fiber_stack_bytes() {
    static const size_t bytes = env_size("CKEMU_STACK_KB", CKEMU_ASAN ? 1024 : 256) * 1024;
    return bytes;
}

// CKEMU_SCHEDULE: the order GPU threads run in, each a valid GPU schedule that exposes different
// missing synchronization.
//   warps (default): a warp runs until it waits at a block barrier or exits, warps in index order;
//       so one warp gets far ahead of the others (a missing barrier before a buffer is reused)
//   threads: thread by thread, so the warps advance in lockstep, one collective per round
//   reverse: as warps, with warps and blocks in reverse order
Schedule schedule_from_env() {
    static const Schedule s = [] {
        const char* v = getenv("CKEMU_SCHEDULE");
        if (v == nullptr || *v == 0 || strcmp(v, "warps") == 0) return Schedule::Warps;
        if (strcmp(v, "threads") == 0) return Schedule::Threads;
        if (strcmp(v, "reverse") == 0) return Schedule::Reverse;
        fprintf(stderr, "ckemu: CKEMU_SCHEDULE=%s is not one of warps, threads, reverse; using warps\n", v);
        return Schedule::Warps;
    }();
    return s;
}

Thread& cur() {
    Thread* t = static_cast<Thread*>(tls_thread);
    if (t == nullptr) {
        fprintf(stderr, "ckemu: a device intrinsic was called outside a kernel launch\n");
        abort();
    }
    return *t;
}

bool same_site(Site a, Site b) {
    return a.line == b.line && (a.file == b.file || (a.file && b.file && strcmp(a.file, b.file) == 0));
}

const char* base_name(const char* file) {
    if (file == nullptr) return "?";
    const char* k = strstr(file, "kernels/");
    return k != nullptr ? k : file;
}

std::string vformat(const char* fmt, va_list ap) {
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(nullptr, 0, fmt, copy);
    va_end(copy);
    std::string s(n > 0 ? (size_t)n : 0, '\0');
    if (n > 0) vsnprintf(&s[0], (size_t)n + 1, fmt, ap);
    return s;
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

std::string block_prefix(const Block& b) {
    return format("kernel `%s` block (%u,%u,%u)", b.kernel->name, b.info.block_idx.x, b.info.block_idx.y,
                  b.info.block_idx.z);
}

std::string thread_prefix(const Thread& t) {
    return format("%s thread (%u,%u,%u) [warp %d lane %d]", block_prefix(*t.blk).c_str(), t.thread_idx.x,
                  t.thread_idx.y, t.thread_idx.z, t.warp, t.lane);
}

std::string site_str(Site s) {
    if (s.file == nullptr) return "kernel exit";
    return format("%s:%d", base_name(s.file), s.line);
}

// "0-31, 64, 96-127" for a sorted list of thread indices.
std::string ranges(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size();) {
        size_t j = i;
        while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
        if (!s.empty()) s += ", ";
        s += j == i ? format("%d", v[i]) : format("%d-%d", v[i], v[j]);
        i = j + 1;
    }
    return s;
}

// The next runnable thread in schedule order from `t` (null: the first of a new round), see
// schedule_from_env. Warps / Reverse: the lanes of t's own warp first (those a completed
// collective released), then the warps after it in order.
Thread* next_runnable(Block& b, const Thread* t) {
    const int n = b.nthreads, nwarps = (n + 31) / 32;
    if (b.schedule == Schedule::Threads) {
        for (int k = t != nullptr ? t->linear + 1 : 0; k < n; ++k)
            if (b.threads[(size_t)k].state == State::Runnable) return &b.threads[(size_t)k];
        return nullptr;
    }
    const bool reverse = b.schedule == Schedule::Reverse;
    auto warp_end = [&](int w) { return (w + 1) * 32 < n ? (w + 1) * 32 : n; };
    int p = 0;
    if (t != nullptr) {
        // t's warp: the lanes after t (not yet at the collective t waits at), then those before it
        // (released by a collective that completed).
        const int w = t->warp, end = warp_end(w);
        for (int k = t->linear + 1; k < end; ++k)
            if (b.threads[(size_t)k].state == State::Runnable) return &b.threads[(size_t)k];
        for (int k = w * 32; k < t->linear; ++k)
            if (b.threads[(size_t)k].state == State::Runnable) return &b.threads[(size_t)k];
        p = (reverse ? nwarps - 1 - w : w) + 1;
    }
    for (; p < nwarps; ++p) {
        const int w = reverse ? nwarps - 1 - p : p;
        for (int k = w * 32; k < warp_end(w); ++k)
            if (b.threads[(size_t)k].state == State::Runnable) return &b.threads[(size_t)k];
    }
    return nullptr;
}

// Leaves the current fiber for the next runnable thread of the round (directly: one switch, not
// two through the scheduler), or for the scheduler at the end of the round. Returns when resumed.
void switch_away(Thread& t, bool exiting) {
    Block& b = *t.blk;
    Thread* next = next_runnable(b, &t);
    tls_thread = next;
    fiber_switch(t.ctx, next != nullptr ? next->ctx : b.sched, exiting);
    tls_thread = &t;
}

void yield_to_scheduler(Thread& t, State state, Site site) {
    t.state = state;
    t.wait_site = site;
    switch_away(t, false);
}

[[noreturn]] void fail_thread(Thread& t, Site site, const std::string& what) {
    Block& b = *t.blk;
    if (!b.failed) {
        b.failed = true;
        b.error = format("%s at %s: %s", thread_prefix(t).c_str(), site_str(site).c_str(), what.c_str());
    }
    t.state = State::Exited;
    fiber_switch(t.ctx, b.sched, true);
    abort();  // a failed block is never resumed
}

// ---------------------------------------------------------------------------------------------
// Shared memory

void poison(void* p, size_t n) {
#if CKEMU_ASAN
    __asan_poison_memory_region(p, n);
#else
    (void)p;
    (void)n;
#endif
}
void unpoison(void* p, size_t n) {
#if CKEMU_ASAN
    __asan_unpoison_memory_region(p, n);
#else
    (void)p;
    (void)n;
#endif
}

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

void arena_reset(Block& b, size_t dyn_size) {
    const size_t cap = round_up(kSharedGap + dyn_size, 128) + kMaxStaticShared + kMaxSharedVars * (kSharedGap + 128) + 256;
    if (b.arena_cap < cap) {
        if (b.arena != nullptr) {
            unpoison(b.arena, b.arena_cap);
            free(b.arena);
        }
        void* p = nullptr;
        if (posix_memalign(&p, 256, cap) != 0) {
            fprintf(stderr, "ckemu: out of host memory for %zu bytes of shared memory\n", cap);
            abort();
        }
        b.arena = static_cast<unsigned char*>(p);
        b.arena_cap = cap;
    }
    unpoison(b.arena, b.arena_cap);
    memset(b.arena, kSharedFill, b.arena_cap);
    poison(b.arena, b.arena_cap);
    b.dyn_offset = 128;  // >= kSharedGap, and 128-byte aligned
    b.dyn_size = dyn_size;
    unpoison(b.arena + b.dyn_offset, dyn_size);
    b.static_end = b.dyn_offset + dyn_size;
    b.static_used = 0;
    b.vars.clear();
}

// The shared variable or dynamic region holding [p, p + n), or false.
bool in_shared(const Block& b, const void* p, size_t n) {
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (q < b.arena || q + n > b.arena + b.arena_cap) return false;
    const size_t off = (size_t)(q - b.arena);
    if (off >= b.dyn_offset && off + n <= b.dyn_offset + b.dyn_size) return true;
    for (const SharedVar& v : b.vars)
        if (off >= v.offset && off + n <= v.offset + v.size) return true;
    return false;
}

void check_shared(Thread& t, Site site, const char* what, const void* p, size_t n, size_t align) {
    if (!in_shared(*t.blk, p, n))
        fail_thread(t, site, format("%s: the %zu bytes at %p are not inside one __shared__ variable or the dynamic "
                                    "shared memory of this block",
                                    what, n, p));
    if (reinterpret_cast<uintptr_t>(p) % align != 0)
        fail_thread(t, site, format("%s: shared address %p is not %zu-byte aligned", what, p, align));
}

// ---------------------------------------------------------------------------------------------
// Warp collectives

float half_bits_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h >> 15) << 31;
    const int exp = (h >> 10) & 0x1f;
    const uint32_t mant = h & 0x3ff;
    float f;
    if (exp == 0) {
        f = ldexpf((float)mant, -24);  // zero or subnormal
        return sign ? -f : f;
    }
    uint32_t bits;
    if (exp == 31) bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN
    else bits = sign | ((uint32_t)(exp - 15 + 127) << 23) | (mant << 13);
    memcpy(&f, &bits, 4);
    return f;
}

float bf16_bits_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Every 16-bit pattern converted once (256 KB each): the mma's operand decode is a table lookup.
const float* half_table() {
    static const float* t = [] {
        float* v = new float[65536];
        for (uint32_t i = 0; i < 65536; ++i) v[i] = half_bits_to_float((uint16_t)i);
        return v;
    }();
    return t;
}
const float* bf16_table() {
    static const float* t = [] {
        float* v = new float[65536];
        for (uint32_t i = 0; i < 65536; ++i) v[i] = bf16_bits_to_float((uint16_t)i);
        return v;
    }();
    return t;
}

std::string lane_list(unsigned mask) {
    std::vector<int> v;
    for (int l = 0; l < 32; ++l)
        if (mask >> l & 1u) v.push_back(l);
    return ranges(v);
}

// Every lane has arrived: compute the results (or fail, naming the lane at fault).
void execute(Thread& t, Warp& w, WarpOp& op) {
    Block& b = *t.blk;
    const unsigned arrived = op.arrived;
    auto lane_thread = [&](int lane) -> Thread& { return b.threads[(size_t)t.warp * 32 + lane]; };
    switch (op.op) {
        case Op::SyncWarp:
            return;
        case Op::ShflIdx:
        case Op::ShflXor:
        case Op::ShflDown:
        case Op::ShflUp:
            for (int l = 0; l < 32; ++l) {
                if (!(arrived >> l & 1u)) continue;
                LaneArg& a = *op.args[l];
                const int width = a.width;
                if (width < 1 || width > 32 || (width & (width - 1)) != 0)
                    fail_thread(lane_thread(l), op.site, format("%s: width %d is not a power of two in 1..32", op_name(op.op), width));
                const int base = l & ~(width - 1), pos = l & (width - 1);
                int src = l;
                switch (op.op) {
                    case Op::ShflIdx: src = base + (a.lane_arg & (width - 1)); break;
                    case Op::ShflXor: {
                        const int x = l ^ a.lane_arg;
                        src = (x >= 0 && x < 32 && (x & ~(width - 1)) == base) ? x : l;
                        break;
                    }
                    case Op::ShflDown: src = pos + a.lane_arg < width ? l + a.lane_arg : l; break;
                    case Op::ShflUp: src = pos - a.lane_arg >= 0 ? l - a.lane_arg : l; break;
                    default: break;
                }
                if (!(arrived >> src & 1u)) {
                    const char* why = (w.exited >> src & 1u) ? "has exited" : (w.lanes >> src & 1u) ? "is not in the mask" : "does not exist";
                    fail_thread(lane_thread(l), op.site,
                                format("%s (mask 0x%08x): lane %d reads lane %d, which %s (undefined on a GPU)",
                                       op_name(op.op), op.mask, l, src, why));
                }
                a.result = op.args[src]->value;
            }
            return;
        case Op::Ballot: {
            unsigned r = 0;
            for (int l = 0; l < 32; ++l)
                if ((arrived >> l & 1u) && op.args[l]->value != 0) r |= 1u << l;
            for (int l = 0; l < 32; ++l)
                if (arrived >> l & 1u) op.args[l]->result = r;
            return;
        }
        case Op::MatchAny:
            for (int l = 0; l < 32; ++l) {
                if (!(arrived >> l & 1u)) continue;
                unsigned r = 0;
                for (int m = 0; m < 32; ++m)
                    if ((arrived >> m & 1u) && op.args[m]->value == op.args[l]->value) r |= 1u << m;
                op.args[l]->result = r;
            }
            return;
        case Op::Ldmatrix:
        case Op::LdmatrixTrans: {
            // Matrix j's row r is the 16 bytes at lane (8 j + r)'s address (PTX ISA, ldmatrix).
            uint16_t m[4][8][8];
            for (int l = 0; l < 32; ++l) {
                Thread& lt = lane_thread(l);
                check_shared(lt, op.site, op_name(op.op), op.args[l]->ptr, 16, 16);
                memcpy(m[l / 8][l % 8], op.args[l]->ptr, 16);
            }
            // Lane t receives, per matrix, row t / 4, elements 2 (t % 4) + {0, 1}; .trans reads the
            // transposed matrix, i.e. column t / 4, rows 2 (t % 4) + {0, 1}.
            for (int l = 0; l < 32; ++l)
                for (int j = 0; j < 4; ++j) {
                    const int r = l / 4, c = 2 * (l % 4);
                    const uint16_t lo = op.op == Op::Ldmatrix ? m[j][r][c] : m[j][c][r];
                    const uint16_t hi = op.op == Op::Ldmatrix ? m[j][r][c + 1] : m[j][c + 1][r];
                    op.args[l]->regs[j] = (uint32_t)lo | ((uint32_t)hi << 16);
                }
            return;
        }
        case Op::MmaF16:
        case Op::MmaBF16: {
            // Fragment layouts of mma.m16n8k16 (PTX ISA): lane = 4 group + tig.
            //   A 16 x 16: a_i (i = 0..7, two per register), row group + 8 [i % 4 >= 2], col 2 tig + (i % 2) + 8 [i >= 4]
            //   B 16 x 8:  b_i (i = 0..3),  row (k) 2 tig + (i % 2) + 8 [i >= 2], col group
            //   C 16 x 8:  c_i (i = 0..3),  row group + 8 [i >= 2], col 2 tig + (i % 2)
            double A[16][16], B[16][8], C[16][8];
            const float* to_float = op.op == Op::MmaBF16 ? bf16_table() : half_table();
            for (int l = 0; l < 32; ++l) {
                const int g = l / 4, tig = l % 4;
                const LaneArg& a = *op.args[l];
                for (int i = 0; i < 8; ++i)
                    A[g + 8 * ((i % 4) >= 2)][2 * tig + (i % 2) + 8 * (i >= 4)] = to_float[(uint16_t)(a.a[i / 2] >> (16 * (i % 2)))];
                for (int i = 0; i < 4; ++i)
                    B[2 * tig + (i % 2) + 8 * (i >= 2)][g] = to_float[(uint16_t)(a.b[i / 2] >> (16 * (i % 2)))];
                for (int i = 0; i < 4; ++i) C[g + 8 * (i >= 2)][2 * tig + (i % 2)] = a.c[i];
            }
            // Products of 16-bit floats are exact in double and the sum of 16 of them nearly so; the
            // result is rounded to f32 once (the tensor cores' internal rounding differs in the last
            // bits: compare with tolerances).
            // k outermost per row, n innermost: every output sums its k terms in order, and the n loop
            // vectorizes without reassociation.
            float D[16][8];
            for (int r = 0; r < 16; ++r) {
                double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int k = 0; k < 16; ++k)
                    for (int n = 0; n < 8; ++n) s[n] += A[r][k] * B[k][n];
                for (int n = 0; n < 8; ++n) D[r][n] = (float)(s[n] + C[r][n]);
            }
            for (int l = 0; l < 32; ++l) {
                const int g = l / 4, tig = l % 4;
                for (int i = 0; i < 4; ++i) op.args[l]->c[i] = D[g + 8 * (i >= 2)][2 * tig + (i % 2)];
            }
            return;
        }
    }
}

// Completes `op` if every lane it waits for has arrived: computes, releases the waiting lanes and
// removes it. Returns whether it completed.
bool try_complete(Thread& t, Warp& w, int index) {
    WarpOp& op = w.pending[index];
    const unsigned need = op.mask & ~w.exited;
    if ((op.arrived & need) != need) return false;
    if (is_aligned(op.op) && (op.mask & w.exited) != 0)
        fail_thread(t, op.site,
                    format("%s is .aligned: every lane of the warp must execute it, but lanes %s have exited",
                           op_name(op.op), lane_list(op.mask & w.exited).c_str()));
    execute(t, w, op);
    Block& b = *t.blk;
    for (int l = 0; l < 32; ++l)
        if ((op.arrived >> l & 1u) && l != t.lane) {
            Thread& other = b.threads[(size_t)t.warp * 32 + l];
            if (other.state == State::AtWarp) other.state = State::Runnable;
        }
    w.pending[index] = w.pending[--w.pending_count];
    return true;
}

void collective(Op op, unsigned mask, Site site, LaneArg& arg) {
    Thread& t = cur();
    Block& b = *t.blk;
    Warp& w = b.warps[(size_t)t.warp];
    const unsigned bit = 1u << t.lane;
    if (is_aligned(op)) mask = w.lanes;
    if (!(mask & bit))
        fail_thread(t, site, format("%s with mask 0x%08x, which does not include the calling lane %d", op_name(op), mask, t.lane));
    if (mask & ~w.lanes)
        fail_thread(t, site, format("%s with mask 0x%08x names lanes %s, which do not exist (block of %d threads)", op_name(op),
                                    mask, lane_list(mask & ~w.lanes).c_str(), b.nthreads));
    int index = -1;
    for (int i = 0; i < w.pending_count; ++i) {
        const WarpOp& p = w.pending[i];
        if (p.mask == mask) {
            index = i;
        } else if (p.mask & mask) {
            fail_thread(t, site,
                        format("%s with mask 0x%08x while lanes %s wait at %s (%s) with the overlapping mask 0x%08x",
                               op_name(op), mask, lane_list(p.arrived).c_str(), op_name(p.op), site_str(p.site).c_str(), p.mask));
        }
    }
    if (index < 0) {
        if (w.pending_count == kMaxWarpOps)
            fail_thread(t, site, format("%s: more than %d collectives with disjoint masks pending in one warp", op_name(op), kMaxWarpOps));
        index = w.pending_count++;
        WarpOp& p = w.pending[index];
        p.op = op;
        p.mask = mask;
        p.site = site;
        p.arrived = 0;
    } else if (w.pending[index].op != op) {
        const WarpOp& p = w.pending[index];
        fail_thread(t, site,
                    format("divergent warp: this lane is at %s while lanes %s of mask 0x%08x are at %s (%s)", op_name(op),
                           lane_list(p.arrived).c_str(), mask, op_name(p.op), site_str(p.site).c_str()));
    }
    WarpOp& p = w.pending[index];
    p.arrived |= bit;
    p.args[t.lane] = &arg;
    if (!try_complete(t, w, index)) yield_to_scheduler(t, State::AtWarp, site);
}

// ---------------------------------------------------------------------------------------------
// Threads

void thread_exit(Thread& t) {
    Block& b = *t.blk;
    if (!t.open_copies.empty() || !t.committed.empty()) {
        size_t copies = t.open_copies.size();
        for (const auto& g : t.committed) copies += g.size();
        fail_thread(t, Site{nullptr, 0},
                    format("the thread exits with %zu cp.async copies (%zu committed groups%s) never waited for by "
                           "cp.async.wait_group: their shared memory writes would land after the kernel moved on",
                           copies, t.committed.size(), t.open_copies.empty() ? "" : " and an uncommitted one"));
    }
    if (b.barrier_count > 0)
        fail_thread(t, Site{nullptr, 0},
                    format("the thread exits while %d threads wait at __syncthreads (%s): a barrier must be reached by "
                           "every thread of the block",
                           b.barrier_count, site_str(b.barrier_site).c_str()));
    Warp& w = b.warps[(size_t)t.warp];
    t.state = State::Exited;
    --b.alive;
    ++b.exited;
    w.exited |= 1u << t.lane;
    for (int i = w.pending_count - 1; i >= 0; --i)
        if (w.pending[i].mask >> t.lane & 1u) try_complete(t, w, i);
    switch_away(t, true);
    abort();
}

void fiber_main(void* p) {
    Thread& t = *static_cast<Thread*>(p);
    fiber_started();
    t.blk->kernel->invoke(t.blk->args);
    thread_exit(t);
}

void deadlock(Block& b) {
    // Group threads by what they wait for.
    std::string what;
    std::vector<int> at_barrier;
    for (const Thread& t : b.threads) {
        if ((int)(&t - b.threads.data()) >= b.nthreads) break;
        if (t.state == State::AtBarrier) at_barrier.push_back(t.linear);
    }
    if (!at_barrier.empty())
        what += format("threads %s wait at __syncthreads (%s)", ranges(at_barrier).c_str(), site_str(b.barrier_site).c_str());
    for (size_t wi = 0; wi < (size_t)(b.nthreads + 31) / 32; ++wi) {
        const Warp& w = b.warps[wi];
        for (int i = 0; i < w.pending_count; ++i) {
            const WarpOp& p = w.pending[i];
            if (!what.empty()) what += "; ";
            what += format("lanes %s of warp %zu wait at %s (%s) for lanes %s", lane_list(p.arrived).c_str(), wi,
                           op_name(p.op), site_str(p.site).c_str(), lane_list(p.mask & ~p.arrived & ~w.exited).c_str());
        }
    }
    if (b.exited > 0) what += format("; %d threads have exited", b.exited);
    b.failed = true;
    b.error = format("%s: deadlock: %s", block_prefix(b).c_str(), what.c_str());
}

// ---------------------------------------------------------------------------------------------
// Block execution

void* map_stack(size_t size) {
    const size_t guard = page_size();
    void* p = mmap(nullptr, size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "ckemu: cannot map a %zu-byte fiber stack\n", size);
        abort();
    }
    mprotect(p, guard, PROT_NONE);  // stack overflow faults instead of corrupting the next stack
    return static_cast<char*>(p) + guard;
}

// Fiber stacks of the worker running now, for the fault handler's stack-overflow diagnosis.
thread_local Worker* tls_worker = nullptr;

// The calling OS thread's stack (the scheduler runs on it), for AddressSanitizer's fiber switches.
void current_stack(const void*& bottom, size_t& size) {
#if CKEMU_ASAN
    thread_local const void* cached_bottom = nullptr;
    thread_local size_t cached_size = 0;
    if (cached_bottom == nullptr) {
        pthread_attr_t attr;
        void* addr = nullptr;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            pthread_attr_getstack(&attr, &addr, &cached_size);
            pthread_attr_destroy(&attr);
        }
        cached_bottom = addr;
    }
    bottom = cached_bottom;
    size = cached_size;
#else
    bottom = nullptr;
    size = 0;
#endif
}

bool run_block(Worker& wk, const ckemu_kernel* kernel, void** args, uint3 block_idx, dim3 grid, dim3 block,
               size_t dyn_shared, std::string& error) {
    Block& b = wk.block;
    const int n = (int)(block.x * block.y * block.z);
    b.kernel = kernel;
    b.args = args;
    b.info.block_idx = block_idx;
    b.info.block_dim = block;
    b.info.grid_dim = grid;
    b.nthreads = n;
    b.alive = n;
    b.exited = 0;
    b.barrier_count = 0;
    b.barrier_site = Site{nullptr, 0};
    b.failed = false;
    b.error.clear();
    b.schedule = schedule_from_env();
    arena_reset(b, dyn_shared);
    if (b.threads.size() < (size_t)n) b.threads.resize((size_t)n);
    const int nwarps = (n + 31) / 32;
    if (b.warps.size() < (size_t)nwarps) b.warps.resize((size_t)nwarps);
    for (int wi = 0; wi < nwarps; ++wi) {
        Warp& w = b.warps[(size_t)wi];
        const int lanes = n - wi * 32 >= 32 ? 32 : n - wi * 32;
        w.lanes = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
        w.exited = 0;
        w.pending_count = 0;
    }
    if (wk.stack_size != fiber_stack_bytes()) {
        wk.stack_size = fiber_stack_bytes();
        wk.stacks.clear();  // (the old mappings are leaked; the size only changes between processes)
    }
    while (wk.stacks.size() < (size_t)n) wk.stacks.push_back(map_stack(wk.stack_size));
    for (int i = 0; i < n; ++i) {
        Thread& t = b.threads[(size_t)i];
        t.thread_idx = uint3{(unsigned)i % block.x, ((unsigned)i / block.x) % block.y, (unsigned)i / (block.x * block.y)};
        t.block = &b.info;
        t.blk = &b;
        t.linear = i;
        t.lane = i % 32;
        t.warp = i / 32;
        t.state = State::Runnable;
        t.wait_site = Site{nullptr, 0};
        t.open_copies.clear();
        t.committed.clear();
        if (CKEMU_ASAN) {
            char* stack = static_cast<char*>(wk.stacks[(size_t)i]);
            const size_t top = wk.stacks_dirty || wk.stack_size <= kStackTopInUse ? wk.stack_size : kStackTopInUse;
            unpoison(stack + wk.stack_size - top, top);
        }
        fiber_init(t.ctx, wk.stacks[(size_t)i], wk.stack_size, fiber_main, &t);
    }
    tls_worker = &wk;
    current_stack(b.sched.stack_bottom, b.sched.stack_size);
    // Rounds: the first runnable thread runs; each fiber that waits or exits hands over to the next
    // runnable one (switch_away); the last of the round comes back here.
    while (b.alive > 0 && !b.failed) {
        Thread* first = next_runnable(b, nullptr);
        if (first == nullptr) {
            deadlock(b);
            break;
        }
        tls_thread = first;
        fiber_switch(b.sched, first->ctx);
        tls_thread = nullptr;
    }
    tls_worker = nullptr;
    wk.stacks_dirty = b.failed;
    if (b.failed) error = b.error;
    return !b.failed;
}

std::mutex& pool_mutex() {
    static std::mutex m;
    return m;
}
std::vector<Worker*>& pool() {
    static std::vector<Worker*>* p = new std::vector<Worker*>();  // never destroyed: workers outlive exit
    return *p;
}
Worker* borrow_worker() {
    std::lock_guard<std::mutex> lock(pool_mutex());
    if (pool().empty()) return new Worker();
    Worker* w = pool().back();
    pool().pop_back();
    return w;
}
void return_worker(Worker* w) {
    std::lock_guard<std::mutex> lock(pool_mutex());
    pool().push_back(w);
}

// ---------------------------------------------------------------------------------------------
// Faults inside a kernel: name the kernel, block and thread before the process dies (a GPU's
// illegal address also ends the context). Under AddressSanitizer its own report does this job, and
// a death callback adds the emulated thread.

std::atomic<bool> handler_installed{false};
struct sigaction old_segv, old_bus;

void describe_current(char* buf, size_t len) {
    Thread* t = static_cast<Thread*>(tls_thread);
    if (t == nullptr || t->blk == nullptr || t->blk->kernel == nullptr) {
        buf[0] = 0;
        return;
    }
    snprintf(buf, len, "kernel `%s` block (%u,%u,%u) thread (%u,%u,%u)", t->blk->kernel->name, t->blk->info.block_idx.x,
             t->blk->info.block_idx.y, t->blk->info.block_idx.z, t->thread_idx.x, t->thread_idx.y, t->thread_idx.z);
}

void fault_handler(int sig, siginfo_t* info, void* uctx) {
    char who[256];
    describe_current(who, sizeof who);
    if (who[0] == 0) {
        // Not in an emulated kernel: hand the signal to whoever had it before (the fault recurs).
        sigaction(sig, sig == SIGSEGV ? &old_segv : &old_bus, nullptr);
        (void)uctx;
        return;
    }
    const char* kind = "illegal memory access";
    if (Worker* w = tls_worker) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
        for (void* s : w->stacks) {
            const uintptr_t lo = reinterpret_cast<uintptr_t>(s) - page_size();
            if (a >= lo && a < reinterpret_cast<uintptr_t>(s)) {
                kind = "fiber stack overflow (raise CKEMU_STACK_KB)";
                break;
            }
        }
    }
    char msg[512];
    int n = snprintf(msg, sizeof msg, "ckemu: %s: %s at address %p (%s)\n", who, kind, info->si_addr,
                     sig == SIGSEGV ? "SIGSEGV" : "SIGBUS");
    if (n > 0) {
        ssize_t ignored = write(2, msg, (size_t)(n < (int)sizeof msg ? n : (int)sizeof msg - 1));
        (void)ignored;
    }
    signal(sig, SIG_DFL);  // the fault recurs and ends the process, as on a GPU
}

#if CKEMU_ASAN
void asan_death_callback() {
    char who[256];
    describe_current(who, sizeof who);
    if (who[0] != 0) fprintf(stderr, "ckemu: the AddressSanitizer report above is from %s\n", who);
}
#endif

void install_fault_handler() {
    bool expected = false;
    if (!handler_installed.compare_exchange_strong(expected, true)) return;
#if CKEMU_ASAN
    __sanitizer_set_death_callback(asan_death_callback);
#else
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fault_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
#endif
}

// Runs on each worker OS thread: an alternate signal stack, so a fiber stack overflow can be reported.
struct AltStack {
    stack_t old{};
    bool set = false;
    explicit AltStack(Worker& w) {
#if !CKEMU_ASAN
        const size_t size = 64 * 1024;
        if (w.altstack == nullptr) w.altstack = malloc(size);
        stack_t st{};
        st.ss_sp = w.altstack;
        st.ss_size = size;
        st.ss_flags = 0;
        set = sigaltstack(&st, &old) == 0;
#else
        (void)w;
#endif
    }
    ~AltStack() {
        if (set) sigaltstack(&old, nullptr);
    }
};

size_t worker_count() {
    static const size_t n = [] {
        unsigned hw = std::thread::hardware_concurrency();
        return env_size("CKEMU_WORKERS", hw == 0 ? 1 : hw);
    }();
    return n;
}

std::vector<const ckemu_kernel*>& registry_storage() {
    static std::vector<const ckemu_kernel*>* r = new std::vector<const ckemu_kernel*>();
    return *r;
}
std::vector<const ckemu_kernel*>& registry() {
    static std::once_flag once;
    std::call_once(once, [] { ckemu_register_all_modules(); });
    return registry_storage();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Intrinsics (runtime.h)

void fail(Site site, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string what = vformat(fmt, ap);
    va_end(ap);
    fail_thread(cur(), site, what);
}

void syncthreads(Site site) {
    Thread& t = cur();
    Block& b = *t.blk;
    if (b.exited > 0) {
        std::vector<int> gone;
        for (int i = 0; i < b.nthreads; ++i)
            if (b.threads[(size_t)i].state == State::Exited) gone.push_back(i);
        fail_thread(t, site,
                    format("__syncthreads is not reached by every thread of the block: threads %s have exited",
                           ranges(gone).c_str()));
    }
    if (b.barrier_count == 0) {
        b.barrier_site = site;
    } else if (!same_site(site, b.barrier_site)) {
        fail_thread(t, site,
                    format("divergent __syncthreads: this thread is at %s while %d threads wait at %s",
                           site_str(site).c_str(), b.barrier_count, site_str(b.barrier_site).c_str()));
    }
    if (++b.barrier_count == b.nthreads) {
        b.barrier_count = 0;
        for (int i = 0; i < b.nthreads; ++i) {
            Thread& o = b.threads[(size_t)i];
            if (o.state == State::AtBarrier) o.state = State::Runnable;
        }
        return;
    }
    yield_to_scheduler(t, State::AtBarrier, site);
}

void syncwarp(Site site, unsigned mask) {
    LaneArg a;
    collective(Op::SyncWarp, mask, site, a);
}

uint64_t shfl(Site site, Shfl kind, unsigned mask, uint64_t bits, int lane_arg, int width) {
    LaneArg a;
    a.value = bits;
    a.lane_arg = lane_arg;
    a.width = width;
    const Op op = kind == Shfl::Idx ? Op::ShflIdx : kind == Shfl::Xor ? Op::ShflXor : kind == Shfl::Down ? Op::ShflDown : Op::ShflUp;
    collective(op, mask, site, a);
    return a.result;
}

unsigned ballot(Site site, unsigned mask, int predicate) {
    LaneArg a;
    a.value = predicate != 0;
    collective(Op::Ballot, mask, site, a);
    return (unsigned)a.result;
}

unsigned match_any(Site site, unsigned mask, uint64_t value) {
    LaneArg a;
    a.value = value;
    collective(Op::MatchAny, mask, site, a);
    return (unsigned)a.result;
}

unsigned activemask() {
    Thread& t = cur();
    const Warp& w = t.blk->warps[(size_t)t.warp];
    return w.lanes & ~w.exited;
}

void cp_async_16(Site site, void* dst, const void* src, int bytes) {
    Thread& t = cur();
    check_shared(t, site, "cp.async.cg.shared.global (destination)", dst, 16, 16);
    if (bytes < 0 || bytes > 16)
        fail_thread(t, site, format("cp.async.cg 16: source size %d is outside 0..16", bytes));
    if (bytes > 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0)
        fail_thread(t, site, format("cp.async.cg 16: global source %p is not 16-byte aligned", src));
    AsyncCopy c;
    c.dst = dst;
    memset(c.bytes, 0, 16);
    if (bytes > 0) memcpy(c.bytes, src, (size_t)bytes);  // read now: the source may not change meanwhile
    t.open_copies.push_back(c);
    // Until a wait_group retires the copy its destination is undefined (the copy may land at any
    // moment): it reads as poison, so both a read before the wait (a missing wait) and a read by
    // another thread still using the old contents (a missing barrier before the buffer is reused)
    // see NaN instead of plausible data.
    memset(dst, kSharedFill, 16);
}

void cp_async_commit(Site) {
    Thread& t = cur();
    t.committed.emplace_back();
    t.committed.back().swap(t.open_copies);
}

void cp_async_wait(Site site, int keep_pending) {
    Thread& t = cur();
    if (keep_pending < 0) fail_thread(t, site, "cp.async.wait_group with a negative count");
    while (t.committed.size() > (size_t)keep_pending) {
        for (const AsyncCopy& c : t.committed.front()) memcpy(c.dst, c.bytes, 16);
        t.committed.pop_front();
    }
}

void ldmatrix_x4(Site site, uint32_t (&r)[4], const void* p, bool trans) {
    LaneArg a;
    a.ptr = p;
    a.regs = r;
    collective(trans ? Op::LdmatrixTrans : Op::Ldmatrix, 0xffffffffu, site, a);
}

void mma_m16n8k16(Site site, float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], MmaType type) {
    LaneArg arg;
    arg.c = c;
    arg.a = a;
    arg.b = b;
    collective(type == MmaType::F16 ? Op::MmaF16 : Op::MmaBF16, 0xffffffffu, site, arg);
}

void* shared_var(const void* key, size_t size, size_t align, Site site) {
    Thread& t = cur();
    Block& b = *t.blk;
    for (const SharedVar& v : b.vars)
        if (v.key == key) return b.arena + v.offset;
    if (b.vars.size() >= kMaxSharedVars)
        fail_thread(t, site, format("more than %zu __shared__ declarations in one kernel", kMaxSharedVars));
    if (b.static_used + size > kMaxStaticShared)
        fail_thread(t, site,
                    format("static shared memory exceeds the device's 48 KB per block: %zu bytes already, %zu more here",
                           b.static_used, size));
    if (b.static_used + size + b.dyn_size > kMaxSharedPerBlock)
        fail_thread(t, site,
                    format("static (%zu B) plus dynamic (%zu B) shared memory exceeds the device's 227 KB per block",
                           b.static_used + size, b.dyn_size));
    const size_t off = round_up(b.static_end + kSharedGap, align < 16 ? 16 : align);
    if (off + size + kSharedGap > b.arena_cap) fail_thread(t, site, "shared memory arena exhausted (emulator limit)");
    unpoison(b.arena + off, size);
    b.vars.push_back(SharedVar{key, off, size});
    b.static_end = off + size;
    b.static_used += size;
    return b.arena + off;
}

void* dynamic_shared() {
    Thread& t = cur();
    return t.blk->arena + t.blk->dyn_offset;
}

size_t shared_offset(Site site, const void* p) {
    Thread& t = cur();
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (q < t.blk->arena || q >= t.blk->arena + t.blk->arena_cap)
        fail_thread(t, site, format("__cvta_generic_to_shared of %p, which is not shared memory", p));
    return (size_t)(q - t.blk->arena);
}

}  // namespace ckemu

// ---------------------------------------------------------------------------------------------
// Driver-facing C ABI

using namespace ckemu;

extern "C" void ckemu_register_module(const ckemu_kernel* kernels, size_t count) {
    std::vector<const ckemu_kernel*>& r = registry_storage();
    for (size_t i = 0; i < count; ++i) {
        bool seen = false;
        for (const ckemu_kernel* k : r) seen = seen || strcmp(k->name, kernels[i].name) == 0;
        if (seen) {
            fprintf(stderr, "ckemu: kernel `%s` (module %s) is defined twice; keeping the first\n", kernels[i].name,
                    kernels[i].module);
            continue;
        }
        r.push_back(&kernels[i]);
    }
}

extern "C" size_t ckemu_kernel_count(void) { return registry().size(); }

extern "C" const ckemu_kernel* ckemu_kernel_at(size_t i) { return i < registry().size() ? registry()[i] : nullptr; }

extern "C" const ckemu_kernel* ckemu_kernel_find(const char* name) {
    for (const ckemu_kernel* k : registry())
        if (strcmp(k->name, name) == 0) return k;
    return nullptr;
}

extern "C" const char* ckemu_build_info(void) {
#if defined(__x86_64__)
#define CKEMU_FIBERS "x86-64 fibers"
#else
#define CKEMU_FIBERS "ucontext fibers"
#endif
    return CKEMU_ASAN ? CKEMU_FIBERS ", kernels built with AddressSanitizer" : CKEMU_FIBERS;
}

extern "C" int ckemu_launch(const ckemu_kernel* kernel, const unsigned grid[3], const unsigned block[3],
                            unsigned dynamic_shared_bytes, unsigned max_dynamic_shared_bytes, void** args, char* err,
                            size_t err_len) {
    (void)max_dynamic_shared_bytes;  // checked by the driver stand-in
    install_fault_handler();
    const dim3 g(grid[0], grid[1], grid[2]), bl(block[0], block[1], block[2]);
    const uint64_t total = (uint64_t)g.x * g.y * g.z;
    if (total == 0 || (uint64_t)bl.x * bl.y * bl.z == 0) return 0;
    const bool reverse = schedule_from_env() == Schedule::Reverse;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> stop{false};
    std::mutex failure_mutex;
    uint64_t failed_at = UINT64_MAX;
    std::string failure;

    auto work = [&]() {
        Worker* w = borrow_worker();
        {
            AltStack alt(*w);
            for (;;) {
                if (stop.load()) break;
                const uint64_t i = next.fetch_add(1);
                if (i >= total) break;
                const uint64_t lin = reverse ? total - 1 - i : i;
                const uint3 idx{(unsigned)(lin % g.x), (unsigned)((lin / g.x) % g.y), (unsigned)(lin / ((uint64_t)g.x * g.y))};
                std::string error;
                if (!run_block(*w, kernel, args, idx, g, bl, dynamic_shared_bytes, error)) {
                    std::lock_guard<std::mutex> lock(failure_mutex);
                    if (i < failed_at) {  // the first failing block in schedule order: deterministic
                        failed_at = i;
                        failure = error;
                    }
                    stop.store(true);
                }
            }
        }
        return_worker(w);
    };

    const size_t workers = (size_t)(total < worker_count() ? total : worker_count());
    std::vector<std::thread> threads;
    for (size_t i = 1; i < workers; ++i) threads.emplace_back(work);
    work();
    for (std::thread& t : threads) t.join();

    if (failed_at == UINT64_MAX) return 0;
    fprintf(stderr, "ckemu: %s\n", failure.c_str());
    if (err != nullptr && err_len > 0) snprintf(err, err_len, "%s", failure.c_str());
    return 719;  // CUDA_ERROR_LAUNCH_FAILED
}
