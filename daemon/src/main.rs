//! farmd: one per machine. Worker for peers' compiles, cache peer and local agent.
//!
//! Distribution lands with the farmd issue; today farmd only answers `--help` and
//! `--version`, and farm works as a local cache without it.

use std::io::Write;

const HELP: &str = "\
farmd - the farm daemon (worker, cache peer, local agent)

USAGE
  farmd --config FILE     run the daemon with this configuration
  farmd --help | --version

STATUS
  Distribution (QUIC peers, remote cache, remote compiles) is not built yet.
  Without a running farmd, farm-cc/farm-c++ work as a local cache; nothing else
  changes for a build.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        None | Some("--help") | Some("-h") => {
            print!("{HELP}");
            0
        }
        Some("--version") | Some("-V") => {
            println!("farmd {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("--config") => {
            let _ = writeln!(
                std::io::stderr(),
                "farmd: distribution is not implemented yet; farm works as a local cache without farmd"
            );
            1
        }
        Some(other) => {
            let _ = writeln!(
                std::io::stderr(),
                "farmd: unknown argument `{other}` (try --help)"
            );
            2
        }
    };
    // The library is linked so the daemon builds against the same crate it will use.
    let _ = farm::config::DEFAULT_MAX_SIZE;
    std::process::exit(code);
}
