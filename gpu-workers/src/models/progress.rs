//! Progress bars for the installer (indicatif), or nothing when progress is off.
//!
//! indicatif already draws nothing when stderr is not a terminal; the explicit switch lets
//! tests and library callers stay silent even on a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` bytes, or a hidden one.
pub(crate) fn bytes(show: bool, total: u64, message: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg:<40} [{bar:30}] {bytes}/{total_bytes} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// A bar over `total` items (tensors).
pub(crate) fn items(show: bool, total: u64, message: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg:<40} [{bar:30}] {pos}/{len}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// A spinner for a step of unknown length (pip).
pub(crate) fn spinner(show: bool, message: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
