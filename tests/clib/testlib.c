/* The native library the library tests build with the system C compiler (cc). It covers
 * every marshalling case of the manifest format, plus a crash, an abort, an exit, a hang
 * and errno. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct point { int32_t x; int32_t y; char label[8]; };
enum mode { MODE_OFF = 0, MODE_ON = 1, MODE_BURST = 7 };
struct dev { int id; int value; };

static int open_devices = 0;

int add(int a, int b) { return a + b; }
double scale(double v, double k) { return v * k; }
int mode_value(enum mode m) { return (int)m * 10; }

/* Fills len bytes with value; returns the count. */
int fill(uint8_t *buf, size_t len, uint8_t value) { memset(buf, value, len); return (int)len; }

/* Sum of the bytes, modulo 65536. */
int checksum(const uint8_t *buf, size_t len) {
    unsigned sum = 0;
    for (size_t i = 0; i < len; i++) sum += buf[i];
    return (int)(sum % 65536);
}

/* In place: every byte incremented. */
void bump(uint8_t *buf, size_t len) { for (size_t i = 0; i < len; i++) buf[i]++; }

/* 32-bit words out: squares of 0..n-1. */
void squares(int32_t *out, int n) { for (int i = 0; i < n; i++) out[i] = i * i; }

/* A struct out-param and a struct by value. */
int get_point(int x, int y, struct point *out) {
    out->x = x; out->y = y; memcpy(out->label, "pt", 3); return x + y;
}
int point_sum(struct point p) { return p.x + p.y; }
void shift(struct point *p, int dx) { p->x += dx; p->y += dx; }

/* Strings. */
size_t name_length(const char *name) { return strlen(name); }
const char *version(void) { return "testlib 1.2"; }

/* Opaque handles and a counter of those still open. */
struct dev *dev_open(int id) {
    struct dev *d = malloc(sizeof *d);
    if (!d) return NULL;
    d->id = id; d->value = 0; open_devices++;
    return d;
}
int dev_set(struct dev *d, int v) { d->value = v; return d->id; }
int dev_get(struct dev *d) { return d->value; }
void dev_close(struct dev *d) { if (d) { open_devices--; free(d); } }
int open_count(void) { return open_devices; }

/* A handle through an out-parameter: 0 and *out set, or -EINVAL and *out untouched. */
int dev_open2(int id, struct dev **out) {
    if (id < 0) return -EINVAL;
    *out = dev_open(id);
    return *out ? 0 : -ENOMEM;
}

/* A size pointer: *len is the capacity in, the bytes written out (at most 10). */
int dev_read2(uint8_t *buf, size_t *len) {
    size_t n = *len < 10 ? *len : 10;
    memcpy(buf, "0123456789", n);
    *len = n;
    return (int)n;
}

/* A buggy library: fills the whole buffer, then claims far more than its capacity
 * (how 0: 4096 more bytes, how 1: SIZE_MAX). */
int dev_read_lie(uint8_t *buf, size_t *len, int how) {
    memset(buf, 0x77, *len);
    *len = how ? SIZE_MAX : *len + 4096;
    return 0;
}

/* Failures: errno, a segfault, an abort, an exit, a hang. */
int fail_with(int code) { errno = code; return -1; }
int fail_code(int code) { errno = code; return -1; }
int crash(int how) {
    if (how == 1) { volatile int *p = (int *)(uintptr_t)8; return *p; }
    if (how == 2) abort();
    if (how == 3) _exit(3);
    return 0;
}
int hang(int seconds) { sleep((unsigned)seconds); return seconds; }
