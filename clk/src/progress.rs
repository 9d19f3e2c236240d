//! Progress of long operations (`clk image build`, `clk vm boot`) as operators expect it from
//! a terminal tool: on a terminal, a spinner with the current stage and its elapsed time; in a
//! log (CI, a pipe), one line per stage with the time since the start; nothing with `--json`,
//! whose output is the one report line.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Stages {
    mode: Mode,
    started: Instant,
}

enum Mode {
    Quiet,
    Lines,
    Spinner(ProgressBar),
}

impl Stages {
    /// Progress on stderr; `quiet` for `--json`.
    pub fn new(quiet: bool) -> Stages {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            Mode::Spinner(bar)
        } else {
            Mode::Lines
        };
        Stages {
            mode,
            started: Instant::now(),
        }
    }

    /// Plain stage lines even on a terminal (when something else writes there too).
    pub fn lines(quiet: bool) -> Stages {
        Stages {
            mode: if quiet { Mode::Quiet } else { Mode::Lines },
            started: Instant::now(),
        }
    }

    /// A new stage begins (the previous one is done).
    pub fn stage(&self, name: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("[{:>6.1}s] {name}", self.elapsed()),
            Mode::Spinner(bar) => {
                bar.println(format!("[{:>6.1}s] {name}", self.elapsed()));
                bar.set_message(name.to_string());
            }
        }
    }

    /// Something worth saying within the current stage.
    pub fn note(&self, message: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("          {message}"),
            Mode::Spinner(bar) => bar.println(format!("          {message}")),
        }
    }

    /// The operation is over: clear the spinner, print the final line.
    pub fn finish(&self, message: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("[{:>6.1}s] {message}", self.elapsed()),
            Mode::Spinner(bar) => {
                bar.finish_and_clear();
                eprintln!("[{:>6.1}s] {message}", self.elapsed());
            }
        }
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl clk_image::Progress for Stages {
    fn stage(&self, name: &str) {
        Stages::stage(self, name)
    }
    fn note(&self, message: &str) {
        Stages::note(self, message)
    }
}
