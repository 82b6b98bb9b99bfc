/*
 * A program that logs through syslog(3) and knows nothing of dt: the target of dt's uprobe
 * tests (tests/tests/uprobe.rs), which build it with gcc in two ways:
 *   - plainly (no _FORTIFY_SOURCE): its calls go to syslog() and vsyslog();
 *   - with -O2 -D_FORTIFY_SOURCE=2: glibc's headers turn them into __syslog_chk() and
 *     __vsyslog_chk().
 *
 * usage:
 *   logcalls plan REPS   print "ready", wait for a line on stdin, make the plan's calls REPS
 *                        times, print "done"
 *   logcalls burst N     N calls syslog(LOG_ERR, "%s", "burst: timeout ...") at once
 *   logcalls edge        messages at the bound: 255 bytes, 300 bytes, and a NULL "%s" argument
 *   logcalls bench N     time N calls of syslog(LOG_INFO, ...) that the log mask filters, and
 *                        print "ns_per_call <float>"
 *   logcalls cold FILE   three calls whose messages lie on pages the program has never read
 *                        (a file it wrote, mapped, never touched): a format, a "%s" format and
 *                        its argument each on its own page, and an argument that runs from the
 *                        end of one such page into the next
 *   logcalls cold-own FILE  the same messages (the argument for the "%s" call) to a function
 *                        of the program's own, cold_log(level, msg), not to syslog
 *   logcalls stall [N]   print "ready", wait for a line; call cold_log with a message on a page
 *                        that a userfaultfd handler fills only when told: it prints "fault" when
 *                        the page is first read, waits for a line, makes N calls of cold_log
 *                        ("while stalled I") on the same CPU (the process is pinned to one),
 *                        fills the page; then "done"
 *
 * The plan, per repetition, for each priority p = 0 (LOG_EMERG) .. 7 (LOG_DEBUG):
 *   syslog (LOG_USER   | p, "plain message at priority %d", p);
 *   vsyslog(LOG_DAEMON | p, "vsyslog message at priority %d", ap(p));
 *   syslog (LOG_LOCAL0 | p, "%s", "percent-s: timeout talking to the database");
 *   vsyslog(LOG_LOCAL1 | p, "%s", ap("va_list percent-s: timeout in a va_list"));
 *
 * The log mask lets only LOG_DEBUG through, so the other calls return inside libc after the
 * probe has seen them (no EMERG message reaches a console or a logger).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static void vlog(int pri, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsyslog(pri, fmt, ap);
    va_end(ap);
}

static void plan(int reps) {
    for (int r = 0; r < reps; r++) {
        for (int p = 0; p < 8; p++) {
            syslog(LOG_USER | p, "plain message at priority %d", p);
            vlog(LOG_DAEMON | p, "vsyslog message at priority %d", p);
            syslog(LOG_LOCAL0 | p, "%s", "percent-s: timeout talking to the database");
            vlog(LOG_LOCAL1 | p, "%s", "va_list percent-s: timeout in a va_list");
        }
    }
}

#define PAGE 4096

/* File page `pgoff` of `fd` mapped read-only at `at` (MAP_FIXED), or anywhere when `at` is NULL,
 * with an inaccessible page on each side, so that it is its own mapping: the kernel maps the
 * neighbours of a faulted page only within one mapping. */
static char *map_page(int fd, long pgoff, char *at) {
    if (!at) {
        char *area = mmap(NULL, 3 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (area == MAP_FAILED)
            exit(3);
        at = area + PAGE;
    }
    char *p = mmap(at, PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, pgoff * PAGE);
    if (p == MAP_FAILED)
        exit(3);
    return p;
}

/* A logging function of the program's own, for a custom [[probe]] (message_arg = 1). */
__attribute__((noinline, noipa)) void cold_log(int level, const char *msg) {
    (void)level;
    (void)msg;
    __asm__ volatile("" ::: "memory");
}

static void cold(const char *path, int own) {
    /* File pages: 0 a format, 1 "%s", 2 its argument, 3 and 5 the two halves of a message
     * across a page end (4 is never mapped, so that 3 and 5 mapped side by side stay two
     * mappings). */
    static char file[6 * PAGE];
    strcpy(file, "cold format: timeout on a page never read");
    strcpy(file + PAGE, "%s");
    strcpy(file + 2 * PAGE, "cold argument: timeout on a page never read");
    const char *across = "cold across: a message that starts on one page never read "
                         "and ends on the next";
    size_t head = 20;
    memcpy(file + 4 * PAGE - head, across, head);
    strcpy(file + 5 * PAGE, across + head);
    FILE *f = fopen(path, "w");
    if (!f || fwrite(file, 1, sizeof file, f) != sizeof file || fclose(f) != 0)
        exit(3);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        exit(3);
    char *format = map_page(fd, 0, NULL);
    char *percent_s = map_page(fd, 1, NULL);
    char *argument = map_page(fd, 2, NULL);
    char *area = mmap(NULL, 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED)
        exit(3);
    map_page(fd, 3, area + PAGE);
    map_page(fd, 5, area + 2 * PAGE);
    if (own) {
        /* cold_log reads nothing. */
        cold_log(LOG_ERR, format);
        cold_log(LOG_ERR, argument);
        cold_log(LOG_ERR, area + 2 * PAGE - head);
        return;
    }
    /* The log mask filters LOG_ERR: syslog returns without reading the messages, so each page
     * is first read by the probe. */
    syslog(LOG_ERR, format);
    syslog(LOG_ERR, percent_s, argument);
    syslog(LOG_ERR, "%s", area + 2 * PAGE - head);
}

/* The message page of `stall`, filled by the userfaultfd handler when told, and the calls its
 * thread makes first. */
static long stall_uffd;
static long stall_calls;

static void *stall_handler(void *unused) {
    (void)unused;
    struct uffd_msg msg;
    if (read((int)stall_uffd, &msg, sizeof msg) != sizeof msg ||
        msg.event != UFFD_EVENT_PAGEFAULT)
        exit(4);
    printf("fault\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        exit(4);
    /* The other thread waits for the page in the probe, on this CPU. */
    for (long i = 0; i < stall_calls; i++) {
        char msg[48];
        snprintf(msg, sizeof msg, "while stalled %ld", i);
        cold_log(LOG_ERR, msg);
    }
    static char page[PAGE] __attribute__((aligned(PAGE)));
    strcpy(page, "stalled: a message whose page came late");
    struct uffdio_copy copy = {
        .dst = msg.arg.pagefault.address & ~(unsigned long long)(PAGE - 1),
        .src = (unsigned long)page,
        .len = PAGE,
    };
    if (ioctl((int)stall_uffd, UFFDIO_COPY, &copy) != 0)
        exit(4);
    return NULL;
}

static void stall(long calls) {
    stall_calls = calls;
    /* One CPU for both threads (the handler thread inherits it). */
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0)
        exit(3);
    stall_uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
    struct uffdio_api api = {.api = UFFD_API};
    if (stall_uffd < 0 || ioctl((int)stall_uffd, UFFDIO_API, &api) != 0)
        exit(3);
    char *area = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct uffdio_register reg = {
        .range = {.start = (unsigned long)area, .len = PAGE},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (area == MAP_FAILED || ioctl((int)stall_uffd, UFFDIO_REGISTER, &reg) != 0)
        exit(3);
    pthread_t t;
    if (pthread_create(&t, NULL, stall_handler, NULL) != 0)
        exit(3);
    char line[64];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        exit(2);
    cold_log(LOG_ERR, area);
    /* Read by the program too (a probe that does not fault pages in left it unread). */
    volatile char first = area[0];
    (void)first;
    pthread_join(t, NULL);
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "plan";
    long n = argc > 2 ? atol(argv[2]) : 1;
    openlog("dt-logcalls", 0, LOG_USER);
    setlogmask(LOG_MASK(LOG_DEBUG));
    if (strcmp(mode, "plan") == 0) {
        char line[64];
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin))
            return 2;
        plan((int)n);
    } else if (strcmp(mode, "burst") == 0) {
        for (long i = 0; i < n; i++)
            syslog(LOG_ERR, "%s", "burst: timeout talking to the database");
    } else if (strcmp(mode, "edge") == 0) {
        char msg[301];
        memset(msg, 'a', 255);
        msg[255] = 0;
        syslog(LOG_ERR, "%s", msg); /* exactly at the bound: whole */
        memset(msg, 'b', 300);
        msg[300] = 0;
        syslog(LOG_ERR, "%s", msg); /* over it: cut, flagged truncated */
        syslog(LOG_ERR, "%s", (char *)NULL); /* no string: the format is the message */
    } else if (strcmp(mode, "cold") == 0 || strcmp(mode, "cold-own") == 0) {
        if (argc < 3)
            return 2;
        cold(argv[2], strcmp(mode, "cold-own") == 0);
    } else if (strcmp(mode, "stall") == 0) {
        stall(argc > 2 ? n : 0);
    } else if (strcmp(mode, "bench") == 0) {
        for (long i = 0; i < n / 10; i++)
            syslog(LOG_INFO, "bench warm-up %ld", i);
        double t0 = now_ns();
        for (long i = 0; i < n; i++)
            syslog(LOG_INFO, "bench call %ld", i);
        double t1 = now_ns();
        printf("ns_per_call %.1f\n", (t1 - t0) / n);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    printf("done\n");
    fflush(stdout);
    return 0;
}
