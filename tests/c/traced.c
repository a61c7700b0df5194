/*
 * Workload for the test of Hawk's trace-context contract alone, in C (no
 * Rust, no shim): the program exports the marker itself.
 *
 *   traced TRACE_ID SPAN_ID SECONDS [DELAY]
 *
 * TRACE_ID is 32 hex digits and SPAN_ID 16 (W3C ids). The program prints
 * `ready <pid>`, waits DELAY seconds (default 0: time for a profiler to
 * attach), sets the thread's trace context through the marker, burns CPU
 * for SECONDS in c_traced_work(), clears the context, burns CPU for SECONDS
 * in c_untraced_work(), and exits 0 (2 on bad arguments).
 *
 * Build (frame pointers, so stacks unwind):
 *   cc -O1 -fno-omit-frame-pointer -g -o traced tests/c/traced.c
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * The contract (DESIGN.md, "The trace-context contract"): an exported C-ABI
 * function that does nothing. Hawk's uprobe reads the four argument
 * registers. The W3C ids map onto the arguments big-endian; flags bit 0 set
 * = set the calling thread's context, flags = 0 (all-zero ids) = clear it.
 *
 * noinline/noipa: every call is a real call with the arguments in registers
 * (no inlining, no clone with constants propagated in); used + default
 * visibility: the symbol stays in the binary's symbol table; the asm keeps
 * the arguments live so the compiler cannot treat the body as dead. Its
 * `nop` is what the probe hits when the compiler emits no prologue (a leaf
 * function at -O1 is a bare `ret` otherwise): the x86-64 kernel emulates a
 * probed `nop` (or `push`) but must single-step a `ret`, ~30x slower.
 */
#if defined(__GNUC__) && !defined(__clang__)
#define HAWK_MARKER __attribute__((noinline, noipa, used, visibility("default")))
#else
#define HAWK_MARKER __attribute__((noinline, used, visibility("default")))
#endif

HAWK_MARKER void hawk_trace_context_set(uint64_t trace_id_hi, uint64_t trace_id_lo,
                                        uint64_t span_id, uint64_t flags)
{
	__asm__ __volatile__("nop" : : "r"(trace_id_hi), "r"(trace_id_lo), "r"(span_id), "r"(flags)
			     : "memory");
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Dependent multiply-adds until `seconds` have passed. */
#define BURN(seconds, salt)                                                        \
	do {                                                                       \
		double end_ = now() + (seconds);                                   \
		volatile uint64_t x_ = 0x9e3779b97f4a7c15ULL;                      \
		do {                                                               \
			for (int i_ = 0; i_ < 20000; i_++)                         \
				x_ = x_ * 6364136223846793005ULL + (salt);         \
		} while (now() < end_);                                            \
	} while (0)

/* CPU time spent while the thread serves the trace. */
__attribute__((noinline)) void c_traced_work(double seconds)
{
	BURN(seconds, 0x7aced);
}

/* CPU time spent after the context was cleared. */
__attribute__((noinline)) void c_untraced_work(double seconds)
{
	BURN(seconds, 0x0bad);
}

/* Parses exactly `len` hex digits of `s` starting at `off` into *out. */
static int parse_hex(const char *s, size_t off, size_t len, uint64_t *out)
{
	uint64_t v = 0;
	for (size_t i = off; i < off + len; i++) {
		char c = s[i];
		int d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		v = (v << 4) | (uint64_t)d;
	}
	*out = v;
	return 0;
}

static int parse_seconds(const char *s, double *out)
{
	char *end;
	errno = 0;
	*out = strtod(s, &end);
	return (errno || end == s || *end || *out < 0) ? -1 : 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: traced TRACE_ID(32 hex) SPAN_ID(16 hex) SECONDS [DELAY]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	uint64_t hi, lo, span;
	double seconds, delay = 0;

	if (argc < 4 || argc > 5)
		usage();
	if (strlen(argv[1]) != 32 || parse_hex(argv[1], 0, 16, &hi) ||
	    parse_hex(argv[1], 16, 16, &lo) || (hi == 0 && lo == 0)) {
		fprintf(stderr, "traced: bad trace id %s (32 hex digits, not all zero)\n", argv[1]);
		usage();
	}
	if (strlen(argv[2]) != 16 || parse_hex(argv[2], 0, 16, &span)) {
		fprintf(stderr, "traced: bad span id %s (16 hex digits)\n", argv[2]);
		usage();
	}
	if (parse_seconds(argv[3], &seconds) || (argc == 5 && parse_seconds(argv[4], &delay)))
		usage();

	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	if (delay > 0) {
		struct timespec ts = { (time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9) };
		nanosleep(&ts, NULL);
	}

	hawk_trace_context_set(hi, lo, span, 1);
	c_traced_work(seconds);
	hawk_trace_context_set(0, 0, 0, 0);
	c_untraced_work(seconds);
	return 0;
}
