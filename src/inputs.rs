//! What a snapshot is read from: the configuration file, every rules file, every key file and
//! the geo database. The loader ([`crate::load`]) reads exactly these; reload hashes them,
//! compares their identities before and after a read, and watches their directories.

use crate::config::Config;
use crate::location::SourceErrors;
use crate::policy::PolicySet;
use crate::sync::unix_seconds;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A file's size, modification time and inode (`None`: missing). Equal before and after a
/// read means nobody wrote it meanwhile.
pub type Identity = Option<(u64, SystemTime, u64)>;

/// The inputs of one snapshot, found on disk, with each file's identity when it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The configuration file.
    pub config: PathBuf,
    /// The rules directory, whose listing is part of the set (a new `*.toml` there is a change).
    pub rules_dir: Option<PathBuf>,
    /// The rules files, in load order.
    pub rules: Vec<PathBuf>,
    /// Why the rules directory could not be listed (then `rules` is empty and the set does not
    /// load).
    pub rules_unreadable: Option<String>,
    /// Key files: PEM, JWKS and secret files; the TLS listener's certificates and keys.
    pub keys: Vec<PathBuf>,
    /// The geo database: large, so hashed by identity, not content.
    pub geo_db: Option<PathBuf>,
    /// Every file above with its identity, taken for the configuration before it was read.
    identities: Vec<(PathBuf, Identity)>,
}

/// The configuration as found: parsed, or why not (then the inputs are the file alone).
pub struct Found {
    pub inputs: Inputs,
    pub config: Result<Config, SourceErrors>,
}

impl Inputs {
    /// Reads the configuration at `path` and lists what a snapshot built from it reads. The
    /// configuration's identity is taken before it is read, so a write during the read shows
    /// as a change when the inputs are found again.
    pub fn find(path: &Path) -> Found {
        let config_identity = identity(path);
        let config = Config::load(path);
        let mut inputs = match &config {
            Ok(c) => Inputs::of(c),
            Err(_) => Inputs {
                config: path.to_path_buf(),
                rules_dir: None,
                rules: Vec::new(),
                rules_unreadable: None,
                keys: Vec::new(),
                geo_db: None,
                identities: Vec::new(),
            },
        };
        inputs.identities = inputs
            .files()
            .map(|p| {
                let id = if p == path {
                    config_identity
                } else {
                    identity(p)
                };
                (p.to_path_buf(), id)
            })
            .collect();
        Found { inputs, config }
    }

    /// What a snapshot built from `config` reads (identities not taken).
    fn of(config: &Config) -> Inputs {
        let tls_files = config.raw.listen.tls.iter().flat_map(|t| {
            t.certificates
                .iter()
                .flat_map(|c| [c.get_ref().cert.clone(), c.get_ref().key.clone()])
                .chain(t.client_ca.as_ref().map(|c| c.get_ref().clone()))
                .collect::<Vec<_>>()
        });
        let upstream_files = config.raw.upstreams.values().flat_map(|u| {
            let u = u.get_ref();
            [&u.ca_file, &u.client_cert, &u.client_key]
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
        });
        let keys = config
            .raw
            .issuers
            .values()
            .flat_map(|iss| {
                let iss = iss.get_ref();
                iss.keys
                    .iter()
                    .filter_map(|k| k.get_ref().file().map(Path::to_path_buf))
                    .chain(iss.ca_file.as_ref().map(|c| c.get_ref().clone()))
                    .collect::<Vec<_>>()
            })
            .chain(tls_files)
            .chain(upstream_files)
            .map(|p| config.resolve(&p))
            .collect();
        let (rules, rules_unreadable) = match PolicySet::files_in(&config.rules_dir) {
            Ok(files) => (files, None),
            Err(e) => (Vec::new(), Some(e.message)),
        };
        Inputs {
            config: config.path.clone(),
            rules_dir: Some(config.rules_dir.clone()),
            rules,
            rules_unreadable,
            keys,
            geo_db: config
                .raw
                .geo
                .mmdb
                .as_ref()
                .map(|m| config.resolve(m.get_ref())),
            identities: Vec::new(),
        }
    }

    /// Every file of the set: configuration, rules, keys, geo database.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.config.as_path())
            .chain(self.rules.iter().map(PathBuf::as_path))
            .chain(self.keys.iter().map(PathBuf::as_path))
            .chain(self.geo_db.as_deref())
    }

    /// The identities taken when the inputs were found.
    pub fn identities(&self) -> &[(PathBuf, Identity)] {
        &self.identities
    }

    /// Hash of the set's contents (the geo database by size and modification time).
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        for p in self.files().filter(|p| Some(*p) != self.geo_db.as_deref()) {
            h.update(p.to_string_lossy().as_bytes());
            match crate::set_file::read(p) {
                Ok(b) => h.update(&b),
                Err(_) => h.update(b"\0missing"),
            }
        }
        if let Some(meta) = self.geo_db.as_ref().and_then(|p| std::fs::metadata(p).ok()) {
            h.update(meta.len().to_le_bytes());
            if let Ok(t) = meta.modified() {
                h.update(unix_seconds(t).to_le_bytes());
            }
        }
        hex::encode(&h.finalize()[..16])
    }

    /// The directories to watch: the configuration's, the rules directory and its parent (a
    /// ConfigMap swaps it through a symlink there), and those of key files and the geo database.
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let parent = |p: &Path| {
            p.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        let mut dirs = vec![parent(&self.config)];
        if let Some(r) = &self.rules_dir {
            dirs.push(r.clone());
            dirs.push(parent(r));
        }
        dirs.extend(self.keys.iter().chain(&self.geo_db).map(|p| parent(p)));
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

fn identity(p: &Path) -> Identity {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| {
        (
            m.len(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.ino(),
        )
    })
}
