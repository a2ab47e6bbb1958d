//! Embeds the console's chart library (uPlot, installed from npm by
//! `scripts/setup` under `node_modules/uplot`) into the binary, so the admin
//! serves every console file itself. Without `node_modules` (a build before
//! `scripts/setup`) a stub is embedded and the dashboard shows its numbers as
//! tables only; the build says so with a warning.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let dist = manifest.join("../node_modules/uplot/dist");
    let files = [
        (
            "uPlot.iife.min.js",
            "uplot.js",
            "window.uPlot = undefined; /* uPlot not installed: run scripts/setup */\n",
        ),
        ("uPlot.min.css", "uplot.css", "/* uPlot not installed: run scripts/setup */\n"),
    ];
    for (name, target, stub) in files {
        let source = dist.join(name);
        println!("cargo:rerun-if-changed={}", source.display());
        let bytes = std::fs::read(&source).unwrap_or_else(|_| {
            println!(
                "cargo:warning=console: {} not found (run scripts/setup); charts disabled",
                source.display()
            );
            stub.as_bytes().to_vec()
        });
        if let Err(err) = std::fs::write(out.join(target), bytes) {
            println!("cargo:warning=console: cannot write {target} to OUT_DIR: {err}");
            std::process::exit(1);
        }
    }
}
