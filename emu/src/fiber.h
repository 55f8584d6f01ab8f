// Fibers for the block executor: a stack and a saved stack pointer per GPU thread, switched
// cooperatively. x86-64 uses a hand-written switch (callee-saved registers, MXCSR and the x87
// control word: about ten nanoseconds); other targets fall back to ucontext (a system call per
// switch, slower but correct). AddressSanitizer is told about every switch, so it keeps tracking
// the right stack.
#pragma once
#include <stddef.h>
#include <stdint.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CKEMU_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_poison_memory_region(void const volatile* addr, size_t size);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#else
#define CKEMU_ASAN 0
#endif

namespace ckemu {

struct FiberContext {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
    // The stack this context runs on (for AddressSanitizer); null for the worker's own stack.
    const void* stack_bottom = nullptr;
    size_t stack_size = 0;
};

// Prepares `ctx` to run entry(arg) on [stack, stack + size) at its first switch.
void fiber_init(FiberContext& ctx, void* stack, size_t size, void (*entry)(void*), void* arg);

// Saves the current context in `from` and resumes `to`. `from_exiting`: the current fiber never
// resumes (AddressSanitizer may drop its fake stack).
void fiber_switch(FiberContext& from, FiberContext& to, bool from_exiting = false);

// Called first thing in a fiber's entry function (AddressSanitizer bookkeeping).
void fiber_started();

}  // namespace ckemu
