//! `claimgate geo-db`: write a small country database for tests and demos.

use claimgate::geo::writer;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct GeoDbArgs {
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Write the demo database shipped as dev/geo-demo.mmdb.
    #[arg(long, conflicts_with = "entry")]
    demo: bool,
    /// A network and its place: CIDR=COUNTRY:CONTINENT, e.g. 192.0.2.0/24=DE:EU.
    #[arg(long, value_name = "CIDR=CC:CONT")]
    entry: Vec<String>,
}

/// `CIDR=COUNTRY:CONTINENT`.
fn parse_entry(e: &str) -> Option<writer::Entry> {
    let (net, place) = e.split_once('=')?;
    let (cc, cont) = place.split_once(':')?;
    Some(writer::Entry {
        network: net.parse().ok()?,
        country: cc.to_string(),
        continent: cont.to_string(),
    })
}

pub fn run(a: GeoDbArgs) -> ExitCode {
    let (entries, epoch) = if a.demo {
        (writer::demo_entries(), writer::DEMO_EPOCH)
    } else {
        let mut v = Vec::new();
        for e in &a.entry {
            match parse_entry(e) {
                Some(x) => v.push(x),
                None => {
                    eprintln!("claimgate geo-db: `{e}` is not CIDR=COUNTRY:CONTINENT (IPv4)");
                    return ExitCode::from(1);
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        (v, now)
    };
    match std::fs::write(&a.out, writer::build(&entries, epoch)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claimgate geo-db: cannot write `{}`: {e}", a.out.display());
            ExitCode::from(1)
        }
    }
}
