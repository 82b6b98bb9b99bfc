//! The fuzz targets' checks (`dt_tests::fuzz_checks`) on every kept input: the seeds
//! (`fuzz/seeds/<target>/`, the hand-made starting points and the corpus minimised after long
//! runs) and the reproducers of fixed findings (`fuzz/regressions/<target>/`), so a finding,
//! once fixed, stays fixed in the ordinary test run; and a few hundred fresh inputs for the
//! walker's differential target, so every run of the tests fuzzes a little.

use std::path::{Path, PathBuf};

use dt_tests::fuzz_checks::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_kept_input_passes_its_check() {
    let mut total = 0;
    for (name, check) in TARGETS {
        let mut n = 0;
        for kind in ["seeds", "regressions"] {
            for f in files(&fuzz_dir().join(kind).join(name)) {
                let data = std::fs::read(&f).unwrap();
                let r = std::panic::catch_unwind(|| check(&data));
                assert!(r.is_ok(), "{name}: {} fails its check again", f.display());
                n += 1;
            }
        }
        assert!(n > 0, "{name}: no seeds in fuzz/seeds/{name}");
        total += n;
    }
    eprintln!("fuzz regressions: {total} kept inputs passed");
}

#[test]
fn fresh_inputs_for_the_walker_differential() {
    // Deterministic, varied inputs: a few hundred rule sets and requests, each walked both
    // ways and compared with the reference.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut seen = dt_tests::fuzz_checks::Compared::default();
    for i in 0..300 {
        let len = 16 + (i * 37) % 400;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let r = std::panic::catch_unwind(|| dt_tests::fuzz_checks::walk_differential_cases(&data));
        if let Ok(c) = r {
            seen.walked += c.walked;
            seen.passed_through += c.passed_through;
            seen.records += c.records;
            seen.records_dropped += c.records_dropped;
        }
        assert!(
            r.is_ok(),
            "input {i} ({} bytes): {}",
            data.len(),
            data.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
    eprintln!("walker differential: {seen:?}");
    // Not vacuous: requests of both kinds, records, drops.
    assert!(seen.walked > 50 && seen.passed_through > 20, "{seen:?}");
    assert!(seen.records > 200 && seen.records_dropped > 10, "{seen:?}");
}

#[test]
fn every_fuzz_target_has_its_check() {
    let mut on_disk: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "fuzz/fuzz_targets and dt_tests::fuzz_checks::TARGETS"
    );
}
