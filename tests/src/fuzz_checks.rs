//! What each fuzz target checks (`fuzz/fuzz_targets/*`, run by `cargo xtask fuzz`), one
//! function per target, each panicking on a finding. They live here so that the regression test
//! (`tests/tests/fuzz_regressions.rs`) runs every kept corpus input and reproducer through the
//! same checks in the ordinary test run.
//!
//! - [`walk_differential`]: the fuzzer's bytes drive the property test's generators
//!   ([`G::from_bytes`]): a random rule set (sometimes with `[enrich]`) and one request, valid or
//!   malformed. dt's walker on the host, both ways (field by field and with the record fast
//!   path), must give what the independent reference says: the verdict (walked, or passed
//!   through as `malformed`, `too_deep`, `enrich`), the records and drops, and the edited bytes.
//! - [`walk_bytes`]: any bytes as a request body under a rule set that uses every kind of
//!   condition and edit: no panic, and the two ways agree.
//! - [`http_head`]: dt's request-head parser against `httparse` (hyper's parser): when dt takes
//!   a head as complete and well-formed, httparse must not read it differently (its length, the
//!   Content-Length, the method and target, chunked framing).
//! - [`chunked`]: dt's chunked-framing scanner against a small reference decoder written here
//!   from RFC 9112: when dt says a body ends, the reference must agree where, with the same
//!   chunks.
//! - [`rules_parse`] and [`config_parse`]: any text as a rule file or config file: no panic,
//!   and every error has a position inside the text.

use std::path::Path;
use std::sync::OnceLock;

use dt_agent::rules::{Compiled, Diagnostic};
use dt_ebpf_common::chunked::{self, Scan};
use dt_ebpf_common::http;

use crate::host_walk::{self, Outcome};
use crate::proptest_gen::reference::{RefState, Sender};
use crate::proptest_gen::round::{self, GenConfig};
use crate::proptest_gen::wire::Either;
use crate::proptest_gen::{G, wire};

/// A target's check: panics on a finding.
pub type Check = fn(&[u8]);

/// The targets, by name: what `cargo xtask fuzz` runs and the regression test replays.
pub const TARGETS: &[(&str, Check)] = &[
    ("walk_differential", walk_differential),
    ("walk_bytes", walk_bytes),
    ("http_head", http_head),
    ("chunked", chunked),
    ("rules_parse", rules_parse),
    ("config_parse", config_parse),
];

fn gen_config() -> &'static GenConfig {
    static CFG: OnceLock<GenConfig> = OnceLock::new();
    CFG.get_or_init(|| GenConfig {
        sample: true,
        redact: true,
        http_variety: true,
        pipelined: 0.0,
        malformed: 0.3,
        // One request a rule set: each walk starts with fresh counters, as the reference's
        // state for the rule set does (sample decisions depend on earlier matches).
        cases_per_round: (1, 1),
        chunked: 0.2,
        several_chunks: 0.3,
        enrich: 0.3,
        // The host walk enriches as for this process on this host.
        sender: Sender::this_process(),
    })
}

/// See the module docs.
pub fn walk_differential(data: &[u8]) {
    walk_differential_cases(data);
}

/// What [`walk_differential`] compared: requests walked, requests passed through, records.
#[derive(Debug, Default, Clone, Copy)]
pub struct Compared {
    pub walked: u64,
    pub passed_through: u64,
    pub records: u64,
    pub records_dropped: u64,
}

/// [`walk_differential`], saying what it compared.
pub fn walk_differential_cases(data: &[u8]) -> Compared {
    let mut seen = Compared::default();
    let mut g = G::from_bytes(data);
    let mut state = RefState::default();
    let r = round::round_from(&mut g, 0, 0, 0, gen_config(), &mut state);
    let compiled = host_walk::compile_rules(&r.toml);
    for c in r.conns.iter().flat_map(|conn| &conn.cases) {
        let body = &c.request.payload;
        if let Err(e) = host_walk::both_ways(&compiled, body) {
            panic!("{e}\nrules:\n{}\nbody {}", r.toml, wire::hex(body));
        }
        let (got, _, _) = host_walk::walk_body(&compiled, body, true);
        let want = &c.expect;
        let problem = |what: String| -> ! {
            panic!(
                "{what}\nrules:\n{}\nbody {}\nmalformed: {:?}\ngot {}",
                r.toml,
                wire::hex(body),
                c.malformed,
                brief(&got)
            )
        };
        match want.passthrough {
            Some(reason) => {
                let verdict = match reason {
                    "malformed" => "Err(Malformed)",
                    "too_deep" => "Err(TooDeep)",
                    "enrich" => "Err(Enrich)",
                    other => problem(format!(
                        "a passthrough reason the body walk has not: {other}"
                    )),
                };
                if got.verdict != verdict {
                    problem(format!("the reference passes it through as {reason}"));
                }
                seen.passed_through += 1;
            }
            None => {
                if got.verdict != "Ok(())" {
                    problem("the reference walks and edits it".to_string());
                }
                if (got.records as u64, got.records_dropped as u64)
                    != (want.records, want.records_dropped)
                {
                    problem(format!(
                        "records {} dropped {}, the reference says {} and {}",
                        got.records, got.records_dropped, want.records, want.records_dropped
                    ));
                }
                if let Err(at) = same_but_either(&got.edited, &want.body, &want.either) {
                    problem(format!(
                        "the edited bytes differ from the reference's at {at}\nwant {}\ngot  {}",
                        wire::hex(&want.body),
                        wire::hex(&got.edited)
                    ));
                }
                seen.walked += 1;
                seen.records += want.records;
                seen.records_dropped += want.records_dropped;
            }
        }
    }
    seen
}

fn brief(o: &Outcome) -> String {
    format!(
        "{} records {} dropped {}",
        o.verdict, o.records, o.records_dropped
    )
}

/// `got` equals `want`, except that each `either` range may also be all `*`. `Err(offset)` of
/// the first difference.
fn same_but_either(got: &[u8], want: &[u8], either: &[Either]) -> Result<(), usize> {
    if got.len() != want.len() {
        return Err(got.len().min(want.len()));
    }
    let mut masked = want.to_vec();
    for e in either {
        let range = e.off..e.off + e.original.len();
        if got
            .get(range.clone())
            .is_some_and(|g| g.iter().all(|b| *b == b'*'))
        {
            masked[range].fill(b'*');
        }
    }
    match got.iter().zip(&masked).position(|(a, b)| a != b) {
        Some(at) => Err(at),
        None => Ok(()),
    }
}

/// Every kind of condition and edit, over the generators' usual names.
const WALK_BYTES_RULES: &str = r#"
[enrich]
resource_attributes = ["process.pid", "host.name"]

[[rule]]
name = "by-service"
action = "count"
group_by = "attributes.http.route"
[rule.match]
service = "checkout"

[[rule]]
name = "typed"
action = "count"
[rule.match]
attributes = { "http.status_code" = 503, "retry" = true }

[[rule]]
name = "redact"
action = "redact"
remove_attributes = ["user.email", "secret.token"]
mask_body = true
[rule.match]
body_contains = "password"

[[rule]]
name = "event"
action = "sample"
keep_one_in = 3
[rule.match]
event_name = "payment.failed"

[[rule]]
name = "drop-debug"
action = "drop"
[rule.match]
severity = "<=DEBUG"
attributes = { "http.route" = "/healthz" }
"#;

/// See the module docs.
pub fn walk_bytes(data: &[u8]) {
    static RULES: OnceLock<Compiled> = OnceLock::new();
    let compiled = RULES.get_or_init(|| host_walk::compile_rules(WALK_BYTES_RULES));
    if let Err(e) = host_walk::both_ways(compiled, data) {
        panic!("{e}\nbody {}", wire::hex(data));
    }
}

/// See the module docs.
pub fn http_head(data: &[u8]) {
    let h = http::parse(data);
    if h.len == 0 || h.bad != 0 {
        return;
    }
    let head = &data[..h.len as usize];
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        // httparse refuses it: the server would answer 400, whatever dt does with the body.
        _ => return,
    };
    let show = || String::from_utf8_lossy(head).into_owned();
    assert_eq!(n, h.len as usize, "head length: {:?}", show());
    let values = |name: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|x| x.name.eq_ignore_ascii_case(name))
            .map(|x| x.value)
            .collect()
    };
    if h.post_logs == 1 {
        assert_eq!(req.method, Some("POST"), "{:?}", show());
        let path = req.path.unwrap_or("");
        assert!(
            path == "/v1/logs" || path.starts_with("/v1/logs?"),
            "target {path:?}: {:?}",
            show()
        );
    }
    if h.has_cl == 1 && h.cl_bad == 0 {
        let cls = values("content-length");
        for v in &cls {
            let text = String::from_utf8_lossy(v);
            let text = text.trim_matches(|c| c == ' ' || c == '\t');
            assert_eq!(
                text.parse::<u64>().ok(),
                Some(h.content_length as u64),
                "Content-Length {text:?}: {:?}",
                show()
            );
        }
        assert!(!cls.is_empty(), "{:?}", show());
    }
    if h.chunked == 1 {
        let te = values("transfer-encoding");
        assert_eq!(te.len(), 1, "{:?}", show());
        let v = String::from_utf8_lossy(te[0]);
        assert!(
            v.trim_matches(|c| c == ' ' || c == '\t')
                .eq_ignore_ascii_case("chunked"),
            "Transfer-Encoding {v:?}: {:?}",
            show()
        );
    }
}

/// A chunked body as RFC 9112 frames it, decoded within dt's documented bounds (size lines of
/// at most 64 bytes, sizes below 2^28, no trailer fields): its end and each data chunk
/// (offset, length); `None` where it is not such a body (or ends early).
fn reference_chunks(b: &[u8]) -> Option<(usize, Vec<(usize, usize)>)> {
    let mut pos = 0;
    let mut chunks = Vec::new();
    loop {
        let line_end = b[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
        let line = &b[pos..line_end];
        if line.len() > chunked::MAX_SIZE_LINE as usize {
            return None;
        }
        let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        let rest = &line[digits..];
        if digits == 0 || !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\n') {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        if size >= 1 << 28 {
            return None;
        }
        pos = line_end + 2;
        if size == 0 {
            // The empty trailer section.
            return (b.get(pos..pos + 2)? == b"\r\n").then_some((pos + 2, chunks));
        }
        let size = size as usize;
        if b.len() < pos + size + 2 || &b[pos + size..pos + size + 2] != b"\r\n" {
            return None;
        }
        chunks.push((pos, size));
        pos += size + 2;
    }
}

/// See the module docs.
pub fn chunked(data: &[u8]) {
    let (c, r) = chunked::scan(data, 0);
    // Passed piece by piece (cut at three points the input picks), the scan ends as it does
    // whole: where, or that it does not follow the framing.
    if data.len() > 3 {
        let mut cuts: Vec<usize> = data[..3]
            .iter()
            .map(|&b| 1 + b as usize % (data.len() - 1))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let whole = match r {
            Scan::Done => (Scan::Done, Some(c.end as usize)),
            Scan::More => (Scan::Unsupported, None),
            r => (r, None),
        };
        assert_eq!(
            chunked::scan_pieces(data, 0, &cuts),
            whole,
            "cut at {cuts:?}: {:?}",
            String::from_utf8_lossy(data)
        );
    }
    if r != Scan::Done {
        return;
    }
    let Some((end, chunks)) = reference_chunks(data) else {
        panic!(
            "dt ends a chunked body the reference cannot decode: {:?}",
            String::from_utf8_lossy(data)
        );
    };
    let show = || String::from_utf8_lossy(&data[..end.min(data.len())]).into_owned();
    assert_eq!(c.end as usize, end, "end: {:?}", show());
    assert_eq!(c.n_chunks as usize, chunks.len(), "chunks: {:?}", show());
    let total: usize = chunks.iter().map(|(_, n)| n).sum();
    assert_eq!(c.data_len as usize, total, "data bytes: {:?}", show());
    if let Some((off, len)) = chunks.first() {
        assert_eq!(
            (c.first_off as usize, c.first_len as usize),
            (*off, *len),
            "first chunk: {:?}",
            show()
        );
    }
}

/// Every diagnostic points into `text` (a line that exists, a column within it or just past
/// its end) and names `file`.
fn positions_inside(diags: &[Diagnostic], file: &Path, text: &str) {
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diags {
        assert_eq!(d.file, file, "{d}");
        assert!(
            d.line >= 1 && d.line <= lines.len(),
            "line {} of {}: {d}\n{text:?}",
            d.line,
            lines.len()
        );
        let width = lines[d.line - 1].chars().count();
        assert!(
            d.column >= 1 && d.column <= width + 1,
            "column {} of a line of {width} characters: {d}\n{text:?}",
            d.column
        );
        assert!(!d.message.is_empty(), "{d}");
    }
}

/// See the module docs.
pub fn rules_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    match dt_agent::rules::load_sources(&[(file.into(), text.to_string())]) {
        Err(diags) => positions_inside(&diags, file, text),
        Ok(defs) => {
            if let Err(diags) =
                dt_agent::rules::compile(&defs, &mut dt_agent::rules::SlotTable::default())
            {
                positions_inside(&diags, file, text);
            }
        }
    }
}

/// See the module docs.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/etc/dt/agent.toml");
    match dt_agent::settings::parse(file, text) {
        Err(diags) => positions_inside(&diags, file, text),
        Ok(layer) => {
            // Resolving never panics either.
            let _ = dt_agent::settings::resolve(Some(layer), Default::default());
        }
    }
}
