//! `simulate`: a large herd in simulated time ([`herd::replica::netsim`]), printed as
//! a table or JSON. Single-threaded and without sockets: it needs no runtime.

use std::process::ExitCode;

use herd::replica::netsim::{self, Broadcast, Config, Topology};

use crate::Scenario;

/// `--broadcast`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Spread {
    /// herd's flooding, as the servers run it.
    Flood,
    /// Eager push on a tree, announcements elsewhere (a model: not in the servers).
    Plumtree,
}

/// `simulate`: runs the simulation on this thread (it is single-threaded and has no
/// sockets) and prints its figures.
pub(crate) fn run(scenario: &Scenario) -> ExitCode {
    let &Scenario::Simulate {
        servers,
        degree,
        updates,
        rate,
        delay_min_us,
        delay_max_us,
        loss,
        retransmit_us,
        partition,
        seed,
        broadcast,
        graft_timeout_us,
        json,
    } = scenario
    else {
        unreachable!("a simulate scenario");
    };
    if servers == 1
        || degree < 1.0
        || degree.is_nan()
        || rate <= 0.0
        || rate.is_nan()
        || !(0.0..1.0).contains(&loss)
    {
        eprintln!(
            "herd-bench: simulate needs --servers 0 (the paper's herd) or >= 2, --degree >= 1, \
             --rate > 0 and 0 <= --loss < 1"
        );
        return ExitCode::from(2);
    }
    let cfg = Config {
        topology: if servers == 0 {
            Topology::Paper
        } else {
            Topology::Random { servers, degree }
        },
        updates,
        rate,
        delay_us: (delay_min_us, delay_max_us.max(delay_min_us)),
        loss,
        retransmit_us,
        partition,
        seed,
        broadcast: match broadcast {
            Spread::Flood => Broadcast::Flood,
            Spread::Plumtree => Broadcast::Plumtree,
        },
        graft_timeout_us,
    };
    let r = netsim::run(&cfg);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "report": r,
                "messages_per_update": r.messages_per_update(),
                "redundant_per_useful": r.redundant_per_useful(),
                "all_messages_per_update": r.all_messages_per_update(),
                "bytes_per_update": r.bytes_per_update(),
            })
        );
    } else {
        let heal = r
            .heal_to_converged_us
            .map_or("no partition".to_owned(), |us| {
                format!("{:.1} ms", us as f64 / 1e3)
            });
        println!(
            "simulated herd: {} servers, {} links, {} updates, seed {}, {:?}",
            r.servers, r.links, r.updates, r.seed, r.broadcast
        );
        println!(
            "  reached every server      {} of {}",
            r.reached_all, r.updates
        );
        println!(
            "  time to every server      p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            r.reach_p50_us as f64 / 1e3,
            r.reach_p99_us as f64 / 1e3,
            r.reach_max_us as f64 / 1e3
        );
        println!(
            "  messages per update       {:.1} ({} useful, {} redundant: {:.2} redundant per useful)",
            r.messages_per_update(),
            r.useful,
            r.redundant,
            r.redundant_per_useful()
        );
        if r.broadcast == Broadcast::Plumtree {
            println!(
                "  announcements, controls   {:.1}, {:.1} per update (all messages: {:.1} per update)",
                r.announcements as f64 / r.updates.max(1) as f64,
                r.controls as f64 / r.updates.max(1) as f64,
                r.all_messages_per_update()
            );
        }
        println!(
            "  bytes sent per update     {:.0} (updates and control, framed)",
            r.bytes_per_update()
        );
        println!(
            "  catch-ups                 {} ({} records, {} bytes)",
            r.catch_ups, r.catch_up_records, r.catch_up_bytes
        );
        println!("  heal to converged         {heal}");
        println!(
            "  tables identical          {}",
            if r.converged { "yes" } else { "NO" }
        );
        println!(
            "  memory per server         {:.1} KiB",
            r.memory_per_server as f64 / 1024.0
        );
        println!(
            "  simulated {:.2} s in {:.2} s of wall time",
            r.simulated_us as f64 / 1e6,
            r.wall_ms as f64 / 1e3
        );
    }
    if r.converged && r.reached_all == r.updates {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}
