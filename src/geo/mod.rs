//! Where a request comes from: the client address (through trusted proxies only) and its country
//! and continent, from a trusted edge header or a MaxMind/GeoLite2 `.mmdb` database.

pub mod writer;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GeoError {
    #[error("cannot open the geo database `{path}`: {message}")]
    Database { path: String, message: String },
    #[error("`{0}` is not an IP address or CIDR block")]
    BadNetwork(String),
    #[error("`{0}` is not a valid header name")]
    BadHeader(String),
}

/// Country and continent codes (ISO 3166-1 alpha-2; AF AN AS EU NA OC SA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub country: Option<String>,
    pub continent: Option<String>,
}

#[derive(Default)]
pub struct GeoResolver {
    reader: Option<maxminddb::Reader<Vec<u8>>>,
    country_header: Option<HeaderName>,
    trusted: Vec<IpNet>,
}

impl std::fmt::Debug for GeoResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoResolver")
            .field("database", &self.reader.is_some())
            .field("country_header", &self.country_header)
            .field("trusted", &self.trusted)
            .finish()
    }
}

pub fn parse_network(s: &str) -> Result<IpNet, GeoError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| GeoError::BadNetwork(s.to_string()))
}

impl GeoResolver {
    pub fn new(
        mmdb: Option<&Path>,
        country_header: Option<&str>,
        trusted: &[String],
    ) -> Result<GeoResolver, GeoError> {
        let reader = match mmdb {
            Some(p) => {
                let database = |message: String| GeoError::Database {
                    path: p.display().to_string(),
                    message,
                };
                let bytes = crate::set_file::read_limited(p, crate::set_file::MAX_GEO_BYTES)
                    .map_err(|e| database(e.to_string()))?;
                Some(maxminddb::Reader::from_source(bytes).map_err(|e| database(e.to_string()))?)
            }
            None => None,
        };
        let country_header = match country_header {
            Some(h) => Some(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| GeoError::BadHeader(h.to_string()))?,
            ),
            None => None,
        };
        let trusted = trusted
            .iter()
            .map(|t| parse_network(t))
            .collect::<Result<_, _>>()?;
        Ok(GeoResolver {
            reader,
            country_header,
            trusted,
        })
    }

    /// The edge header that carries the client's country, when one is configured.
    pub fn country_header(&self) -> Option<&HeaderName> {
        self.country_header.as_ref()
    }

    /// Whether `ip` is a trusted proxy (`network.trusted_proxies`).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the right-most
    /// address of `X-Forwarded-For` that is not itself a trusted proxy. Entries left of an
    /// untrusted hop are ignored: anyone can write them.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // An unparsable hop ends the trusted chain.
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        Some(client)
    }

    /// Country and continent: the edge header when the peer is a trusted proxy and sends one,
    /// else the database lookup of the client address.
    pub fn locate(
        &self,
        peer: Option<IpAddr>,
        client: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Location {
        if let (Some(h), Some(p)) = (&self.country_header, peer) {
            if self.is_trusted(p) {
                let code = headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_ascii_uppercase())
                    .filter(|v| v.len() == 2 && v.bytes().all(|b| b.is_ascii_alphabetic()));
                if let Some(code) = code {
                    return Location {
                        continent: continent_of(&code).map(str::to_string),
                        country: Some(code),
                    };
                }
            }
        }
        let (Some(reader), Some(ip)) = (&self.reader, client) else {
            return Location::default();
        };
        let found = reader
            .lookup(ip)
            .ok()
            .and_then(|r| r.decode::<maxminddb::geoip2::Country>().ok().flatten());
        match found {
            Some(c) => Location {
                country: c.country.iso_code.map(str::to_string),
                continent: c.continent.code.map(str::to_string),
            },
            None => Location::default(),
        }
    }
}

/// Continent of a country code, as MaxMind assigns them, for countries given by an edge header.
pub fn continent_of(country: &str) -> Option<&'static str> {
    const TABLE: &[(&str, &str)] = &[
        ("EU", "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK"),
        ("AS", "AE AF AM AZ BD BH BN BT CN GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TL TM TR TW UZ VN YE"),
        ("AF", "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW"),
        ("NA", "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI PA PM PR SV SX TC TT US VC VG VI"),
        ("SA", "AR BO BR CL CO EC FK GF GY PE PY SR UY VE"),
        ("OC", "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS"),
        ("AN", "AQ BV GS HM TF"),
    ];
    TABLE
        .iter()
        .find(|(_, list)| list.split(' ').any(|c| c == country))
        .map(|(continent, _)| *continent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_through_trusted_proxies() {
        let g = GeoResolver::new(None, None, &["10.0.0.0/8".into()]).unwrap();
        let xff = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.7")]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(g.client_ip(ip("10.0.0.1"), &xff), ip("2.2.2.2"));
        assert_eq!(g.client_ip(ip("8.8.8.8"), &xff), ip("8.8.8.8"));
        assert_eq!(
            g.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        let junk = headers(&[("x-forwarded-for", "1.1.1.1, junk")]);
        assert_eq!(g.client_ip(ip("10.0.0.1"), &junk), ip("10.0.0.1"));
    }

    #[test]
    fn edge_header_only_from_trusted_peers() {
        let g = GeoResolver::new(None, Some("CF-IPCountry"), &["127.0.0.1".into()]).unwrap();
        let h = headers(&[("cf-ipcountry", "de")]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let loc = g.locate(ip("127.0.0.1"), ip("127.0.0.1"), &h);
        assert_eq!(loc.country.as_deref(), Some("DE"));
        assert_eq!(loc.continent.as_deref(), Some("EU"));
        assert_eq!(
            g.locate(ip("9.9.9.9"), ip("9.9.9.9"), &h),
            Location::default()
        );
        assert_eq!(continent_of("CA"), Some("NA"));
        assert_eq!(continent_of("ZZ"), None);
    }
}
