//! Pinned maps live under `/sys/fs/bpf/dt/v<LAYOUT_VERSION>/`, and an agent adopts only the
//! pins of its own version; pins of another version make it stop with how to remove them. A map
//! whose key or value changed size under the same version would be adopted all the same, and
//! the new agent's programs would then fail to load against it (or read another layout's
//! bytes). This test holds the sizes of every pinned map's key and value type that the layout
//! version stands for: change one and it fails until `LAYOUT_VERSION` is bumped with them.
//! (`STATE_SCRATCH`'s value, `CallScratch`, lives in `dt-ebpf/src/maps.rs`: 16 bytes.)

use core::mem::size_of;

use dt_ebpf_common::uprobe::{ProbeEntry, ProbeRuleSet};
use dt_ebpf_common::*;

macro_rules! sizes {
    ($($t:ty),* $(,)?) => {
        vec![$((stringify!($t), size_of::<$t>())),*]
    };
}

#[test]
fn a_pinned_map_type_that_changes_size_bumps_the_layout_version() {
    let now = sizes![
        Control,
        RuleSet,
        StrKey,
        HashKey,
        HashEntry,
        GroupKey,
        EnrichStr,
        CgroupIds,
        GroupNotes,
        AcTable,
        RuleCounters,
        Totals,
        NameKey,
        NameEntry,
        SockState,
        Held,
        Rebody,
        TriggerState,
        RingBlock,
        RecState,
        RecCounters,
        RecConf,
        ProbeRuleSet,
        ProbeEntry,
    ];
    let held: Vec<(&str, usize)> = vec![
        ("Control", 24),
        ("RuleSet", 13408),
        ("StrKey", 200),
        ("HashKey", 16),
        ("HashEntry", 208),
        ("GroupKey", 72),
        ("EnrichStr", 68),
        ("CgroupIds", 136),
        ("GroupNotes", 49232),
        ("AcTable", 532480),
        ("RuleCounters", 40),
        ("Totals", 248),
        ("NameKey", 64),
        ("NameEntry", 8),
        ("SockState", 63352),
        ("Held", 32),
        ("Rebody", 532488),
        ("TriggerState", 24),
        ("RingBlock", 4352),
        ("RecState", 16),
        ("RecCounters", 32),
        ("RecConf", 56),
        ("ProbeRuleSet", 5144),
        ("ProbeEntry", 232),
    ];
    assert_eq!(
        (LAYOUT_VERSION, now),
        (7, held),
        "a pinned map's key or value type changed size: bump LAYOUT_VERSION in \
         dt-ebpf-common/src/layout.rs (and the README's v<N>), then write the new version and \
         sizes here"
    );
}
