/*
 * A stand-in for a C library whose syslog functions call each other, as glibc's did before
 * 2.34 or so (syslog and __syslog_chk called __vsyslog_chk; vsyslog jumped to it): dt's uprobe
 * tests probe this file with `preset = "syslog"` to check that each application call is
 * counted once whatever the library does inside.
 *
 *   syslog, __syslog_chk  call __vsyslog_chk (a nested call: it returns into them);
 *   vsyslog               jumps to __vsyslog_chk (a tail call: same stack pointer and return
 *                         address at both entries).
 *
 * Built with: gcc -O2 -shared -fPIC -o libfakelog.so fakelog.c
 */
#include <stdarg.h>
#include <stdio.h>

volatile unsigned long fake_delivered;

void __vsyslog_chk(int pri, int flag, const char *fmt, va_list ap) {
    char buf[512];
    (void)pri;
    (void)flag;
    vsnprintf(buf, sizeof buf, fmt, ap);
    fake_delivered++;
}

void syslog(int pri, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    __vsyslog_chk(pri, -1, fmt, ap);
    va_end(ap);
}

void __syslog_chk(int pri, int flag, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    __vsyslog_chk(pri, flag, fmt, ap);
    va_end(ap);
}

/* vsyslog(pri, fmt, ap) -> __vsyslog_chk(pri, -1, fmt, ap), as a jump. */
__asm__(".text\n"
        ".globl vsyslog\n"
        ".type vsyslog, @function\n"
        "vsyslog:\n"
        "    movq %rdx, %rcx\n"
        "    movq %rsi, %rdx\n"
        "    movl $-1, %esi\n"
        "    jmp __vsyslog_chk@PLT\n"
        ".size vsyslog, .-vsyslog\n");

/* The rest of the family a program may use. */
void openlog(const char *ident, int option, int facility) {
    (void)ident;
    (void)option;
    (void)facility;
}

int setlogmask(int mask) {
    return mask;
}
