//! A progress bar on stderr for long runs (`bench`, `conformance`), shown only when stderr
//! is a terminal: scripts, CI logs and pipes see nothing extra.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// A bar over `len` steps, or nothing when stderr is not a terminal.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar over `len` steps of `what` ("cases"), drawn only when stderr is a terminal.
    pub fn new(len: u64, what: &str) -> Progress {
        Progress::shown_if(std::io::stderr().is_terminal(), len, what)
    }

    /// A bar that is drawn when `shown`, hidden otherwise.
    fn shown_if(shown: bool, len: u64, what: &str) -> Progress {
        Progress(shown.then(|| {
            let template = format!("{{bar:40}} {{pos}}/{{len}} {what} {{elapsed}} {{msg}}");
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar
        }))
    }

    /// Shows `msg` (the step now running) beside the bar.
    pub fn start(&self, msg: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(msg.into());
        }
    }

    /// One step done.
    pub fn step(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }

    /// Runs `print` with the bar cleared, so that stdout lines do not tear it.
    pub fn suspend<T>(&self, print: impl FnOnce() -> T) -> T {
        match &self.0 {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_unless_asked_and_counts_when_shown() {
        let hidden = Progress::shown_if(false, 3, "cases");
        assert!(hidden.0.is_none());
        hidden.step();
        assert_eq!(hidden.suspend(|| 7), 7);
        let shown = Progress::shown_if(true, 3, "cases");
        shown.step();
        shown.step();
        assert_eq!(shown.0.as_ref().map(|b| b.position()), Some(2));
        shown.finish();
    }
}
