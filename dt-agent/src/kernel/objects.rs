//! Recorders, states and triggers in the kernel: their maps, what each rule set installs in
//! them, and reading them back (a recorder's ring, for `stats` and for egress).
//!
//! Recorders and states have slots by name ([`ObjectSlots`]), kept in the pinned `OBJECTS`
//! map. A recorder's ring is an inner map of `RECORDERS`, created at its size when the recorder
//! enters the rule set (or its size changes) and freed when it leaves.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray},
};
use dt_ebpf_common::{
    ENTRY_HEADER, MAX_NAME_LEN, MAX_RECORD_CEILING, MAX_RECORD_SERVICE, MAX_RECORDERS, RING_BLOCK,
    RecConf, RecCounters, RecState, RingBlock, TriggerState, entry_len,
};

use crate::{
    rules::{Compiled, ObjectSlots},
    stats::{RecorderStats, StateStats, Stats},
};

/// The maps of recorders, states and triggers (both hooks use them).
pub const MAPS: [&str; 9] = [
    "STATE_SCRATCH",
    "STATES",
    "STATE_DURATIONS",
    "TRIGGERS",
    "RECORDERS",
    "REC_STATE",
    "REC_COUNTERS",
    "REC_CONF",
    "OBJECTS",
];

/// `BPF_F_INNER_MAP`: an inner map whose size may differ from the declared one.
const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Serialises the agent's read-modify-writes of `REC_CONF` (installs and flushes run on
/// different threads).
static CONF_LOCK: Mutex<()> = Mutex::new(());

/// Per recorder slot: records a flush has read from the ring and not sent yet. They count as
/// neither held nor overwritten (whatever the ring does with them meanwhile, the flush sends
/// its copy); changed with `flushed_records`, under [`CONF_LOCK`], as each batch is sent.
static FLUSHING: [AtomicU64; MAX_RECORDERS as usize] =
    [const { AtomicU64::new(0) }; MAX_RECORDERS as usize];

/// Per recorder slot: which ring it holds, bumped (under [`CONF_LOCK`]) whenever a rule set
/// puts a new ring in the slot or frees it. A flush that read the ring before is not counted
/// against the one after ([`Objects::flushed`]).
static RING_EPOCH: [AtomicU64; MAX_RECORDERS as usize] =
    [const { AtomicU64::new(0) }; MAX_RECORDERS as usize];

/// A new ring in `slot` (or none): flushes of the one before count for nothing. Under
/// [`CONF_LOCK`].
fn new_ring_epoch(slot: u8) {
    if let (Some(e), Some(f)) = (RING_EPOCH.get(slot as usize), FLUSHING.get(slot as usize)) {
        e.fetch_add(1, Ordering::Relaxed);
        f.store(0, Ordering::Relaxed);
    }
}

fn ring_epoch(slot: u8) -> u64 {
    RING_EPOCH
        .get(slot as usize)
        .map_or(0, |e| e.load(Ordering::Relaxed))
}

type NameKey = [u8; MAX_NAME_LEN];

fn object_key(kind: u8, name: &str) -> NameKey {
    let mut key = [0u8; MAX_NAME_LEN];
    key[0] = kind;
    let n = name.len().min(MAX_NAME_LEN - 1);
    key[1..1 + n].copy_from_slice(&name.as_bytes()[..n]);
    key
}

const KIND_RECORDER: u8 = b'r';
const KIND_STATE: u8 = b's';

/// Handles on the maps of recorders, states and triggers: one set per user (the agent, the
/// flusher thread, `stats` with no agent).
pub struct Objects {
    states: Array<MapData, u64>,
    durations: Array<MapData, u64>,
    triggers: Array<MapData, TriggerState>,
    rings: ArrayOfMaps<MapData, Array<MapData, RingBlock>>,
    rec_state: Array<MapData, RecState>,
    rec_counters: PerCpuArray<MapData, RecCounters>,
    rec_conf: Array<MapData, RecConf>,
    names: HashMap<MapData, NameKey, u32>,
    /// The counts of recorders a rule set removed, by name, oldest removal first: one added
    /// again goes on from them, so that no exported counter of its name goes backwards.
    departed: Vec<(String, Departed)>,
    /// The most `overwritten` reported of each recorder: it is worked out from counts read
    /// one after the other while the kernel records, so a report may come out a little low;
    /// the counter never shows less than it showed.
    overwritten_shown: Mutex<StdHashMap<String, u64>>,
}

/// A removed recorder's counts (what its ring held counts as overwritten).
#[derive(Clone, Copy, Debug)]
struct Departed {
    counters: RecCounters,
    flushes: u64,
    flushed_records: u64,
    flush_failures: u64,
}

/// Removed recorders whose counts are kept for their return (then the oldest go).
const MAX_DEPARTED: usize = 256;

type Kind = fn(MapData) -> Map;

fn by_id(ebpf: &Ebpf, name: &str, kind: Kind) -> anyhow::Result<Map> {
    let map = ebpf
        .map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    let data: &MapData = match map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d) | Map::ArrayOfMaps(d) => d,
        _ => return Err(anyhow!("map {name} has an unexpected type")),
    };
    let id = data.info()?.id();
    Ok(kind(MapData::from_id(id)?))
}

fn by_pin(dir: &Path, name: &str, kind: Kind) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    Ok(kind(data))
}

impl Objects {
    /// Handles on the maps of a loaded object.
    pub fn open(ebpf: &Ebpf) -> anyhow::Result<Objects> {
        Objects::with(|name, kind| by_id(ebpf, name, kind))
    }

    /// Handles on pinned maps.
    pub fn from_pins(dir: &Path) -> anyhow::Result<Objects> {
        Objects::with(|name, kind| by_pin(dir, name, kind))
    }

    fn with(open: impl Fn(&str, Kind) -> anyhow::Result<Map>) -> anyhow::Result<Objects> {
        Ok(Objects {
            states: Array::try_from(open("STATES", Map::Array)?)?,
            durations: Array::try_from(open("STATE_DURATIONS", Map::Array)?)?,
            triggers: Array::try_from(open("TRIGGERS", Map::Array)?)?,
            rings: ArrayOfMaps::try_from(open("RECORDERS", Map::ArrayOfMaps)?)?,
            rec_state: Array::try_from(open("REC_STATE", Map::Array)?)?,
            rec_counters: PerCpuArray::try_from(open("REC_COUNTERS", Map::PerCpuArray)?)?,
            rec_conf: Array::try_from(open("REC_CONF", Map::Array)?)?,
            names: HashMap::try_from(open("OBJECTS", Map::HashMap)?)?,
            departed: Vec::new(),
            overwritten_shown: Mutex::default(),
        })
    }

    /// The slots of the recorders and states of the active set, as the `OBJECTS` map keeps them.
    pub fn read_names(&self) -> ObjectSlots {
        let mut slots = ObjectSlots::default();
        for (key, slot) in self.names.iter().filter_map(Result::ok) {
            let end = key
                .iter()
                .skip(1)
                .position(|&b| b == 0)
                .map_or(MAX_NAME_LEN, |p| p + 1);
            let name = String::from_utf8_lossy(&key[1..end]).into_owned();
            match key[0] {
                KIND_RECORDER => slots.recorders.insert(name, slot as u8),
                KIND_STATE => slots.states.insert(name, slot as u8),
                _ => None,
            };
        }
        slots
    }

    /// The rings a rule set needs before it can become active: one for each new recorder, or
    /// one whose size changed. Made, not put in place: nothing the active set uses changes, so a
    /// rule set refused after this (or a ring the kernel cannot make) leaves its recorders as
    /// they were. [`Objects::prepare`] puts them in place.
    pub fn new_rings(&self, compiled: &Compiled, old: &ObjectSlots) -> anyhow::Result<NewRings> {
        let _guard = CONF_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut rings = BTreeMap::new();
        for r in &compiled.recorders {
            let conf = self.rec_conf.get(&(r.slot as u32), 0)?;
            let kept = old.recorders.get(&r.name) == Some(&r.slot) && conf.size == r.size;
            if !kept {
                let ring: Array<MapData, RingBlock> =
                    Array::create((r.size / RING_BLOCK as u64) as u32, BPF_F_INNER_MAP)
                        .with_context(|| format!("creating the ring of recorder {}", r.name))?;
                rings.insert(r.slot, ring);
            }
        }
        Ok(NewRings(rings))
    }

    /// As a rule set becomes active: the rings of [`Objects::new_rings`] in place (a resized
    /// recorder starts empty), every recorder's size and `max_record`, every state's duration,
    /// and the names.
    pub fn prepare(
        &mut self,
        compiled: &Compiled,
        old: &ObjectSlots,
        mut rings: NewRings,
    ) -> anyhow::Result<()> {
        let _guard = CONF_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for r in &compiled.recorders {
            let slot = r.slot as u32;
            let mut conf = self.rec_conf.get(&slot, 0)?;
            if let Some(ring) = rings.0.remove(&r.slot) {
                // A fresh ring: the recorder is new, or its size changed (it starts empty).
                // What the old ring held, said once the new one is in place.
                let resized = (old.recorders.get(&r.name) == Some(&r.slot))
                    .then(|| self.held_before_resize(r.slot, conf));
                self.rec_state.set(slot, RecState::default(), 0)?;
                let old_size = conf.size;
                conf = match resized {
                    // The same recorder: its counters go on (what the old ring held counts
                    // as overwritten), so no exported counter goes backwards.
                    Some(_) => RecConf {
                        size: r.size,
                        flushes: conf.flushes,
                        flushed_records: conf.flushed_records,
                        flush_failures: conf.flush_failures,
                        ..RecConf::default()
                    },
                    // New here: at 0, or where it was when a rule set removed it.
                    None => {
                        let back = self
                            .departed
                            .iter()
                            .position(|(name, _)| *name == r.name)
                            .map(|i| self.departed.remove(i).1);
                        let mut counters =
                            vec![RecCounters::default(); aya::util::nr_cpus().map_err(|(_, e)| e)?];
                        if let Some(d) = back {
                            counters[0] = d.counters;
                        }
                        self.rec_counters.set(
                            slot,
                            aya::maps::PerCpuValues::try_from(counters)?,
                            0,
                        )?;
                        RecConf {
                            size: r.size,
                            flushes: back.map_or(0, |d| d.flushes),
                            flushed_records: back.map_or(0, |d| d.flushed_records),
                            flush_failures: back.map_or(0, |d| d.flush_failures),
                            ..RecConf::default()
                        }
                    }
                };
                self.rings.set(slot, &ring, 0)?;
                new_ring_epoch(r.slot);
                if let Some((held, pending)) = resized {
                    warn_resized(&r.name, old_size, r.size, held, pending);
                }
            }
            conf.max_record = r.max_record;
            self.rec_conf.set(slot, conf, 0)?;
            self.names
                .insert(object_key(KIND_RECORDER, &r.name), slot, 0)?;
        }
        for s in &compiled.states {
            self.durations
                .set(s.slot as u32, s.duration.as_nanos() as u64, 0)?;
            self.names
                .insert(object_key(KIND_STATE, &s.name), s.slot as u32, 0)?;
        }
        Ok(())
    }

    /// What the ring of recorder `slot` holds (records, and whether a trigger's flush waits),
    /// before it is replaced.
    fn held_before_resize(&self, slot: u8, conf: RecConf) -> (usize, bool) {
        let held = self
            .read_ring_with(slot, false)
            .map(|c| c.entries.len())
            .unwrap_or(0);
        (held, self.rec_state(slot).flush_req != conf.flush_done)
    }

    /// After a rule set became active: the recorders and states it no longer has go (a
    /// recorder's ring is freed, a state is off).
    pub fn finish(&mut self, compiled: &Compiled, old: &ObjectSlots) -> anyhow::Result<()> {
        let _guard = CONF_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (name, &slot) in &old.recorders {
            if compiled.recorders.iter().any(|r| &r.name == name) {
                continue;
            }
            let _ = self.names.remove(&object_key(KIND_RECORDER, name));
            if compiled.recorders.iter().any(|r| r.slot == slot) {
                continue;
            }
            let conf = self.conf(slot);
            self.departed.retain(|(n, _)| n != name);
            if self.departed.len() >= MAX_DEPARTED {
                self.departed.remove(0);
            }
            self.departed.push((
                name.clone(),
                Departed {
                    counters: self.counters(slot),
                    flushes: conf.flushes,
                    flushed_records: conf.flushed_records,
                    flush_failures: conf.flush_failures,
                },
            ));
            self.rec_conf.set(slot as u32, RecConf::default(), 0)?;
            let _ = self.rings.set(slot as u32, &empty_ring()?, 0);
            new_ring_epoch(slot);
        }
        for (name, &slot) in &old.states {
            if compiled.states.iter().any(|s| &s.name == name) {
                continue;
            }
            let _ = self.names.remove(&object_key(KIND_STATE, name));
            if !compiled.states.iter().any(|s| s.slot == slot) {
                self.states.set(slot as u32, 0, 0)?;
            }
        }
        Ok(())
    }

    /// Turns state `slot` on until `until_ns` (CLOCK_MONOTONIC), or off (0).
    pub fn set_state(&mut self, slot: u8, until_ns: u64) -> anyhow::Result<()> {
        self.states.set(slot as u32, until_ns, 0)?;
        Ok(())
    }

    /// Until when state `slot` is on (0: off).
    pub fn state_until(&self, slot: u8) -> u64 {
        self.states.get(&(slot as u32), 0).unwrap_or(0)
    }

    /// How long a firing turns state `slot` on, in ns.
    pub fn state_duration(&self, slot: u8) -> u64 {
        self.durations.get(&(slot as u32), 0).unwrap_or(0)
    }

    /// Firings of the trigger rule with counter slot `slot`.
    pub fn fired(&self, slot: u16) -> u64 {
        self.triggers.get(&(slot as u32), 0).map_or(0, |t| t.fired)
    }

    pub fn conf(&self, slot: u8) -> RecConf {
        self.rec_conf.get(&(slot as u32), 0).unwrap_or_default()
    }

    pub fn rec_state(&self, slot: u8) -> RecState {
        self.rec_state.get(&(slot as u32), 0).unwrap_or_default()
    }

    /// A recorder's counters, summed over the CPUs.
    pub fn counters(&self, slot: u8) -> RecCounters {
        let mut sum = RecCounters::default();
        if let Ok(values) = self.rec_counters.get(&(slot as u32), 0) {
            for v in values.iter() {
                sum.records += v.records;
                sum.bytes += v.bytes;
                sum.too_long += v.too_long;
                sum.lost += v.lost;
            }
        }
        sum
    }

    /// What recorder `slot` holds, read for a flush: from now until [`Objects::flush_ended`]
    /// these records count as being flushed (read and counted at once, under the lock), and
    /// the ring they are of (its epoch, for [`Objects::flushed`]).
    pub fn read_ring_for_flush(&self, slot: u8) -> anyhow::Result<(RingContents, u64)> {
        let _guard = CONF_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let contents = self.read_ring_with(slot, true)?;
        if let Some(f) = FLUSHING.get(slot as usize) {
            f.store(contents.entries.len() as u64, Ordering::Relaxed);
        }
        Ok((contents, ring_epoch(slot)))
    }

    /// The flush of the ring of `epoch` ended: nothing of it is being flushed any more.
    pub fn flush_ended(&self, slot: u8, epoch: u64) {
        let _guard = CONF_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if ring_epoch(slot) == epoch
            && let Some(f) = FLUSHING.get(slot as usize)
        {
            f.store(0, Ordering::Relaxed);
        }
    }

    /// A flush's batch of `records` records of the ring of `epoch`, ending at stream position
    /// `end`, was sent: the ring's tail moves past it and the records count as flushed, no
    /// longer as being flushed. Nothing when the slot holds another ring now (the recorder was
    /// resized or removed meanwhile).
    pub fn flushed(&mut self, slot: u8, epoch: u64, end: u64, records: u64) -> anyhow::Result<()> {
        let _guard = CONF_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if ring_epoch(slot) != epoch {
            return Ok(());
        }
        if let Some(f) = FLUSHING.get(slot as usize) {
            let _ = f.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(records))
            });
        }
        let mut conf = self.rec_conf.get(&(slot as u32), 0)?;
        if conf.size == 0 {
            return Ok(());
        }
        conf.tail = conf.tail.max(end);
        conf.flushed_records += records;
        self.rec_conf.set(slot as u32, conf, 0)?;
        Ok(())
    }

    /// Which ring recorder `slot` holds now (see [`Objects::update_conf`]).
    pub fn ring_epoch(&self, slot: u8) -> u64 {
        ring_epoch(slot)
    }

    /// Updates a recorder's agent-written side under the lock, if the slot still holds the ring
    /// of `epoch` ([`Objects::ring_epoch`] when the work began): a flush that a rule set
    /// outlived (its recorder resized, or removed and the slot given to another) changes
    /// nothing.
    pub fn update_conf(
        &mut self,
        slot: u8,
        epoch: u64,
        f: impl FnOnce(&mut RecConf),
    ) -> anyhow::Result<()> {
        let _guard = CONF_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if ring_epoch(slot) != epoch {
            return Ok(());
        }
        let mut conf = self.rec_conf.get(&(slot as u32), 0)?;
        if conf.size == 0 {
            return Ok(());
        }
        f(&mut conf);
        self.rec_conf.set(slot as u32, conf, 0)?;
        Ok(())
    }

    /// What recorder `slot`'s ring holds now, oldest first (see [`Ring`]); without the
    /// entries' service names and records when `with_bytes` is false (`stats` only counts).
    fn read_ring_with(&self, slot: u8, with_bytes: bool) -> anyhow::Result<RingContents> {
        let conf = self.conf(slot);
        if conf.size == 0 {
            return Ok(RingContents::default());
        }
        let ring: Array<MapData, RingBlock> = self
            .rings
            .get(&(slot as u32), 0)
            .with_context(|| format!("the ring of recorder slot {slot}"))?;
        let head = self.rec_state(slot).head;
        let mut reader = Ring {
            ring: &ring,
            size: conf.size,
            blocks: StdHashMap::new(),
            with_bytes,
        };
        let mut entries = reader.entries(head, conf.tail);
        // Whatever a writer may have overwritten while this was read is not whole.
        let head_after = self.rec_state(slot).head;
        let floor = head_after.saturating_sub(conf.size);
        entries.retain(|e| e.pos >= floor);
        Ok(RingContents { entries, head })
    }
}

/// A recorder whose size changed started with a new, empty ring: says what the old one held
/// (and a flush a trigger asked for and no agent served yet), now discarded.
fn warn_resized(name: &str, old_size: u64, size: u64, held: usize, pending: bool) {
    if held == 0 && !pending {
        return;
    }
    log::warn!(
        "recorder {name}: its size changed from {old_size} to {size} bytes, so it starts empty: \
         the {held} records it held are discarded{} (flush it before changing its size)",
        if pending {
            ", and the flush a trigger asked for is not made"
        } else {
            ""
        }
    );
}

/// Rings made for a rule set, by recorder slot ([`Objects::new_rings`]).
pub struct NewRings(BTreeMap<u8, Array<MapData, RingBlock>>);

/// A one-block ring: what a freed slot of `RECORDERS` holds (its big ring goes).
fn empty_ring() -> anyhow::Result<Array<MapData, RingBlock>> {
    Ok(Array::create(1, BPF_F_INNER_MAP)?)
}

/// A recorded record, as read from a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its stream position (the order of recording over every CPU) and its ring bytes.
    pub pos: u64,
    pub len: u64,
    pub service: Vec<u8>,
    /// The LogRecord's bytes exactly as they were in the request.
    pub record: Vec<u8>,
    /// Counter slot of the rule that removed it.
    pub rule_slot: u32,
}

/// What a ring holds, oldest first, and its head when read.
#[derive(Clone, Debug, Default)]
pub struct RingContents {
    pub entries: Vec<Entry>,
    pub head: u64,
}

/// Reads entries back from a ring, newest first, by their trailers.
struct Ring<'a> {
    ring: &'a Array<MapData, RingBlock>,
    size: u64,
    blocks: StdHashMap<u32, Box<RingBlock>>,
    /// Whether entries carry their service names and records.
    with_bytes: bool,
}

/// Blocks a ring reader keeps at once: the walk goes back from the head, so a few recent
/// blocks serve it; the agent never holds a whole ring.
const CACHED_BLOCKS: usize = 32;

/// The longest entry a ring can hold.
const MAX_ENTRY: u64 = entry_len(MAX_RECORD_SERVICE, MAX_RECORD_CEILING) as u64;

impl Ring<'_> {
    /// The block holding stream position `pos`, read once per walk.
    fn block(&mut self, pos: u64) -> &RingBlock {
        let block = ((pos % self.size) / RING_BLOCK as u64) as u32;
        let ring = self.ring;
        if self.blocks.len() >= CACHED_BLOCKS && !self.blocks.contains_key(&block) {
            self.blocks.clear();
        }
        self.blocks.entry(block).or_insert_with(|| {
            Box::new(ring.get(&block, 0).unwrap_or(RingBlock {
                bytes: [0; (RING_BLOCK + dt_ebpf_common::RING_PIECE) as usize],
            }))
        })
    }

    /// The u64 at stream position `pos` (a multiple of 8: inside one block).
    fn word(&mut self, pos: u64) -> u64 {
        let off = (pos % RING_BLOCK as u64) as usize;
        let b = self.block(pos);
        u64::from_le_bytes(b.bytes[off..off + 8].try_into().unwrap_or([0; 8]))
    }

    /// `len` bytes from stream position `pos`, block by block.
    fn bytes(&mut self, mut pos: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let end = pos + len;
        while pos < end {
            let off = (pos % RING_BLOCK as u64) as usize;
            let n = ((RING_BLOCK as usize - off) as u64).min(end - pos) as usize;
            out.extend_from_slice(&self.block(pos).bytes[off..off + n]);
            pos += n as u64;
        }
        out
    }

    /// The whole entry that ends at `end`, if there is one.
    fn entry_ending_at(&mut self, end: u64, floor: u64) -> Option<Entry> {
        if end < floor + (ENTRY_HEADER as u64 + 8) {
            return None;
        }
        let pos = self.word(end - 8);
        if pos < floor || pos >= end || end - pos > MAX_ENTRY {
            return None;
        }
        if self.word(pos) != pos + 1 {
            return None;
        }
        let w1 = self.word(pos + 8);
        let w2 = self.word(pos + 16);
        let (len, rec_len) = (w1 & 0xffff_ffff, w1 >> 32);
        let (svc_len, rule_slot) = (w2 & 0xffff_ffff, (w2 >> 32) as u32);
        if len != end - pos
            || svc_len > MAX_RECORD_SERVICE as u64
            || rec_len > MAX_RECORD_CEILING as u64
            || entry_len(svc_len as u32, rec_len as u32) as u64 != len
        {
            return None;
        }
        let at = pos + ENTRY_HEADER as u64;
        Some(Entry {
            pos,
            len,
            service: if self.with_bytes {
                self.bytes(at, svc_len)
            } else {
                Vec::new()
            },
            record: if self.with_bytes {
                self.bytes(at + svc_len, rec_len)
            } else {
                Vec::new()
            },
            rule_slot,
        })
    }

    /// Every whole entry from `max(tail, head - size)` to `head`, oldest first. An entry a CPU
    /// is still writing (or gave up) is stepped over, 8 bytes at a time.
    fn entries(&mut self, head: u64, tail: u64) -> Vec<Entry> {
        let floor = tail.max(head.saturating_sub(self.size));
        let mut out = Vec::new();
        let mut end = head;
        let mut skipped = 0u64;
        while end >= floor + 8 && skipped <= MAX_ENTRY {
            match self.entry_ending_at(end, floor) {
                Some(e) => {
                    end = e.pos;
                    skipped = 0;
                    out.push(e);
                }
                None => {
                    end -= 8;
                    skipped += 8;
                }
            }
        }
        out.reverse();
        out
    }
}

impl Objects {
    /// `stats` of the recorders and states named in `names`, and the firings of trigger rules.
    pub fn report(&self, names: &ObjectSlots, stats: &mut Stats) {
        let mut shown = self
            .overwritten_shown
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        shown.retain(|name, _| {
            names.recorders.contains_key(name) || self.departed.iter().any(|(n, _)| n == name)
        });
        for (name, &slot) in &names.recorders {
            // Recorded first, then held, then flushed: a record that lands or is flushed
            // meanwhile makes `overwritten` come out low, never high.
            let counters = self.counters(slot);
            let held = self
                .read_ring_with(slot, false)
                .map(|c| c.entries)
                .unwrap_or_default();
            let (conf, flushing) = {
                let _guard = CONF_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                let flushing = FLUSHING
                    .get(slot as usize)
                    .map_or(0, |f| f.load(Ordering::Relaxed));
                (self.conf(slot), flushing)
            };
            let records = held.len() as u64;
            let now = counters
                .records
                .saturating_sub(records)
                .saturating_sub(conf.flushed_records)
                .saturating_sub(flushing);
            let overwritten = shown.entry(name.clone()).or_default();
            *overwritten = (*overwritten).max(now);
            stats.recorders.push(RecorderStats {
                name: name.clone(),
                records,
                bytes: held.iter().map(|e| e.len).sum(),
                overwritten: *overwritten,
                too_long: counters.too_long,
                flushes: conf.flushes,
                flushed_records: conf.flushed_records,
                flush_failures: conf.flush_failures,
                lost: counters.lost,
                recorded: counters.records,
                size: conf.size,
                memory: ring_memory(conf.size),
            });
        }
        let now = crate::drain::monotonic_ns();
        for (name, &slot) in &names.states {
            let until = self.state_until(slot);
            stats.states.push(StateStats {
                name: name.clone(),
                on: until > now,
                remaining_ms: until.saturating_sub(now) / 1_000_000,
            });
        }
    }
}

/// Bytes of kernel memory a recorder of `size` takes: its ring blocks, each with its spare
/// bytes.
pub fn ring_memory(size: u64) -> u64 {
    size / RING_BLOCK as u64 * std::mem::size_of::<RingBlock>() as u64
}
