#include "fiber.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
// ckemu_switch(void** save_sp, void* new_sp): pushes the callee-saved registers and the floating
// point control words on the current stack, stores its pointer, loads the other one and pops.
// ckemu_fiber_entry: a new fiber's first "return" lands here with r12 = arg, r13 = entry.
asm(R"(
    .text
    .p2align 4
    .globl ckemu_switch
    .hidden ckemu_switch
    .type ckemu_switch, @function
ckemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ckemu_switch, .-ckemu_switch

    .p2align 4
    .globl ckemu_fiber_entry
    .hidden ckemu_fiber_entry
    .type ckemu_fiber_entry, @function
ckemu_fiber_entry:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size ckemu_fiber_entry, .-ckemu_fiber_entry
)");
extern "C" void ckemu_switch(void** save_sp, void* new_sp);
extern "C" void ckemu_fiber_entry();
#endif

namespace ckemu {

#if !defined(__x86_64__)
namespace {
struct UcStart {
    void (*entry)(void*);
    void* arg;
};
thread_local UcStart uc_pending;
void uc_trampoline() { uc_pending.entry(uc_pending.arg); }
}  // namespace
#endif

void fiber_init(FiberContext& ctx, void* stack, size_t size, void (*entry)(void*), void* arg) {
    ctx.stack_bottom = stack;
    ctx.stack_size = size;
#if defined(__x86_64__)
    // Frame popped by ckemu_switch, from the new stack pointer up: [mxcsr, fpucw], r15, r14, r13,
    // r12, rbx, rbp, return address. After `ret`, rsp = top - 16: 16-byte aligned for the call.
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15);
    uint64_t* frame = reinterpret_cast<uint64_t*>(top - 80);
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    memset(frame, 0, 80);
    memcpy(reinterpret_cast<char*>(frame), &mxcsr, 4);
    memcpy(reinterpret_cast<char*>(frame) + 4, &fpucw, 2);
    frame[1] = 0;                                              // r15
    frame[2] = 0;                                              // r14
    frame[3] = reinterpret_cast<uint64_t>(entry);              // r13
    frame[4] = reinterpret_cast<uint64_t>(arg);                // r12
    frame[5] = 0;                                              // rbx
    frame[6] = 0;                                              // rbp
    frame[7] = reinterpret_cast<uint64_t>(&ckemu_fiber_entry);  // return address
    ctx.sp = frame;
#else
    getcontext(&ctx.uc);
    ctx.uc.uc_stack.ss_sp = stack;
    ctx.uc.uc_stack.ss_size = size;
    ctx.uc.uc_link = nullptr;
    // makecontext passes int arguments only: hand the pointers over through a thread-local, read
    // at the fiber's first switch (which happens on this same thread, before any other init).
    uc_pending = UcStart{entry, arg};
    makecontext(&ctx.uc, uc_trampoline, 0);
#endif
}

void fiber_switch(FiberContext& from, FiberContext& to, bool from_exiting) {
#if CKEMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(from_exiting ? nullptr : &fake_stack, to.stack_bottom, to.stack_size);
#else
    (void)from_exiting;
#endif
#if defined(__x86_64__)
    ckemu_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
#if CKEMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

void fiber_started() {
#if CKEMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

}  // namespace ckemu
