//! The decision core knows nothing of Pingora: only the shell's modules may use it, so the
//! proxy, the CLI and the benches share a core that can be tested and reasoned about alone.

use std::path::Path;

/// The shell: the Pingora side (server assembly, proxy hooks, stream wrapper, admin listener,
/// echo upstream, reload and key-refresh services).
const SHELL: &[&str] = &[
    "src/admin.rs",
    "src/echo.rs",
    "src/head_timeout.rs",
    "src/key_refresh.rs",
    "src/proxy.rs",
    "src/reload.rs",
    "src/server.rs",
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

#[test]
fn core_modules_do_not_use_pingora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut offenders = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if SHELL.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("pingora::") || code.contains("use pingora") {
                offenders.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "core modules use Pingora:\n{}",
        offenders.join("\n")
    );
}
