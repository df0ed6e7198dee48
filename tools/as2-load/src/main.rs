//! The `as2-load` binary: parse flags, run, print the report.

use std::process::ExitCode;

use anyhow::Context as _;
use as2_load::LoadConfig;
use clap::Parser as _;

fn main() -> anyhow::Result<ExitCode> {
    let config = LoadConfig::parse();
    let report = as2_load::run(&config)?;
    if let Some(path) = &config.json_file {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if config.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
