/*
 * An application with a logging function of its own, log_write(level, msg), that dt probes
 * with a custom [[probe]] (symbol = "log_write", severity_arg = 0, message_arg = 1).
 *
 * usage: applog N   print "ready" and wait for a line on stdin; then for i < N call
 *                   log_write(i % 4, ...) with levels 0 debug, 1 info, 2 warning, 3 error;
 *                   print "done".
 */
#include <stdio.h>
#include <stdlib.h>

volatile unsigned long written;

__attribute__((noinline, noipa)) void log_write(int level, const char *msg) {
    (void)level;
    (void)msg;
    written++;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1;
    static const char *messages[4] = {
        "cache miss for key 42",
        "request served",
        "slow response: 900 ms",
        "upstream timeout, giving up",
    };
    char line[64];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 2;
    for (long i = 0; i < n; i++)
        log_write((int)(i % 4), messages[i % 4]);
    printf("done\n");
    fflush(stdout);
    return 0;
}
