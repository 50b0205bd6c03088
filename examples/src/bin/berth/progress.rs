//! Progress bars for registry transfers: berth-registry reports progress through its
//! `Progress` trait; the terminal drawing (indicatif) lives here, in the binary.

use std::sync::Arc;

use berth_api::Digest;
use berth_registry::client::{Direction, Progress, Transfer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One bar per blob on stderr (drawn only when stderr is a terminal).
#[derive(Debug)]
pub(crate) struct Bars(MultiProgress);

impl Bars {
    pub(crate) fn new() -> Bars {
        Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
    }
}

struct Bar(ProgressBar);

impl Progress for Bars {
    fn start(&self, digest: &Digest, size: u64, direction: Direction) -> Arc<dyn Transfer> {
        let bar = self.0.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(digest.hex()[..12].to_owned());
        bar.set_message(direction.to_string());
        Arc::new(Bar(bar))
    }
}

impl Transfer for Bar {
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }

    fn set_position(&self, position: u64) {
        self.0.set_position(position);
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
