//! What `deploy/` ships is a configuration this gateway accepts: the Kubernetes base and its
//! Redis overlay, laid out as the pod mounts them, pass `claimgate check --deny-warnings`, and
//! the overlay's copy of gateway.toml differs from the base's only where it means to.

use super::harness::*;
use std::path::Path;

/// Lays `gateway_toml` out as the pod sees it (config/, rules/, keys/ side by side), with the
/// upstream Service name pointed at loopback: names resolve when a configuration loads, and
/// `api` resolves only inside the cluster.
fn as_mounted(gateway_toml: &Path) -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/base");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["config", "rules", "keys"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let text = std::fs::read_to_string(gateway_toml)
        .unwrap()
        .replace("\"api:8080\"", "\"127.0.0.1:8080\"");
    std::fs::write(dir.path().join("config/gateway.toml"), text).unwrap();
    for sub in ["rules", "keys"] {
        for entry in std::fs::read_dir(root.join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn the_kubernetes_base_and_overlay_configurations_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    for config in ["base/gateway.toml", "overlays/redis/gateway.toml"] {
        let dir = as_mounted(&root.join(config));
        let out = binary()
            .arg("check")
            .arg("--deny-warnings")
            .arg("--config")
            .arg(dir.path().join("config/gateway.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_overlay_changes_only_where_limits_are_counted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let read = |p: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(root.join(p)).unwrap()).unwrap()
    };
    let (mut base, mut redis) = (
        read("base/gateway.toml"),
        read("overlays/redis/gateway.toml"),
    );
    let (base_limits, redis_limits) = (
        base.remove("rate_limits").unwrap(),
        redis.remove("rate_limits").unwrap(),
    );
    assert_eq!(
        base, redis,
        "the overlay's gateway.toml drifted from the base's"
    );
    assert_eq!(base_limits["store"].as_str(), Some("memory"));
    assert_eq!(redis_limits["store"].as_str(), Some("redis"));
}
