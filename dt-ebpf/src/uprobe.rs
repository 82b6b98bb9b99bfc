//! uprobe: count and capture calls of log functions (syslog(3), an application's own
//! `log_write(level, msg)`) at their source.
//!
//! `dt_uprobe` (or, with the agent's `uprobe_fault_in`, `dt_uprobe_sleepable`) is attached
//! at the entry of every probed function, each attachment with a BPF cookie that
//! indexes `PROBE_ENTRIES` (see dt-ebpf-common's `probe` module). For one call it:
//! 1. finds its entry and the uprobe rules of the active rule set slot (both stamped with the
//!    active generation, else the call is ignored);
//! 2. ignores calls the probed library makes into its own family: a call whose return address
//!    lies inside one of the family's functions (a nested call, e.g. an old glibc's `syslog`
//!    calling `__vsyslog_chk`), or a jump from one family function into another that leaves the
//!    stack pointer and return address as they were (a tail call, e.g. an old glibc's `vsyslog`);
//! 3. takes the CPU's guard (a call that finds it taken, because the kernel preempted another
//!    call's evaluation on this CPU, is counted as `preempted` and not evaluated), reads the
//!    severity argument and maps it, and copies the message (a `char *` argument, or
//!    when that is exactly `"%s"`, the string it prints) into per-CPU scratch, bounded. The
//!    sleepable program first faults in a page of the message the process has not touched yet
//!    (a literal in its executable, typical of its first calls), which the other cannot wait for;
//! 4. evaluates the rules in order: `count` counts; `capture` counts and sends the call, once,
//!    into the `PROBE_EVENTS` ring buffer (a full buffer is counted as `capture_lost`).
//!
//! `dt_uprobe_skip` is never attached: the agent loads it once at start to learn whether this
//! kernel lets a uprobe program skip the probed call (it writes the registers to return at once).
//!
//! Register access is x86-64's (`pt_regs`).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{bpf_copy_from_user, bpf_get_attach_cookie, bpf_loop, bpf_probe_read_user_str},
    },
    macros::{map, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use dt_ebpf_common::{
    AC_OUT, ACTION_CAPTURE, ACTION_DROP, ACTION_TRIGGER, MAX_AC_STATES, MAX_CONDS,
    uprobe::{
        ARG_NONE, COMM_LEN, CommKey, ENTRY_STATIC_SERVICE, EV_FROM_ARG, EV_TRUNCATED,
        EV_UNREADABLE, MAX_FAMILY, MAX_PROBE_ENTRIES, MAX_PROBE_RULES, MAX_PROBES, MAX_SEV_PAIRS,
        PROBE_MSG_LEN, PROBE_RING_BYTES, PROBE_TAIL_ENTRIES, PRS_BODY, PRS_CAPTURE, ProbeEntry,
        ProbeEvent, ProbeFaults, ProbeGuard, ProbeRuleSet, ProbeTotals, SEV_DIRECT, SEV_TABLE,
        TailMark,
    },
};

use crate::{
    dynamic,
    maps::{AC_FLAT, CONTROL, RULE_COUNTERS, STATE_SCRATCH},
};

/// The uprobe rules of both rule set slots.
#[map]
pub static PROBE_RULES: Array<ProbeRuleSet> = Array::with_max_entries(2, 0);

/// How each attached function's calls are read, by slot: `slot * MAX_PROBE_ENTRIES + cookie`.
#[map]
pub static PROBE_ENTRIES: Array<ProbeEntry> = Array::with_max_entries(2 * MAX_PROBE_ENTRIES, 0);

/// Process names equal to a rule's `service`, by slot → service bits (probes without a
/// `service` of their own).
#[map]
pub static PROBE_COMMS: HashMap<CommKey, u64> = HashMap::with_max_entries(2 * MAX_CONDS as u32, 0);

/// The last probed call of each thread (`pid_tgid`), to recognise tail calls.
#[map]
pub static PROBE_TAILS: LruHashMap<u64, TailMark> =
    LruHashMap::with_max_entries(PROBE_TAIL_ENTRIES, 0);

/// The call being evaluated, per CPU. A uprobe program runs with migration off, so one run
/// stays on its CPU; another run on that CPU can come while this one sleeps (only the first
/// pass of the sleepable program does, and a pass that slept is done again, see `on_call`) or,
/// under the kernel's `preempt=full` or `lazy`, while it is preempted. `PROBE_GUARD` keeps
/// the second from using the scratch (and the counters) the first is in the middle of.
#[map]
pub static PROBE_SCRATCH: PerCpuArray<ProbeEvent> = PerCpuArray::with_max_entries(1, 0);

/// Which thread is evaluating a call on this CPU, and the calls that found it taken (see
/// `ProbeGuard`; not pinned).
#[map]
pub static PROBE_GUARD: PerCpuArray<ProbeGuard> = PerCpuArray::with_max_entries(1, 0);

/// The sleepable program's faults (see `ProbeFaults`).
#[map]
pub static PROBE_FAULTS: PerCpuArray<ProbeFaults> = PerCpuArray::with_max_entries(1, 0);

/// Captured calls, to the agent.
#[map]
pub static PROBE_EVENTS: RingBuf = RingBuf::with_byte_size(PROBE_RING_BYTES, 0);

/// Whole-hook counters.
#[map]
pub static PROBE_TOTALS: PerCpuArray<ProbeTotals> = PerCpuArray::with_max_entries(1, 0);

/// The probe with `uprobe_fault_in`, a sleepable uprobe (kernel 6.0 on): it may fault in the
/// message's pages.
#[uprobe(sleepable)]
pub fn dt_uprobe_sleepable(ctx: ProbeContext) -> u32 {
    on_call::<true>(&ctx);
    0
}

/// The probe otherwise: a message on a page the process has not touched yet is unreadable.
#[uprobe]
pub fn dt_uprobe(ctx: ProbeContext) -> u32 {
    on_call::<false>(&ctx);
    0
}

/// Loaded once by the agent, never attached: whether the verifier lets a uprobe program write
/// the registers, which is what skipping a call takes (return 0 to the caller at once:
/// `rax = 0`, `rip = [rsp]`, `rsp += 8`).
#[uprobe]
pub fn dt_uprobe_skip(ctx: ProbeContext) -> u32 {
    let regs = ctx.regs;
    unsafe {
        let sp = (*regs).rsp;
        if let Ok(ret) = bpf_probe_read_user(sp as *const u64) {
            (*regs).rax = 0;
            (*regs).rip = ret;
            (*regs).rsp = sp + 8;
        }
    }
    0
}

/// One call. The sleepable program (`SLEEPABLE`) makes a first pass that may fault in a page
/// of the message the process has not touched yet, the only place it sleeps; when it did, it
/// stops there (nothing counted yet) and a second pass, which does not fault, does the call
/// from the start: the rule set, the entry and the message are read again after the sleep, so
/// a rule set replaced or a rip cord pulled meanwhile is seen, and what another call on this
/// CPU wrote to the per-CPU scratch meanwhile is overwritten.
#[inline(always)]
fn on_call<const SLEEPABLE: bool>(ctx: &ProbeContext) {
    // The call's time: before any wait for a page.
    let time_ns = unsafe { bpf_ktime_get_ns() };
    let Some(guard) = PROBE_GUARD.get_ptr_mut(0) else {
        return;
    };
    let mut faults = Faults {
        tries: 0,
        pages: 0,
        ns: 0,
        guard,
        owner: bpf_get_current_pid_tgid(),
        lost: false,
    };
    if pass::<SLEEPABLE>(ctx, time_ns, &mut faults) {
        pass::<false>(ctx, time_ns, &mut faults);
        // Last, just before the run ends and the kernel adds it to the program's run time:
        // the agent reads the run time first, then these, so what it subtracts is never less
        // than the waits in the run time it read.
        count_faults(&faults);
    }
}

/// One pass over a call; `true` when it tried to fault a page in and stopped (only with
/// `FAULT_IN`; what it did is in `faults`).
#[inline(always)]
fn pass<const FAULT_IN: bool>(ctx: &ProbeContext, time_ns: u64, faults: &mut Faults) -> bool {
    let Some(control) = CONTROL.get(0) else {
        return false;
    };
    if control.enabled == 0 {
        return false;
    }
    let slot = control.active_slot();
    let generation = control.active_generation();
    let id = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    if id >= MAX_PROBE_ENTRIES as u64 {
        return false;
    }
    let id = id as u32;
    let Some(entry) = PROBE_ENTRIES.get(slot * MAX_PROBE_ENTRIES + id) else {
        return false;
    };
    if entry.generation != generation {
        // Attached for a rule set that is not (or no longer) the active one.
        return false;
    }
    let Some(rs) = PROBE_RULES.get(slot) else {
        return false;
    };
    if rs.generation != generation {
        return false;
    }
    let regs = ctx.regs;
    let (sp, ip) = unsafe { ((*regs).rsp, (*regs).rip) };
    // At a function's first instruction, the return address is on top of the stack.
    let ra = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    // (A second pass finds the same mark: not a tail call. The marks are per thread.)
    if in_family(entry, ip, ra) || tail_call(id, entry.probe as u32, sp, ra) {
        if let Some(totals) = PROBE_TOTALS.get_ptr_mut(0) {
            // SAFETY: this CPU's entry; atomically, as the guard is not held.
            dynamic::atomic_add(unsafe { ptr::addr_of_mut!((*totals).nested) }, 1);
        }
        return false;
    }
    // From here on this CPU's scratch and counters are used: only with the guard.
    if !take(faults) {
        // SAFETY: this CPU's entry.
        dynamic::atomic_add(unsafe { ptr::addr_of_mut!((*faults.guard).preempted) }, 1);
        return false;
    }
    faults.lost = false;
    let tried = guarded::<FAULT_IN>(ctx, time_ns, faults, slot, id, entry, rs);
    if !faults.lost {
        give_back(faults);
    }
    tried
}

/// Takes this CPU's guard for the calling thread, if no other call (preempted, or asleep in a
/// fault-in that did not give it back) has it.
#[inline(always)]
fn take(faults: &Faults) -> bool {
    // SAFETY: a field of this CPU's map value.
    let owner = unsafe { ptr::addr_of_mut!((*faults.guard).owner) };
    dynamic::compare_exchange(owner, 0, faults.owner)
}

/// Gives this CPU's guard back, if the calling thread has it.
#[inline(always)]
fn give_back(faults: &Faults) {
    // SAFETY: as in `take`.
    let owner = unsafe { ptr::addr_of_mut!((*faults.guard).owner) };
    dynamic::compare_exchange(owner, faults.owner, 0);
}

/// The rest of [`pass`], with the guard held (`faults.lost`: given back and not had again).
#[inline(always)]
fn guarded<const FAULT_IN: bool>(
    ctx: &ProbeContext,
    time_ns: u64,
    faults: &mut Faults,
    slot: u32,
    id: u32,
    entry: &ProbeEntry,
    rs: &ProbeRuleSet,
) -> bool {
    let Some(totals) = PROBE_TOTALS.get_ptr_mut(0) else {
        return false;
    };
    let totals = unsafe { &mut *totals };
    let regs = ctx.regs;
    let Some(ev) = PROBE_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let ev = unsafe { &mut *ev };
    let args = Args::read(regs);
    if rs.flags & (PRS_BODY | PRS_CAPTURE) != 0 {
        // First: the sleepable program may sleep here, and only here.
        read_message::<FAULT_IN>(entry, &args, ev, faults);
        if FAULT_IN && faults.tries > 0 {
            return true;
        }
        totals.calls += 1;
        if ev.flags & EV_UNREADABLE != 0 {
            totals.unreadable += 1;
        }
        if ev.flags & EV_TRUNCATED != 0 {
            totals.truncated += 1;
        }
    } else {
        totals.calls += 1;
        // No rule looks at the message: not read.
        ev.msg[0] = 0;
        ev.msg_len = 0;
        ev.flags = 0;
    }
    ev.time_ns = time_ns;
    ev.pid_tgid = bpf_get_current_pid_tgid();
    ev.entry = id;
    ev.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    ev.severity = severity(entry, &args);
    let body = if rs.flags & PRS_BODY != 0 {
        body_bits(ev, slot)
    } else {
        0
    };
    let service = if entry.flags & ENTRY_STATIC_SERVICE != 0 {
        entry.service_bits
    } else {
        let key = CommKey {
            slot,
            comm: ev.comm,
        };
        unsafe { PROBE_COMMS.get(key) }.copied().unwrap_or(0)
    };
    evaluate(rs, entry.probe, ev, body, service, totals);
    false
}

/// Adds one call's faults to this CPU's `PROBE_FAULTS` (atomically: the guard is not held).
#[inline(always)]
fn count_faults(faults: &Faults) {
    if let Some(f) = PROBE_FAULTS.get_ptr_mut(0) {
        // SAFETY: this CPU's entry.
        unsafe {
            dynamic::atomic_add(ptr::addr_of_mut!((*f).pages), faults.pages);
            dynamic::atomic_add(ptr::addr_of_mut!((*f).ns), faults.ns);
        }
    }
}

/// Pages one call tried to fault in, those it did, and the time it took; this CPU's guard, the
/// calling thread (its owner while it evaluates), and whether a pass gave the guard back to
/// sleep and could not have it again.
struct Faults {
    tries: u64,
    pages: u64,
    ns: u64,
    guard: *mut ProbeGuard,
    owner: u64,
    lost: bool,
}

/// Whether the call returns into one of the probe's family functions: the library calling
/// itself, not the application. Addresses are compared in the file's ELF address space: the
/// load bias is the distance from the function's ELF address to where it runs, which is a whole
/// number of pages (rounded, so that `ip` may point at or just past the probed instruction).
#[inline(always)]
fn in_family(entry: &ProbeEntry, ip: u64, ra: u64) -> bool {
    if ra == 0 {
        return false;
    }
    let bias = ip.wrapping_sub(entry.sym_addr).wrapping_add(0x800) & !0xfff;
    let at = ra.wrapping_sub(bias);
    let mut i = 0;
    while i < MAX_FAMILY {
        if let Some(r) = entry.ranges.get(i)
            && at >= r.start
            && at < r.end
        {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether this call is a family function jumping into another (a tail call): the thread's last
/// probed call had the same stack pointer and return address, through another entry of the same
/// probe. Otherwise this call becomes the thread's last.
#[inline(always)]
fn tail_call(id: u32, probe: u32, sp: u64, ra: u64) -> bool {
    let key = bpf_get_current_pid_tgid();
    if let Some(m) = PROBE_TAILS.get_ptr_mut(key) {
        // Only this thread reads and writes its own mark.
        let m = unsafe { &mut *m };
        if m.sp == sp && m.ra == ra && m.probe == probe {
            if m.entry != id {
                return true;
            }
            // The same call site again (a loop): the mark already says so.
            return false;
        }
        m.sp = sp;
        m.ra = ra;
        m.entry = id;
        m.probe = probe;
        return false;
    }
    let mark = TailMark {
        sp,
        ra,
        entry: id,
        probe,
    };
    let _ = PROBE_TAILS.insert(key, mark, 0);
    false
}

/// The six integer argument registers of the call.
#[derive(Copy, Clone)]
struct Args {
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
}

impl Args {
    /// Reads the registers once, each at its constant offset of the context (the verifier
    /// refuses a context access at a computed offset, which is what picking a register by
    /// index would otherwise compile to).
    #[inline(always)]
    fn read(regs: *const pt_regs) -> Args {
        unsafe {
            Args {
                a0: ptr::read_volatile(ptr::addr_of!((*regs).rdi)),
                a1: ptr::read_volatile(ptr::addr_of!((*regs).rsi)),
                a2: ptr::read_volatile(ptr::addr_of!((*regs).rdx)),
                a3: ptr::read_volatile(ptr::addr_of!((*regs).rcx)),
                a4: ptr::read_volatile(ptr::addr_of!((*regs).r8)),
                a5: ptr::read_volatile(ptr::addr_of!((*regs).r9)),
            }
        }
    }

    /// Argument `n` (0-5), or 0.
    #[inline(always)]
    fn get(&self, n: u8) -> u64 {
        match n {
            0 => self.a0,
            1 => self.a1,
            2 => self.a2,
            3 => self.a3,
            4 => self.a4,
            5 => self.a5,
            _ => 0,
        }
    }
}

/// The call's OTLP SeverityNumber, by the entry's severity mapping.
#[inline(always)]
fn severity(entry: &ProbeEntry, args: &Args) -> u8 {
    match entry.sev_mode {
        SEV_DIRECT => {
            // An `int`: only the low 32 bits of the register are the argument.
            let v = args.get(entry.sev_arg) as u32 as i32;
            if (1..=24).contains(&v) { v as u8 } else { 0 }
        }
        SEV_TABLE => {
            let mut v = args.get(entry.sev_arg) as u32;
            if entry.sev_mask != 0 {
                v &= entry.sev_mask;
            }
            let v = v as i32;
            let n = entry.n_pairs as usize;
            let mut i = 0;
            while i < MAX_SEV_PAIRS {
                if i >= n {
                    break;
                }
                if let Some(p) = entry.pairs.get(i)
                    && p.value == v
                {
                    return p.severity;
                }
                i += 1;
            }
            entry.sev_default
        }
        _ => entry.sev_default,
    }
}

/// x86-64's `va_list` element (`__va_list_tag`).
#[repr(C)]
struct VaList {
    gp_offset: u32,
    fp_offset: u32,
    overflow_arg_area: u64,
    reg_save_area: u64,
}

/// The first integer/pointer argument of the `va_list` at `ap`, or 0.
#[inline(always)]
fn va_first(ap: u64) -> u64 {
    if ap == 0 {
        return 0;
    }
    let Ok(va) = (unsafe { bpf_probe_read_user(ap as *const VaList) }) else {
        return 0;
    };
    // Six general-purpose registers of 8 bytes are saved first; past them, the stack.
    let at = if va.gp_offset < 48 {
        va.reg_save_area.wrapping_add(va.gp_offset as u64)
    } else {
        va.overflow_arg_area
    };
    unsafe { bpf_probe_read_user(at as *const u64) }.unwrap_or(0)
}

/// Copies the NUL-terminated string at `p` into `ev.msg` (bounded); its length with the NUL, or
/// 0 when it cannot be read.
///
/// `SLEEPABLE`: a read that fails because a page of the string is not mapped in the process yet
/// (a literal in a page of its executable it has not read) faults that page in and reads again:
/// the string's first page, then, when the string goes on past that page's end (the read
/// stopped there), the next one; every byte touched is one a function reading the string
/// reads. Any try to fault in makes `on_call` do the call again in a pass that does not fault.
#[inline(always)]
fn read_str<const SLEEPABLE: bool>(ev: &mut ProbeEvent, p: u64, faults: &mut Faults) -> u64 {
    if p == 0 {
        return 0;
    }
    let mut n = read_str_now(ev, p);
    if SLEEPABLE {
        let mut tries = 0;
        while n == 0 && tries < 2 {
            tries += 1;
            let at = if unsafe { bpf_probe_read_user(p as *const u8) }.is_ok() {
                // The first page is there: the string ran into the next one.
                let next_page = (p | 0xfff).wrapping_add(1);
                if next_page.wrapping_sub(p) >= PROBE_MSG_LEN as u64 {
                    // The read did not reach it: not a page missing.
                    break;
                }
                next_page
            } else {
                p
            };
            let mut byte = 0u8;
            // Asleep, the guard is given back: calls on this CPU meanwhile are evaluated.
            give_back(faults);
            let t0 = unsafe { bpf_ktime_get_ns() };
            let r = unsafe {
                bpf_copy_from_user(ptr::from_mut(&mut byte).cast(), 1, at as *const c_void)
            };
            faults.tries += 1;
            // Not mapped at all (`r` not 0) is a quick failure, on the CPU: not a wait.
            if r == 0 {
                faults.pages += 1;
                faults.ns += unsafe { bpf_ktime_get_ns() }.wrapping_sub(t0);
            }
            if !take(faults) {
                // Another call has it (preempted while it evaluates): this pass stops here,
                // without the scratch; the next pass is the call's.
                faults.lost = true;
                return 0;
            }
            if r != 0 {
                break;
            }
            n = read_str_now(ev, p);
        }
    }
    n
}

/// One read of the string at `p` (not 0) that does not fault pages in.
#[inline(always)]
fn read_str_now(ev: &mut ProbeEvent, p: u64) -> u64 {
    let n = unsafe {
        bpf_probe_read_user_str(
            ev.msg.as_mut_ptr().cast(),
            PROBE_MSG_LEN as u32,
            p as *const c_void,
        )
    };
    if n <= 0 { 0 } else { n as u64 }
}

/// Fills `ev.msg`, `msg_len` and `flags`.
#[inline(always)]
fn read_message<const SLEEPABLE: bool>(
    entry: &ProbeEntry,
    args: &Args,
    ev: &mut ProbeEvent,
    faults: &mut Faults,
) {
    let mut flags = 0;
    let mut p = args.get(entry.msg_arg);
    let mut n = read_str::<SLEEPABLE>(ev, p, faults);
    if SLEEPABLE && faults.lost {
        return;
    }
    if n == 3 && ev.msg[0] == b'%' && ev.msg[1] == b's' {
        // `"%s"`: what is logged is the string argument it formats.
        let q = if entry.str_arg != ARG_NONE {
            args.get(entry.str_arg)
        } else if entry.va_arg != ARG_NONE {
            va_first(args.get(entry.va_arg))
        } else {
            0
        };
        if q != 0 {
            p = q;
            n = read_str::<SLEEPABLE>(ev, p, faults);
            if SLEEPABLE && faults.lost {
                return;
            }
            flags |= EV_FROM_ARG;
        }
    }
    if n == 0 {
        ev.msg[0] = 0;
        ev.msg_len = 0;
        ev.flags = flags | EV_UNREADABLE;
        return;
    }
    ev.msg_len = (n - 1) as u16;
    if n >= PROBE_MSG_LEN as u64 {
        // The buffer is full: the string went on unless its next byte is the NUL.
        let next = unsafe { bpf_probe_read_user((p + PROBE_MSG_LEN as u64 - 1) as *const u8) };
        if next != Ok(0) {
            flags |= EV_TRUNCATED;
        }
    }
    ev.flags = flags;
}

/// The Aho-Corasick scan of a message (bpf_loop context).
#[repr(C)]
struct ScanCtx {
    ev: *const ProbeEvent,
    slot: u32,
    state: u32,
    len: u32,
    _pad: u32,
    bits: u64,
}

extern "C" fn scan_cb(i: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut ScanCtx) };
    if i >= c.len as u64 {
        return 1;
    }
    let Some(t) = AC_FLAT.get(c.slot) else {
        return 1;
    };
    let b = unsafe { (*c.ev).msg[(i as usize) & (PROBE_MSG_LEN - 1)] } as u32;
    let next = t.next[((c.state << 8 | b) & (MAX_AC_STATES * 256 - 1)) as usize];
    c.state = (next & !AC_OUT) as u32;
    c.bits |= t.out[(c.state & (MAX_AC_STATES - 1)) as usize];
    0
}

/// The `body_contains` bits of the message: the slot's automaton (flattened, as the OTLP walk's
/// body scan reads it), the bits of every state it passes through.
#[inline(always)]
fn body_bits(ev: &ProbeEvent, slot: u32) -> u64 {
    let mut c = ScanCtx {
        ev,
        slot,
        state: 0,
        len: ev.msg_len as u32,
        _pad: 0,
        bits: 0,
    };
    unsafe {
        bpf_loop(
            PROBE_MSG_LEN as u32,
            scan_cb as *mut c_void,
            ptr::from_mut(&mut c).cast(),
            0,
        );
    }
    c.bits
}

/// Runs the rules over one call and counts.
#[inline(always)]
fn evaluate(
    rs: &ProbeRuleSet,
    probe: u8,
    ev: &ProbeEvent,
    body: u64,
    service: u64,
    totals: &mut ProbeTotals,
) {
    if probe as usize >= MAX_PROBES {
        return;
    }
    let bit = 1u64 << probe;
    let sev = ev.severity;
    let n = rs.n_rules as usize;
    // The states as they are when the call's evaluation begins.
    let Some(scratch) = STATE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, for this run only.
    let scratch = unsafe { &mut *scratch };
    dynamic::states_on(rs.states, &mut scratch.states);
    let states = unsafe { ptr::read_volatile(&scratch.states) };
    // Trigger rules matched (their indexes), fired after every rule was evaluated.
    unsafe { ptr::write_volatile(&mut scratch.n_fires, 0) };
    // 0: not tried; 1: in the ring buffer; 2: the ring buffer was full.
    let mut sent = 0u8;
    let mut i = 0usize;
    while i < MAX_PROBE_RULES {
        if i >= n {
            break;
        }
        let Some(r) = rs.rules.get(i) else {
            break;
        };
        i += 1;
        if !r.matches(bit, sev, body, service, states) {
            continue;
        }
        let Some(c) = RULE_COUNTERS.get_ptr_mut(r.slot as u32) else {
            continue;
        };
        let c = unsafe { &mut *c };
        c.matched += 1;
        if r.action == ACTION_CAPTURE {
            if sent == 0 {
                sent = if PROBE_EVENTS.output::<ProbeEvent>(ev, 0).is_ok() {
                    totals.captured += 1;
                    1
                } else {
                    totals.capture_lost += 1;
                    2
                };
            }
            if sent == 1 {
                c.kept += 1;
            }
        } else if r.action == ACTION_TRIGGER {
            // SAFETY: fields of this CPU's scratch (volatile: nothing carried in registers).
            unsafe {
                let n = ptr::read_volatile(&scratch.n_fires) as usize;
                if n < MAX_CALL_FIRES {
                    ptr::write_volatile(&mut scratch.fires[n], (i - 1) as u8);
                    ptr::write_volatile(&mut scratch.n_fires, n as u32 + 1);
                }
            }
        } else if r.action == ACTION_DROP {
            // Never installed where the kernel cannot skip a call (the agent refuses it).
            break;
        }
    }
    let mut k = 0usize;
    while k < MAX_CALL_FIRES {
        // SAFETY: as above.
        if k >= unsafe { ptr::read_volatile(&scratch.n_fires) } as usize {
            break;
        }
        let f = unsafe { ptr::read_volatile(&scratch.fires[k]) };
        if let Some(r) = rs.rules.get(f as usize % MAX_PROBE_RULES) {
            dynamic::trigger(r.slot, &r.trigger);
        }
        k += 1;
    }
}

/// Trigger rules that may fire on one call.
const MAX_CALL_FIRES: usize = 4;
