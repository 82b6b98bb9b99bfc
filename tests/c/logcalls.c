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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

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
