//! `graygate logs templates FILE`: every input line's template id and template, tab-separated,
//! in input order, so a user can see how their logs are grouped (and score the parser).

use crate::logs::brain::{Brain, Config};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// `graygate logs …` verbs.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum LogsCommand {
    /// Print `<template id>\t<template>` for every line of FILE ('-' for standard input).
    Templates {
        /// The log file.
        file: PathBuf,
    },
}

/// Run a `logs` verb; returns the exit code.
pub fn run(cmd: LogsCommand) -> u8 {
    match cmd {
        LogsCommand::Templates { file } => {
            let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                match std::fs::File::open(&file) {
                    Ok(f) => Box::new(std::io::BufReader::new(f)),
                    Err(e) => {
                        eprintln!("error: {}: {e}", file.display());
                        return 3;
                    }
                }
            };
            let mut parser = Brain::new(Config::default());
            let mut ids = Vec::new();
            for (n, line) in reader.lines().enumerate() {
                match line {
                    Ok(l) => ids.push(parser.add(&l)),
                    Err(e) => {
                        eprintln!("error: {} line {}: {e}", file.display(), n + 1);
                        return 3;
                    }
                }
            }
            // Events only settle once every line was seen.
            let events = parser.settle();
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            for id in ids.into_iter().map(|id| events.event(id)) {
                if writeln!(out, "{id}\t{}", events.template(id)).is_err() {
                    return 0;
                }
            }
            0
        }
    }
}
