//! Recorders and states in the kernel: their maps, installed with each rule set.

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
