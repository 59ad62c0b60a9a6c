//! A minimal MaxMind DB (`.mmdb`) writer for country data: enough to build the demo database the
//! repository ships and the databases the tests generate, in the format MaxMind's GeoLite2
//! Country files use (IPv4 search tree, 24-bit records, `country` and `continent` maps).
//!
//! Format: <https://maxmind.github.io/MaxMind-DB/>.

use ipnet::Ipv4Net;

/// One network and where it is.
#[derive(Debug, Clone)]
pub struct Entry {
    pub network: Ipv4Net,
    pub country: String,
    pub continent: String,
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(u32),
    Data(u32),
}

/// Builds the database bytes. `build_epoch` is fixed by the caller so output is reproducible.
pub fn build(entries: &[Entry], build_epoch: u64) -> Vec<u8> {
    // Data section: one record per entry.
    let mut data = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        offsets.push(data.len() as u32);
        encode_map(
            &mut data,
            &[
                (
                    "continent",
                    Val::Map(vec![("code", Val::Str(e.continent.clone()))]),
                ),
                (
                    "country",
                    Val::Map(vec![("iso_code", Val::Str(e.country.clone()))]),
                ),
            ],
        );
    }

    // Search tree over the 32 bits of an IPv4 address.
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    for (e, off) in entries.iter().zip(&offsets) {
        let addr = u32::from(e.network.network());
        let len = e.network.prefix_len() as u32;
        let mut node = 0usize;
        for depth in 0..len {
            let bit = ((addr >> (31 - depth)) & 1) as usize;
            if depth + 1 == len {
                nodes[node][bit] = Rec::Data(*off);
                break;
            }
            node = match nodes[node][bit] {
                Rec::Node(n) => n as usize,
                _ => {
                    nodes.push([Rec::Empty, Rec::Empty]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(n as u32);
                    n
                }
            };
        }
    }
    let node_count = nodes.len() as u32;
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => node_count,
                Rec::Node(i) => i,
                Rec::Data(off) => node_count + 16 + off,
            };
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    encode_map(
        &mut out,
        &[
            ("binary_format_major_version", Val::U16(2)),
            ("binary_format_minor_version", Val::U16(0)),
            ("build_epoch", Val::U64(build_epoch)),
            ("database_type", Val::Str("claimgate-Country".into())),
            (
                "description",
                Val::Map(vec![("en", Val::Str("claimgate country database".into()))]),
            ),
            ("ip_version", Val::U16(4)),
            ("languages", Val::Array(vec![Val::Str("en".into())])),
            ("node_count", Val::U32(node_count)),
            ("record_size", Val::U16(24)),
        ],
    );
    out
}

enum Val {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, Val)>),
    Array(Vec<Val>),
}

fn control(out: &mut Vec<u8>, ty: u8, size: usize) {
    let (size_bits, ext): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
    };
    if ty <= 7 {
        out.push((ty << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(ty - 7);
    }
    out.extend_from_slice(&ext);
}

fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, ty, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Val::U16(n) => uint(out, 5, *n as u64),
        Val::U32(n) => uint(out, 6, *n as u64),
        Val::U64(n) => uint(out, 9, *n),
        Val::Map(m) => encode_map(out, m),
        Val::Array(a) => {
            control(out, 11, a.len());
            for x in a {
                encode(out, x);
            }
        }
    }
}

fn encode_map(out: &mut Vec<u8>, m: &[(&str, Val)]) {
    control(out, 7, m.len());
    for (k, v) in m {
        encode(out, &Val::Str((*k).to_string()));
        encode(out, v);
    }
}

/// The demo database shipped as `dev/geo-demo.mmdb`: documentation address blocks only.
// The networks below are constants that parse.
#[allow(clippy::expect_used)]
pub fn demo_entries() -> Vec<Entry> {
    let e = |net: &str, country: &str, continent: &str| Entry {
        network: net.parse().expect("demo network"),
        country: country.into(),
        continent: continent.into(),
    };
    vec![
        e("192.0.2.0/25", "DE", "EU"),
        e("192.0.2.128/25", "FR", "EU"),
        e("198.51.100.0/24", "US", "NA"),
        e("203.0.113.0/25", "CA", "NA"),
        e("203.0.113.128/25", "JP", "AS"),
    ]
}

/// Build time written into the demo database, fixed so the file is reproducible.
pub const DEMO_EPOCH: u64 = 1_790_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_databases_read_back() {
        let bytes = build(&demo_entries(), 1_700_000_000);
        let reader = maxminddb::Reader::from_source(bytes).unwrap();
        let look = |ip: &str| {
            reader
                .lookup(ip.parse().unwrap())
                .unwrap()
                .decode::<maxminddb::geoip2::Country>()
                .unwrap()
                .map(|c| {
                    (
                        c.country.iso_code.map(str::to_string),
                        c.continent.code.map(str::to_string),
                    )
                })
        };
        assert_eq!(
            look("192.0.2.7"),
            Some((Some("DE".into()), Some("EU".into())))
        );
        assert_eq!(
            look("192.0.2.200"),
            Some((Some("FR".into()), Some("EU".into())))
        );
        assert_eq!(
            look("203.0.113.200"),
            Some((Some("JP".into()), Some("AS".into())))
        );
        assert_eq!(look("8.8.8.8"), None);
    }

    #[test]
    fn shipped_demo_database_is_what_the_generator_writes() {
        let shipped = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/dev/geo-demo.mmdb"))
            .expect("dev/geo-demo.mmdb");
        assert!(
            shipped == build(&demo_entries(), DEMO_EPOCH),
            "regenerate with `claimgate geo-db --demo --out dev/geo-demo.mmdb`"
        );
    }
}
