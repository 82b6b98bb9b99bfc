//! The field walk: one protobuf field per step, frame ends, attribute values and body scans.
//! Each message kind's fields are checked the way prost decodes them.

use super::*;

pub(super) const WT_VARINT: u64 = 0;
pub(super) const WT_I64: u64 = 1;
pub(super) const WT_LEN: u64 = 2;
pub(super) const WT_I32: u64 = 5;

/// Bytes made readable at the start of each field: a tag and a length or value varint.
pub(super) const FIELD_READ: u32 = 20;

#[inline(always)]
pub(super) fn field_step<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
) -> Result<(), Error> {
    let f = w.frame();
    if w.pos >= f.end {
        if w.pos > f.end {
            return Err(Error::Malformed);
        }
        w.mode = MODE_END;
        return Ok(());
    }
    let tag_off = w.pos;
    if !s.ensure(tag_off, FIELD_READ) {
        return Err(Error::Unreadable);
    }
    let (tag, n) = varint(s, tag_off, f.end)?;
    let field = tag >> 3;
    let wt = tag & 7;
    // Field numbers are 1..2^29-1.
    if field == 0 || field >= 1 << 29 {
        return Err(Error::Malformed);
    }
    let at = launder(&mut w.scratch, tag_off + n);
    // Which (kind, field) pairs dt reads, and with which wire type.
    let known = known_wire_type(f.kind, field);
    if known != u64::MAX && known != wt {
        return Err(Error::Malformed);
    }
    match wt {
        WT_VARINT => {
            let (v, m) = varint(s, at, f.end)?;
            w.pos = launder(&mut w.scratch, at + m);
            on_scalar(w, f, field, Some(v));
        }
        WT_I64 => {
            if f.end - at < 8 {
                return Err(Error::Malformed);
            }
            w.pos = at + 8;
            on_scalar(w, f, field, None);
        }
        WT_I32 => {
            if f.end - at < 4 {
                return Err(Error::Malformed);
            }
            w.pos = at + 4;
            on_scalar(w, f, field, None);
        }
        WT_LEN => {
            let (len, m) = varint(s, at, f.end)?;
            let m = launder(&mut w.scratch, m);
            let start = at + m;
            if len > (f.end - start) as u64 {
                return Err(Error::Malformed);
            }
            let end = start + len as u32;
            w.pos = end;
            on_len(w, s, env, f, field, tag_off, at, m, start, end)?;
        }
        _ => return Err(Error::Malformed),
    }
    // The field was its frame's last (or it pushed an empty one): the frame ends in the next
    // step, without a step to find that out.
    if w.mode == MODE_FIELDS && w.pos == w.frame().end {
        w.mode = MODE_END;
    }
    Ok(())
}

/// The wire type of every field the OTLP logs schema defines, or `u64::MAX` for unknown fields
/// (skipped by their wire type). A known field with another wire type is malformed, as for
/// prost.
#[inline(always)]
pub(super) fn known_wire_type(kind: u8, field: u64) -> u64 {
    match (kind, field) {
        (K_REQ, 1) => WT_LEN,
        // ResourceLogs: resource, scope_logs, schema_url.
        (K_RL_SCAN | K_RL, 1..=3) => WT_LEN,
        // Resource: attributes, dropped_attributes_count, entity_refs.
        (K_RESOURCE, 1 | 3) => WT_LEN,
        (K_RESOURCE, 2) => WT_VARINT,
        // ScopeLogs: scope, log_records, schema_url.
        (K_SCOPE, 1..=3) => WT_LEN,
        // InstrumentationScope: name, version, attributes, dropped_attributes_count.
        (K_ISCOPE, 1..=3) => WT_LEN,
        (K_ISCOPE, 4) => WT_VARINT,
        // LogRecord: time_unix_nano, observed_time_unix_nano; severity_number,
        // dropped_attributes_count; flags; severity_text, body, attributes, trace_id, span_id,
        // event_name.
        (K_RECORD, 1 | 11) => WT_I64,
        (K_RECORD, 2 | 7) => WT_VARINT,
        (K_RECORD, 8) => WT_I32,
        (K_RECORD, 3 | 5 | 6 | 9 | 10 | 12) => WT_LEN,
        (K_KV, 1 | 2) => WT_LEN,
        (K_ANY, 1 | 5 | 6 | 7) => WT_LEN,
        (K_ANY, 2 | 3) => WT_VARINT,
        (K_ANY, 4) => WT_I64,
        // ArrayValue and KeyValueList: values.
        (K_ARRAY | K_KVLIST, 1) => WT_LEN,
        // EntityRef: schema_url, type, id_keys, description_keys.
        (K_ENTITY, 1..=4) => WT_LEN,
        _ => u64::MAX,
    }
}

#[inline(always)]
pub(super) fn on_scalar(w: &mut Walk, f: Frame, field: u64, v: Option<u64>) {
    match (f.kind, field) {
        (K_RECORD, 2) => {
            // An enum is an int32: decoders keep the low 32 bits of the varint.
            let v = v.unwrap_or(0) as u32 as i32 as i64;
            w.sev = if (0..=24).contains(&v) {
                v as u32
            } else {
                SEV_OUT_OF_RANGE as u32
            };
        }
        // A bool is a varint decoders read as `!= 0`; an int64 is the varint's 64 bits.
        (K_ANY, 2) => set_scalar(w, f.role, V_BOOL, (v.unwrap_or(0) != 0) as u64),
        (K_ANY, 3) => set_scalar(w, f.role, V_INT, v.unwrap_or(0)),
        (K_ANY, 4) => set_value(w, f.role, V_OTHER, 0, 0),
        _ => {}
    }
}

/// An AnyValue's `bool_value` or `int_value` (`kind` [`V_BOOL`] or [`V_INT`]).
#[inline(always)]
pub(super) fn set_scalar(w: &mut Walk, role: u8, kind: u32, num: u64) {
    set_value(w, role, kind, 0, 0);
    if role == R_KV_VALUE {
        w.val_num = num;
    }
}

#[inline(always)]
pub(super) fn set_value(w: &mut Walk, role: u8, kind: u32, off: u32, len: u32) {
    if role == R_BODY {
        w.body_kind = kind;
        w.body_off = off;
        w.body_len = len;
        // Every string occurrence is masked, so no unmasked copy stays on the wire; one inside
        // a body that is replaced whole is in its range already.
        if kind == V_STRING && len > 0 && !in_whole_body(w, off) {
            push_body(w, Span { off, len });
        }
    } else if role == R_KV_VALUE {
        w.val_kind = kind;
        w.val_off = off;
        w.val_len = len;
    }
}

/// Notes a body range `mask_body` would overwrite ([`Walk::bodies`]); more than the walk holds
/// makes a masking record pass its request through (`edit_limit`).
#[inline(always)]
fn push_body(w: &mut Walk, span: Span) {
    let n = w.n_bodies as usize;
    if n < MAX_RECORD_BODIES {
        w.bodies[n] = span;
        w.n_bodies = n as u32 + 1;
    } else {
        w.body_overflow = 1;
    }
}

/// Whether `off` is inside the last body noted, when that one is replaced whole.
#[inline(always)]
fn in_whole_body(w: &Walk, off: u32) -> bool {
    let n = w.n_bodies as usize;
    if n == 0 || n > MAX_RECORD_BODIES {
        return false;
    }
    let last = w.bodies[(n - 1) % MAX_RECORD_BODIES];
    last.len >> MASK_HDR_SHIFT != 0 && off >= last.off && off - last.off < (last.len & MASK_LEN)
}

/// A body that is not exactly one `string_value` (a number, bytes, a map, an array, several
/// fields): `mask_body` replaces its value whole with a string of `*` of the same size on the
/// wire, a string tag and a length prefix padded to fit, so that nothing of it leaves
/// readable and no length around it changes. The value is walked (and checked) as any other.
#[inline(always)]
fn whole_body(w: &mut Walk, start: u32, end: u32) {
    let n = end - start;
    if n < 2 {
        // No value (an empty AnyValue): nothing to mask.
        return;
    }
    // The tag byte and the fewest prefix bytes that leave room for the rest: the string is
    // `n - hdr` bytes, and its length fits the prefix (padded when shorter).
    let hdr = if n - 2 < 0x80 {
        2
    } else if n - 3 < 0x4000 {
        3
    } else {
        4
    };
    push_body(
        w,
        Span {
            off: start,
            len: n | hdr << MASK_HDR_SHIFT,
        },
    );
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn on_len<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
    f: Frame,
    field: u64,
    tag_off: u32,
    len_off: u32,
    len_len: u32,
    start: u32,
    end: u32,
) -> Result<(), Error> {
    match (f.kind, field) {
        (K_REQ, 1) => {
            w.svc_set = 0;
            w.svc_off = 0;
            w.svc_len = 0;
            w.svc_bits = 0;
            w.rl_has = 0;
            w.push(K_RL_SCAN, R_NONE, start, end, len_off, len_len)
        }
        (K_RL_SCAN, 1) => w.push(K_RESOURCE, R_NONE, start, end, len_off, len_len),
        (K_RESOURCE, 1) => {
            w.key_set = 0;
            w.val_kind = V_NONE;
            w.push(K_KV, R_RESOURCE_ATTR, start, end, len_off, len_len)?;
            plain_kv(w, s, env.rules(), start, end);
            Ok(())
        }
        (K_RESOURCE, 3) => w.push(K_ENTITY, R_NONE, start, end, len_off, len_len),
        (K_RL, 2) => w.push(K_SCOPE, R_NONE, start, end, len_off, len_len),
        (K_SCOPE, 1) => w.push(K_ISCOPE, R_NONE, start, end, len_off, len_len),
        (K_ISCOPE, 3) | (K_KVLIST, 1) => {
            w.push(K_KV, R_NONE, start, end, len_off, len_len)?;
            plain_kv(w, s, env.rules(), start, end);
            Ok(())
        }
        (K_SCOPE, 2) => {
            w.rec_off = tag_off;
            w.rec_end = end;
            set(&mut w.sev, 0);
            set(&mut w.body_kind, V_NONE);
            set(&mut w.attr_bits, 0);
            set(&mut w.body_bits, 0);
            set(&mut w.rec_fix, NO_FIX as u32);
            set(&mut w.rec_cand, 0);
            set(&mut w.n_redact_attrs, 0);
            set(&mut w.n_bodies, 0);
            set(&mut w.redact_overflow, 0);
            set(&mut w.body_overflow, 0);
            set(&mut w.ev_set, 0);
            set(&mut w.grp_seen, 0);
            w.push(K_RECORD, R_NONE, start, end, len_off, len_len)?;
            fast::fast_record(w, s, env, start, end);
            Ok(())
        }
        (K_RECORD, 5) => match single_string(w, s, start, end) {
            Some((off, len)) => {
                set_value(w, R_BODY, V_STRING, off, len);
                Ok(())
            }
            None => {
                whole_body(w, start, end);
                w.push(K_ANY, R_BODY, start, end, len_off, len_len)
            }
        },
        (K_RECORD, 12) => {
            // The last event_name wins.
            w.ev_off = start;
            w.ev_len = end - start;
            w.ev_set = 1;
            Ok(())
        }
        (K_RECORD, 6) => {
            w.key_set = 0;
            w.val_kind = V_NONE;
            w.kv_off = tag_off;
            w.kv_end = end;
            w.push(K_KV, R_RECORD_ATTR, start, end, len_off, len_len)?;
            plain_kv(w, s, env.rules(), start, end);
            Ok(())
        }
        (K_KV, 1) => {
            if f.role != R_NONE {
                w.key_off = start;
                w.key_len = end - start;
                w.key_set = 1;
            }
            Ok(())
        }
        (K_KV, 2) => {
            let role = if f.role == R_NONE { R_NONE } else { R_KV_VALUE };
            match single_string(w, s, start, end) {
                Some((off, len)) => {
                    set_value(w, role, V_STRING, off, len);
                    Ok(())
                }
                None => w.push(K_ANY, role, start, end, len_off, len_len),
            }
        }
        (K_ANY, 1) => {
            set_value(w, f.role, V_STRING, start, end - start);
            Ok(())
        }
        (K_ANY, 5) => {
            set_value(w, f.role, V_OTHER, 0, 0);
            w.push(K_ARRAY, R_NONE, start, end, len_off, len_len)
        }
        (K_ANY, 6) => {
            set_value(w, f.role, V_OTHER, 0, 0);
            w.push(K_KVLIST, R_NONE, start, end, len_off, len_len)
        }
        (K_ANY, 7) => {
            set_value(w, f.role, V_OTHER, 0, 0);
            Ok(())
        }
        (K_ARRAY, 1) => match single_string(w, s, start, end) {
            Some(_) => Ok(()),
            None => w.push(K_ANY, R_NONE, start, end, len_off, len_len),
        },
        _ => Ok(()),
    }
}

/// A KeyValue just pushed that is exactly a key field and a value field holding exactly one
/// `string_value`, `bool_value`, `int_value` or `double_value`, with one-byte lengths (how
/// encoders write a short attribute):
/// its key and value are taken in this step, and the frame ends in it too unless its end has
/// something to do (a lookup the rules need, or a resource attribute that may be
/// `service.name`): one step or two instead of four. Anything else is walked field by field, as
/// before; both ways set the same key and value, and the frame's end acts on them the same way.
#[inline(always)]
pub(super) fn plain_kv<S: Source>(w: &mut Walk, s: &mut S, rs: &RuleSet, start: u32, end: u32) {
    if end - start < 6 || end - start > 2 * 127 || !s.ensure(start, 2) {
        return;
    }
    if s.byte(start) != Some(0x0a) {
        return;
    }
    let Some(klen) = s.byte(start + 1) else {
        return;
    };
    if klen >= 0x80 {
        return;
    }
    let koff = start + 2;
    let vtag = koff + klen as u32;
    if vtag + 4 > end || !s.ensure(vtag, 4) {
        return;
    }
    if s.byte(vtag) != Some(0x12) {
        return;
    }
    let Some(alen) = s.byte(vtag + 1) else {
        return;
    };
    let any = vtag + 2;
    if !(2..0x80).contains(&alen) || any + alen as u32 != end {
        return;
    }
    // The AnyValue: one string, or one bool, int or double (a scalar dt does not read).
    let Some(t) = s.byte(any) else {
        return;
    };
    let (kind, soff, slen, num) = if t == 0x0a {
        let Some(slen) = s.byte(any + 1) else {
            return;
        };
        if slen >= 0x80 || any + 2 + slen as u32 != end {
            return;
        }
        (V_STRING, any + 2, slen as u32, 0)
    } else if t == 0x10 || t == 0x18 {
        // Walked field by field, the AnyValue of a scalar is a frame one deeper (a string is
        // read in place): at the deepest level, it is left to that walk, which stops there.
        if w.depth >= MAX_DEPTH || !s.ensure(any + 1, 10) {
            return;
        }
        let Ok((v, m)) = varint(s, any + 1, end) else {
            return;
        };
        if any + 1 + m != end {
            return;
        }
        if t == 0x10 {
            (V_BOOL, 0, 0, (v != 0) as u64)
        } else {
            (V_INT, 0, 0, v)
        }
    } else if t == 0x21 && any + 9 == end && w.depth < MAX_DEPTH {
        (V_OTHER, 0, 0, 0)
    } else {
        return;
    };
    let role = w.frame().role;
    let klen = klen as u32;
    if role != R_NONE {
        w.key_off = koff;
        w.key_len = klen;
        w.key_set = 1;
        set_value(w, R_KV_VALUE, kind, soff, slen);
        w.val_num = num;
    }
    let acts = match role {
        // service.name; with `[enrich]`, the keys it adds.
        R_RESOURCE_ATTR => klen == 12 || rs.enrich != 0 && (klen == 9 || klen == 11),
        R_RECORD_ATTR => {
            attr_looked_up(rs, klen, kind, slen)
                || redact_looked_up(rs, klen)
                || group_looked_up(rs, klen)
        }
        _ => false,
    };
    if acts {
        w.pos = end;
        w.mode = MODE_END;
    } else {
        end_kv(w);
    }
}

/// Whether a record attribute is looked up as the value of an `attributes` condition: some
/// rule names a key of its key's length, and its value is a string within the limits, an int
/// or a bool (value `kind`).
#[inline(always)]
pub(super) fn attr_looked_up(rs: &RuleSet, klen: u32, kind: u32, vlen: u32) -> bool {
    rs.needs & NEED_ATTRS != 0
        && (kind == V_INT
            || kind == V_BOOL
            || kind == V_STRING && vlen as usize <= MAX_ATTR_VALUE_LEN)
        && klen as usize <= MAX_ATTR_KEY_LEN
        && rs.attr_key_lens & key_len_bit(klen) != 0
}

/// Whether a record attribute's key is looked up among the keys `group_by` names.
#[inline(always)]
pub(super) fn group_looked_up(rs: &RuleSet, klen: u32) -> bool {
    rs.needs & NEED_GROUPS != 0
        && klen as usize <= MAX_ATTR_KEY_LEN
        && rs.group_key_lens & key_len_bit(klen) != 0
}

/// Keeps the value of a record attribute whose key is the `group_by` keys `bits` (indexes).
#[inline(always)]
pub(super) fn set_group_vals(w: &mut Walk, bits: u64, v: GroupVal) {
    let mut g = 0;
    while g < MAX_GROUP_KEYS {
        if bits >> g & 1 != 0 {
            w.grp[g] = v;
            let seen = get_u32(&w.grp_seen) | 1 << g;
            set(&mut w.grp_seen, seen);
        }
        g += 1;
    }
}

/// A load from memory the compiler keeps as a load.
#[inline(always)]
pub(super) fn get_u32(v: &u32) -> u32 {
    // SAFETY: a plain load of a valid `u32`.
    unsafe { core::ptr::read_volatile(v) }
}

/// The lookup kind and value length of an attribute value of `kind` (a string's length
/// `vlen`): a string's bytes, an int's 8 bytes, a bool's one.
#[inline(always)]
pub(super) fn typed_key(kind: u32, vlen: u32) -> (u8, u32) {
    match kind {
        V_INT => (STR_ATTR_INT, 8),
        V_BOOL => (STR_ATTR_BOOL, 1),
        _ => (STR_ATTR, vlen),
    }
}

/// Whether a record attribute's key is looked up among the names redact rules remove.
#[inline(always)]
pub(super) fn redact_looked_up(rs: &RuleSet, klen: u32) -> bool {
    rs.remove_keys > 0
        && klen as usize <= MAX_ATTR_KEY_LEN
        && rs.redact_key_lens & key_len_bit(klen) != 0
}

/// An AnyValue that is exactly one `string_value` field (how encoders write a string): its
/// string's span, found without walking a frame for it (three steps saved). Anything else —
/// other fields, more than one — returns `None` and is walked as usual.
#[inline(always)]
pub(super) fn single_string<S: Source>(
    w: &mut Walk,
    s: &mut S,
    start: u32,
    end: u32,
) -> Option<(u32, u32)> {
    if end - start < 2 || !s.ensure(start, 11) || s.byte(start)? != 0x0a {
        return None;
    }
    let (len, m) = varint(s, start + 1, end).ok()?;
    let off = launder(&mut w.scratch, start + 1 + m);
    if off as u64 + len != end as u64 {
        return None;
    }
    Some((off, len as u32))
}

/// Copies `len` bytes at `off` into the key buffer at `at`.
#[inline(always)]
pub(super) fn copy_into_key<S: Source>(
    w: &mut Walk,
    s: &mut S,
    off: u32,
    len: u32,
    at: u32,
) -> Result<(), Error> {
    if s.copy_into(off, len, &mut w.key.bytes, at) {
        Ok(())
    } else {
        Err(Error::Unreadable)
    }
}

#[inline(always)]
pub(super) fn clear_key<S: Source>(
    w: &mut Walk,
    s: &mut S,
    slot: u8,
    kind: u8,
    klen: u32,
    vlen: u32,
) {
    s.zero_key(&mut w.key.bytes);
    w.key._pad = 0;
    w.key.slot = slot;
    w.key.kind = kind;
    w.key.klen = klen as u8;
    w.key.vlen = vlen;
}

/// Acts on the frame that just ended, then goes back to walking its parent's fields.
#[inline(always)]
pub(super) fn end_frame<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
) -> Result<(), Error> {
    let f = w.frame();
    let slot = env.slot();
    w.mode = MODE_FIELDS;
    match f.kind {
        K_REQ => {
            w.mode = MODE_DONE;
            return Ok(());
        }
        K_RL_SCAN => {
            // The resource is known: look its service name up, then walk the ScopeLogs.
            // The whole request is still walked (and so checked), but strings no rule looks at
            // are not looked up.
            let needs = env.rules().needs;
            w.svc_bits = 0;
            if needs & NEED_SERVICE != 0 && w.svc_set != 0 && w.svc_len as usize <= MAX_SERVICE_LEN
            {
                clear_key(w, s, slot, STR_SERVICE, 0, w.svc_len);
                copy_into_key(w, s, w.svc_off, w.svc_len, 0)?;
                w.svc_bits = env.lookup(&w.key);
            }
            // `[enrich]`: the attributes the Resource lacks go at the ResourceLogs' end.
            let missing = env.rules().enrich & w.enrich_have & !w.rl_has;
            if missing != 0 {
                enrich::plan_insert(w, f, w.depth, missing)?;
            }
            let d = (w.depth & DEPTH_MASK) as usize;
            w.frames[d].kind = K_RL;
            w.pos = f.start;
            return Ok(());
        }
        K_KV => {
            let is_string = w.val_kind == V_STRING;
            let kind = w.val_kind;
            if w.key_set != 0 && f.role == R_RESOURCE_ATTR {
                if is_service_name(s, w.key_off, w.key_len)? {
                    // The last service.name wins; a non-string one means no service.
                    w.svc_set = is_string as u32;
                    w.svc_off = w.val_off;
                    w.svc_len = w.val_len;
                }
                // `[enrich]`: a key it adds, looked up in the next step.
                if env.rules().enrich != 0 && matches!(w.key_len, 9 | 11 | 12) {
                    w.mode = MODE_RES_KEY;
                    return Ok(());
                }
            } else if f.role == R_RECORD_ATTR && w.key_set != 0 {
                if attr_looked_up(env.rules(), w.key_len, kind, w.val_len) {
                    // Two steps, one copy each: two copies of unknown length in one step would
                    // have the verifier check the second once per way the first can end.
                    let (ko, kl) = (w.key_off, w.key_len);
                    let (str_kind, vl) = typed_key(kind, w.val_len);
                    clear_key(w, s, slot, str_kind, kl, vl);
                    copy_into_key(w, s, ko, kl, 0)?;
                    w.mode = MODE_ATTR_VALUE;
                    return Ok(());
                }
                if redact_looked_up(env.rules(), w.key_len) {
                    w.mode = MODE_ATTR_REDACT;
                    return Ok(());
                }
                if group_looked_up(env.rules(), w.key_len) {
                    w.mode = MODE_ATTR_GROUP;
                    return Ok(());
                }
            }
        }
        K_RECORD => {
            end_record(w, f, env.rules());
            return Ok(());
        }
        _ => {}
    }
    w.depth -= 1;
    w.pos = f.end;
    Ok(())
}

/// The LogRecord of frame `f` (the top one) has ended: on to its body scan, or its
/// evaluation.
#[inline(always)]
pub(super) fn end_record(w: &mut Walk, f: Frame, rs: &RuleSet) {
    w.depth -= 1;
    w.pos = f.end;
    w.rec_prefix_off = f.prefix_off;
    w.rec_prefix_len = f.prefix_len as u32;
    w.rec_len = f.end - f.start;
    if w.body_kind == V_STRING && w.body_len > 0 && rs.ac_states > 0 {
        w.mode = MODE_BODY_SCAN;
        w.scan_pos = w.body_off;
        w.scan_end = w.body_off + w.body_len;
        w.ac_state = 0;
    } else {
        w.mode = MODE_EVAL;
    }
    if rs.needs & NEED_EVENT != 0
        && w.ev_set != 0
        && w.ev_len > 0
        && w.ev_len as usize <= MAX_EVENT_LEN
    {
        w.after_event = w.mode;
        w.mode = MODE_EVENT;
    }
}

/// [`MODE_RES_KEY`]: notes whether a resource attribute's key is one `[enrich]` adds (looked
/// up among the set's [`STR_ENRICH`] strings), then ends the KeyValue.
#[inline(always)]
pub(super) fn res_key_step<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
) -> Result<(), Error> {
    let kl = w.key_len;
    clear_key(w, s, env.slot(), STR_ENRICH, kl, 0);
    copy_into_key(w, s, w.key_off, kl, 0)?;
    w.rl_has |= env.lookup(&w.key) as u32;
    end_kv(w);
    Ok(())
}

/// [`MODE_EVENT`]: looks the record's event name up (its bits are attribute bits), then goes
/// on to its body scan or evaluation.
#[inline(always)]
pub(super) fn event_step<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
) -> Result<(), Error> {
    let (off, len) = (w.ev_off, w.ev_len);
    clear_key(w, s, env.slot(), STR_EVENT, 0, len);
    copy_into_key(w, s, off, len, 0)?;
    w.attr_bits |= env.lookup(&w.key);
    w.mode = w.after_event;
    Ok(())
}

#[inline(always)]
pub(super) fn attr_value_step<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
) -> Result<(), Error> {
    if w.val_kind == V_STRING {
        copy_into_key(w, s, w.val_off, w.val_len, w.key_len)?;
    } else {
        // An int's 8 bytes little-endian, a bool's one (see `typed_key`).
        let (n, kl) = (w.val_num, w.key_len as usize);
        let mut i = 0;
        while i < 8 {
            if let Some(b) = w.key.bytes.get_mut(kl + i) {
                *b = (n >> (8 * i)) as u8;
            }
            i += 1;
        }
    }
    w.attr_bits |= env.lookup(&w.key);
    if redact_looked_up(env.rules(), w.key_len) {
        w.mode = MODE_ATTR_REDACT;
        return Ok(());
    }
    end_kv_or_group(w, env.rules());
    Ok(())
}

/// Ends the KeyValue, or first looks its key up among the `group_by` keys.
#[inline(always)]
fn end_kv_or_group(w: &mut Walk, rs: &RuleSet) {
    if group_looked_up(rs, w.key_len) {
        w.mode = MODE_ATTR_GROUP;
    } else {
        end_kv(w);
    }
}

/// Keeps the attribute's value if a `group_by` names its key, then ends the KeyValue.
#[inline(always)]
pub(super) fn attr_group_step<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
) -> Result<(), Error> {
    let kl = w.key_len;
    clear_key(w, s, env.slot(), STR_GROUP, kl, 0);
    copy_into_key(w, s, w.key_off, kl, 0)?;
    let bits = env.lookup(&w.key);
    if bits != 0 {
        let v = GroupVal {
            kind: w.val_kind,
            off: w.val_off,
            len: w.val_len,
            _pad: 0,
            num: w.val_num,
        };
        set_group_vals(w, bits, v);
    }
    end_kv(w);
    Ok(())
}

/// Records the attribute if redact rules name its key (any value type), then ends the
/// KeyValue.
#[inline(always)]
pub(super) fn attr_redact_step<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
) -> Result<(), Error> {
    let kl = w.key_len;
    clear_key(w, s, env.slot(), STR_REDACT, kl, 0);
    copy_into_key(w, s, w.key_off, kl, 0)?;
    let bits = env.lookup(&w.key);
    if bits != 0 {
        let n = w.n_redact_attrs as usize;
        if n < MAX_RECORD_REDACTS {
            w.redact_attrs[n] = RedactAttr {
                off: w.kv_off,
                len: w.kv_end - w.kv_off,
                bits,
            };
            w.n_redact_attrs = n as u32 + 1;
        } else {
            w.redact_overflow = 1;
        }
    }
    end_kv_or_group(w, env.rules());
    Ok(())
}

#[inline(always)]
pub(super) fn end_kv(w: &mut Walk) {
    let f = w.frame();
    w.depth -= 1;
    w.pos = f.end;
    w.mode = MODE_FIELDS;
}

#[inline(always)]
pub(super) fn is_service_name<S: Source>(s: &mut S, off: u32, len: u32) -> Result<bool, Error> {
    let lit = b"service.name";
    if len != lit.len() as u32 {
        return Ok(false);
    }
    if !s.ensure(off, len) {
        return Err(Error::Unreadable);
    }
    let mut i = 0;
    while i < 12 {
        if s.byte(off + i as u32) != Some(lit[i]) {
            return Ok(false);
        }
        i += 1;
    }
    Ok(true)
}

/// Scans the next chunk of the record's body: copied out of the message at once, then run
/// through the automaton ([`scan_chunk`], which the kernel runs as a global function).
#[inline(always)]
pub(super) fn scan_step<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
) -> Result<(), Error> {
    let pos = w.scan_pos;
    let left = w.scan_end.saturating_sub(pos);
    let n = if left > SCAN_CHUNK { SCAN_CHUNK } else { left };
    // A body in the record copied last (most are: a record taken whole) is copied from there,
    // not out of the message again.
    let copied = if in_record_copy(w, pos, n) {
        chunk_from_record(w, pos);
        true
    } else {
        s.copy_chunk(pos, n, &mut w.scan_buf)
    };
    if !copied || !env.scan_chunk(w, n) {
        return Err(Error::Unreadable);
    }
    let pos = pos + n;
    w.scan_pos = pos;
    if pos >= w.scan_end {
        w.mode = MODE_EVAL;
    }
    Ok(())
}

/// Whether the `n` bytes of the message at `pos` are in [`Walk::rec_buf`] (the last record
/// the fast path copied, the message's bytes `f_start..f_start + f_len`).
#[inline(always)]
fn in_record_copy(w: &Walk, pos: u32, n: u32) -> bool {
    let (start, len) = (w.f_start, w.f_len);
    len != 0 && pos >= start && pos - start <= len && n <= len - (pos - start)
}

/// Fills [`Walk::scan_buf`] with the bytes of the message from `pos` on, out of the record's
/// copy, a word at a time: each from the two aligned words of the copy it straddles (bytes past
/// the copy's end are whatever the buffer holds there; the scan reads the first `n`).
#[inline(always)]
fn chunk_from_record(w: &mut Walk, pos: u32) {
    const _: () = assert!(core::mem::offset_of!(Walk, rec_buf) % 8 == 0);
    const WORDS: u32 = crate::wire::RECORD_BYTES as u32 / 8;
    let base = pos - w.f_start;
    let q = base / 8;
    let shift = (base % 8) * 8;
    let mut j = 0;
    while j < CHUNK_BYTES as u32 / 8 {
        let lo = rec_word(w, (q + j) % WORDS);
        let v = if shift == 0 {
            lo
        } else {
            lo >> shift | rec_word(w, (q + j + 1) % WORDS) << (64 - shift)
        };
        // SAFETY: `j * 8 + 8 <= CHUNK_BYTES`, and the buffer is 8-aligned in the 8-aligned
        // walk (asserted at `word`).
        unsafe {
            core::ptr::write(
                w.scan_buf.as_mut_ptr().add(j as usize * 8).cast::<u64>(),
                v.to_le(),
            )
        };
        j += 1;
    }
}

/// Word `k` of [`Walk::rec_buf`], its bytes in order from the low end.
#[inline(always)]
fn rec_word(w: &Walk, k: u32) -> u64 {
    let k = (k % (crate::wire::RECORD_BYTES as u32 / 8)) as usize;
    // SAFETY: `k * 8 + 8 <= RECORD_BYTES`, and the buffer is 8-aligned in the 8-aligned walk
    // (asserted at `chunk_from_record`).
    u64::from_le(unsafe { core::ptr::read(w.rec_buf.as_ptr().add(k * 8).cast::<u64>()) })
}

/// Runs the first `n` bytes of [`Walk::scan_buf`] through the flattened automaton `t`, from
/// and to `ac_state`, adding the bits of the needles found to `body_bits`: one load a byte,
/// except in the start state, where bytes that cannot begin a needle (`ac_skip`) are passed
/// over with one bit test each (when the rules' needles make that worth it,
/// [`NEED_SCAN_SKIP`]), or 8 at a time when at most four bytes can begin one
/// ([`NEED_SCAN_WORDS`]).
#[inline(always)]
pub fn scan_chunk(w: &mut Walk, rs: &RuleSet, t: &AcTable, n: u32) {
    let mut state = w.ac_state;
    let mut bits = w.body_bits;
    if rs.needs & NEED_SCAN_SKIP != 0 {
        let words = rs.needs & NEED_SCAN_WORDS != 0;
        if words {
            // Each first byte in every byte of a word, kept in the walk (not on the stack).
            let f = u32::from_le_bytes(rs.ac_first) as u64;
            w.scan_first = [
                (f & 0xff) * LOW_BYTES,
                (f >> 8 & 0xff) * LOW_BYTES,
                (f >> 16 & 0xff) * LOW_BYTES,
                (f >> 24) * LOW_BYTES,
            ];
        }
        let mut i = 0;
        while i < SCAN_CHUNK {
            if i >= n {
                break;
            }
            if words && i & 7 == 0 {
                // A word none of whose bytes can begin a needle, in the start state, is
                // passed over whole. Bytes past `n` in the last word are another chunk's:
                // they can only keep a word from being passed over, and bytes are taken
                // only up to `n`, so they decide nothing.
                let v = word(w, i / 8);
                let hit = has_byte(v, first(w, 0))
                    | has_byte(v, first(w, 1))
                    | has_byte(v, first(w, 2))
                    | has_byte(v, first(w, 3));
                if (state as u64 | hit) == 0 {
                    i += 8;
                    continue;
                }
            }
            (state, bits) = scan_byte::<true>(w, rs, t, state, bits, i);
            i += 1;
        }
    } else {
        let mut i = 0;
        while i < SCAN_CHUNK {
            if i >= n {
                break;
            }
            (state, bits) = scan_byte::<false>(w, rs, t, state, bits, i);
            i += 1;
        }
    }
    w.ac_state = state;
    w.body_bits = bits;
}

const LOW_BYTES: u64 = 0x0101_0101_0101_0101;

/// Byte `i` of [`Walk::scan_buf`] through the automaton from `state`: the next state and the
/// needles found so far. `SKIP` ([`NEED_SCAN_SKIP`]): a byte that cannot begin a needle leaves
/// the start state without a load of the table.
#[inline(always)]
fn scan_byte<const SKIP: bool>(
    w: &Walk,
    rs: &RuleSet,
    t: &AcTable,
    state: u32,
    bits: u64,
    i: u32,
) -> (u32, u64) {
    const NEXT_MASK: u32 = MAX_AC_STATES * 256 - 1;
    const STATE_MASK: u32 = MAX_AC_STATES - 1;
    let b = w.scan_buf[(i & (SCAN_CHUNK - 1)) as usize] as u32;
    let stay = if SKIP {
        (rs.ac_skip[(b >> 6) as usize & 3] >> (b & 63)) as u32 & 1
    } else {
        0
    };
    // One test of a value made of both (not `state == 0 && ...`): the verifier then never
    // learns that the state is 0 on the way that skips, so both ways merge at every byte.
    if state | (stay ^ 1) != 0 {
        let next = (t.next[((state << 8 | b) & NEXT_MASK) as usize] & !AC_OUT) as u32;
        (next, bits | t.out[(next & STATE_MASK) as usize])
    } else {
        (state, bits)
    }
}

/// Word `k` (bytes `8k..8k + 8`) of [`Walk::scan_buf`], in one load.
#[inline(always)]
fn word(w: &Walk, k: u32) -> u64 {
    const _: () = assert!(core::mem::offset_of!(Walk, scan_buf) % 8 == 0);
    let k = (k & (SCAN_CHUNK / 8 - 1)) as usize;
    // SAFETY: `k * 8 + 8 <= CHUNK_BYTES`, and the buffer is 8-aligned in the 8-aligned walk
    // (asserted above).
    unsafe { core::ptr::read(w.scan_buf.as_ptr().add(k * 8).cast::<u64>()) }
}

/// [`Walk::scan_first`] `k`, loaded where it is used: kept in registers, the four would be
/// spilled to a stack the chain of calls to the scan has no room for.
#[inline(always)]
fn first(w: &Walk, k: usize) -> u64 {
    // SAFETY: a plain load of a valid `u64`.
    unsafe { core::ptr::read_volatile(&w.scan_first[k & 3]) }
}

/// Nonzero when some byte of `v` equals the byte `p` repeats (exact: a zero byte of `v ^ p`
/// sets its high bit and no borrow reaches a byte before the first zero one).
#[inline(always)]
fn has_byte(v: u64, p: u64) -> u64 {
    let x = v ^ p;
    x.wrapping_sub(LOW_BYTES) & !x & (LOW_BYTES << 7)
}
