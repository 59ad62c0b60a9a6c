//! Unit-test support: a gateway's files in a temporary directory, loaded through the one loader,
//! and tokens signed with its key.

use crate::engine::Snapshot;
use crate::load::{load, Loaded};
use std::path::PathBuf;

pub const SECRET: &str = "unit-test-secret-0123456789abcdef0123";
pub const ISS: &str = "https://issuer.test/";
pub const AUD: &str = "api";

/// A configuration directory: `gateway.toml`, `rules/`, and an HMAC secret file.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new(rules: &[(&str, &str)]) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!(
                r#"
[listen]
proxy = "127.0.0.1:1"
admin = "127.0.0.1:2"
[rules]
dir = "rules"
[upstreams.main]
addresses = ["127.0.0.1:3"]
[issuers.test]
issuer = "{ISS}"
audiences = ["{AUD}"]
algorithms = ["HS256"]
keys = [{{ secret_file = "secret", kid = "k1", alg = "HS256" }}]
"#
            ),
        )
        .unwrap();
        let ws = Workspace { dir };
        for (name, text) in rules {
            ws.write(&format!("rules/{name}"), text);
        }
        ws
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).unwrap();
    }

    pub fn load(&self) -> Loaded {
        load(&self.path("gateway.toml"), &Default::default())
            .unwrap_or_else(|e| panic!("the workspace does not load:\n{e}"))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.load().snapshot
    }
}

/// An HS256 token of the workspace's issuer with `claims` added to `iss`, `aud` and `exp`.
pub fn token(claims: serde_json::Value) -> String {
    let mut all = serde_json::json!({"iss": ISS, "aud": AUD, "exp": 4_000_000_000u64});
    if let (Some(a), Some(c)) = (all.as_object_mut(), claims.as_object()) {
        a.extend(c.clone());
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    crate::crypto::self_test().unwrap();
    jsonwebtoken::encode(
        &header,
        &all,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}
