//! `farm monitor [--no-open]`: the URL of the live monitor this machine's farmd serves
//! (docs/monitor.md), opened in a browser when there is a display.

use std::io::Write;
use std::process::{Command, Stdio};

use super::{err, out};
use crate::config::Config;

/// Whether a browser started here can show a window.
fn display_available() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

pub(super) fn run(no_open: bool) -> i32 {
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    let status = match super::status::fetch_status(&cfg) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "farm monitor: {e}");
            return 1;
        }
    };
    let Some(http) = status.http else {
        let _ = writeln!(
            std::io::stderr(),
            "farm monitor: farmd (node {}) serves no HTTP: `http` is off in its configuration, or its default address was taken (see its log)",
            status.node
        );
        return 1;
    };
    out(&format!("{}\n", http.monitor));
    if no_open {
        return 0;
    }
    if !display_available() {
        let _ = writeln!(
            std::io::stderr(),
            "farm monitor: no display here (DISPLAY, WAYLAND_DISPLAY): open the URL in a browser that reaches it"
        );
        return 0;
    }
    let opened = Command::new("xdg-open")
        .arg(&http.monitor)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = opened {
        let _ = writeln!(
            std::io::stderr(),
            "farm monitor: cannot run xdg-open ({e}): open the URL by hand"
        );
    }
    0
}
