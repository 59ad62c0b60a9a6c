//! The layers of `ARCHITECTURE.md`, kept by reading the sources: the decision core knows nothing
//! of Pingora (only the shell's modules may use it) and imports nothing from the layers above
//! it, so the proxy, the CLI and the benches share a core that can be tested and reasoned about
//! alone.

use std::path::Path;

/// The shell: the Pingora side (server assembly, proxy hooks, the upstream head, stream wrapper and its close, admin listener,
/// echo upstream, reload and key-refresh services).
const SHELL: &[&str] = &[
    "src/admin.rs",
    "src/drain.rs",
    "src/echo.rs",
    "src/head_timeout.rs",
    "src/key_refresh.rs",
    "src/linger.rs",
    "src/proxy.rs",
    "src/reload/service.rs",
    "src/server.rs",
    "src/tls_listener.rs",
    "src/upstream_head.rs",
    "src/upstream_tls.rs",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every line of code in `src/` (comments cut), as (path relative to the crate, line number,
/// code, whole line), for the files `keep` selects; unit-test modules at the end of a file are
/// left out (they may use test support from anywhere).
fn code_lines(keep: impl Fn(&str) -> bool) -> Vec<(String, usize, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut out = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if !keep(&rel) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            let c = line.split("//").next().unwrap_or("").to_string();
            out.push((rel.clone(), n + 1, c, line.trim().to_string()));
        }
    }
    out
}

#[test]
fn core_modules_do_not_use_pingora() {
    let offenders: Vec<String> = code_lines(|rel| !SHELL.contains(&rel))
        .into_iter()
        .filter(|(_, _, code, _)| code.contains("pingora::") || code.contains("use pingora"))
        .map(|(rel, n, _, line)| format!("{rel}:{n}: {line}"))
        .collect();
    assert!(
        offenders.is_empty(),
        "core modules use Pingora:\n{}",
        offenders.join("\n")
    );
}

/// The core: facts in, decision out.
const CORE: &[&str] = &[
    "src/admission/",
    "src/auth/",
    "src/config.rs",
    "src/engine.rs",
    "src/explain.rs",
    "src/facts.rs",
    "src/geo/",
    "src/location.rs",
    "src/path.rs",
    "src/policy/",
    "src/sources/",
    "src/strict_json.rs",
    "src/sync.rs",
    "src/tls.rs",
    "src/upstream.rs",
];

/// Modules of the layers above the core: loading, the shell and the tools.
const ABOVE_CORE: &[&str] = &[
    "load",
    "inputs",
    "crypto",
    "telemetry",
    "admin",
    "echo",
    "head_timeout",
    "key_refresh",
    "logging",
    "proxy",
    "reload",
    "server",
    "cases",
];

/// The core's fetching parts count what they fetch (documented in `ARCHITECTURE.md`); unit-test
/// support loads workspaces through the loader.
const ALLOWED: &[(&str, &str)] = &[
    ("src/auth/remote.rs", "telemetry"),
    ("src/sources/fetch.rs", "telemetry"),
    ("src/admission/properties.rs", "load"),
];

#[test]
fn core_modules_import_nothing_from_the_layers_above() {
    let mut offenders = Vec::new();
    for (rel, n, code, line) in code_lines(|rel| CORE.iter().any(|c| rel.starts_with(c))) {
        for m in ABOVE_CORE {
            let used = code.contains(&format!("crate::{m}::"))
                || code.contains(&format!("crate::{m};"))
                || code.contains(&format!("crate::{{{m}"));
            if used && !ALLOWED.contains(&(rel.as_str(), m)) {
                offenders.push(format!("{rel}:{n}: {line}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "core modules import from the layers above:\n{}",
        offenders.join("\n")
    );
}
