//! What a long history of rule changes leaves in the kernel, and that it never blocks a change
//! (found by a soak of 520 pushes): removed rules keep their final counts and groups, until the
//! room they take is needed by the rules of a new set.

use dt_tests::otlp::{LogsRequestBuilder, Rec, encode};
use dt_tests::{HttpRequestBuilder, RawClient, Receiver, Split, TempRules, kernel_or_skip};
use dt_tests::{start_agent, stats_of};

/// Distinct `user.id` values a round sends: more than a rule's 1,024 groups.
const USERS: usize = 1_100;
/// Records a request carries.
const PER_REQUEST: usize = 275;

fn grouped_rule(name: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\naction = \"count\"\ngroup_by = \"attributes.user.id\"\n\
         max_groups = 1024\n"
    )
}

/// One record for each of [`USERS`] users, in requests of [`PER_REQUEST`].
fn send_users(rx: &Receiver, round: usize) {
    let mut c = RawClient::connect(rx.addr());
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(PER_REQUEST) {
        let mut b = LogsRequestBuilder::new().resource("svc").scope("s");
        for &u in chunk {
            b = b.record(Rec::new(9, &format!("round {round}")).attr("user.id", &format!("u{u}")));
        }
        let req = HttpRequestBuilder::logs(encode(&b.build())).build();
        // Answered by the receiver: it has the request, as the kernel left it.
        assert_eq!(c.roundtrip(&req, &Split::Whole).status, 200);
    }
    c.finish();
}

/// A grouped rule renamed at every change, with more values than its `max_groups` each time:
/// 1,026 entries of the kernel's 16,384-entry group map a name. Removed names keep theirs
/// until the map cannot hold a new set's rule's: then the names removed longest ago give theirs
/// back (their `matched` stays), and every change applies. (Before, the 16th change was refused
/// with a bare `Argument list too long`, and so was every later one.)
#[test]
fn removed_rules_groups_make_room_for_new_rules() {
    let test = "removed_rules_groups_make_room_for_new_rules";
    if !kernel_or_skip(test) {
        return;
    }
    let rx = Receiver::start_v4();
    let dir = TempRules::new();
    dir.write("50-grouped.toml", &grouped_rule("users-0"));
    let mut agent = start_agent(&dir, &[rx.port()]);
    let rounds = 20;
    for round in 0..rounds {
        if round > 0 {
            dir.write("50-grouped.toml", &grouped_rule(&format!("users-{round}")));
            if let Err(e) = agent.reload(dir.path()) {
                panic!("{test}: change {round} refused: {e:#}");
            }
        }
        send_users(&rx, round);
    }
    let stats = stats_of(&agent);
    let rule = |n: usize| {
        stats
            .rules
            .iter()
            .find(|r| r.name == format!("users-{n}"))
            .unwrap_or_else(|| panic!("{test}: no rule users-{n}"))
    };
    let groups = |n: usize| rule(n).groups.as_ref().map_or(0, |g| g.len());
    // The active rule: 1,024 values, the rest under __other__, and __missing__.
    let last = rule(rounds - 1);
    assert!(last.active);
    let g = last.groups.as_ref().unwrap();
    assert_eq!(g.len(), 1026, "{test}");
    assert_eq!(g["__other__"], (USERS - 1024) as u64);
    assert_eq!(g.values().sum::<u64>(), USERS as u64);
    // Every removed rule keeps its count; those removed last keep their groups too, those
    // removed first gave them back, oldest first.
    let kept: Vec<usize> = (0..rounds - 1).map(groups).collect();
    for n in 0..rounds - 1 {
        assert!(!rule(n).active);
        assert_eq!(rule(n).matched, USERS as u64, "{test}: users-{n}");
        assert!(
            kept[n] == 0 || kept[n] == 1026,
            "{test}: users-{n}: {kept:?}"
        );
    }
    let first_kept = kept.iter().position(|&k| k > 0).unwrap();
    assert!(
        first_kept > 0 && kept[first_kept..].iter().all(|&k| k > 0),
        "{test}: groups kept {kept:?}"
    );
    // The map holds what it can: the active rule's and as many removed ones as fit beside.
    let entries: usize = kept.iter().sum::<usize>() + 1026;
    assert!(
        entries <= 16_384 && entries + 1026 > 16_384,
        "{test}: {entries} entries"
    );
    println!("{test}: groups kept of the removed rules: {kept:?}");
}
