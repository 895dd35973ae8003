//! `msd-bench`: runs the benchmark sections, prints every figure and writes a markdown table.
//!
//! ```text
//! msd-bench [SECTION...] [--quick] [--markdown PATH] [--msd PATH]
//! ```
//!
//! Sections: `codec`, `ingest`, `latency`, `crash`, `sim`, `scale`, or `all` (the default). The
//! lab sections need root, `ip` and `nft`. `crash` and the memory figure of `scale` run the `msd`
//! binary, found next to this one unless `--msd` names it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use msd_bench::report::Report;
use msd_bench::{child, codec, crash, ingest, latency, scale};

const SECTIONS: [&str; 6] = ["codec", "ingest", "latency", "crash", "sim", "scale"];

const USAGE: &str = "usage: msd-bench [all|codec|ingest|latency|crash|sim|scale]... [--quick] [--markdown PATH] [--msd PATH]";

/// Parsed command line.
#[derive(Debug)]
struct Options {
    sections: Vec<&'static str>,
    /// Fewer runs and smaller sizes, for a quick check that every section works.
    quick: bool,
    markdown: PathBuf,
    msd: Option<PathBuf>,
    bench: PathBuf,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(child::CHILD_ARG) {
        let code = child::main(args.get(1..).unwrap_or_default());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("msd-bench: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    // Labs delete their namespaces when they drop, which an interrupted run never reaches.
    if let Err(error) = clean_up_on_signal() {
        eprintln!("msd-bench: failed to install the signal handler: {error}");
    }

    let machine = machine_description();
    println!("machine: {machine}");
    let started = Instant::now();
    let mut report = Report::default();
    for section in &options.sections {
        let section_started = Instant::now();
        println!("== {section}");
        run_section(section, &options, &mut report);
        report.record_section(section, section_started.elapsed());
    }
    let total = started.elapsed();

    let command = format!("msd-bench {}", args.join(" "));
    let markdown = report.to_markdown(
        &format!("{machine}; load average at the end {}", load_average()),
        command.trim(),
        total,
    );
    println!("\n{markdown}");
    if let Some(parent) = options.markdown.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&options.markdown, markdown) {
        Ok(()) => println!("wrote {}", options.markdown.display()),
        Err(error) => eprintln!(
            "msd-bench: failed to write {}: {error}",
            options.markdown.display()
        ),
    }
    ExitCode::SUCCESS
}

/// Starts a thread that, on SIGINT, SIGTERM or SIGHUP, deletes the lab namespaces of this process
/// and exits with status 130.
fn clean_up_on_signal() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("msd-bench signals".to_owned())
        .spawn(move || {
            if signals.forever().next().is_some() {
                eprintln!("msd-bench: interrupted; removing the lab namespaces");
                msd_bench::lab::remove_own_namespaces();
                std::process::exit(130);
            }
        })?;
    Ok(())
}

fn run_section(section: &str, options: &Options, report: &mut Report) {
    let quick = options.quick;
    match section {
        "codec" => codec::run(report),
        "ingest" => {
            let settings = if quick {
                ingest::Settings {
                    rounds: 5,
                    repeats: 1,
                    ..ingest::Settings::default()
                }
            } else {
                ingest::Settings::default()
            };
            ingest::run(report, settings);
        }
        "latency" => {
            let settings = if quick {
                latency::Settings {
                    runs: 5,
                    probing_runs: 2,
                    udp_samples: 100,
                }
            } else {
                latency::Settings::default()
            };
            latency::run(report, settings);
        }
        "crash" => {
            let settings = crash::Settings {
                msd: options.msd.clone(),
                bench: options.bench.clone(),
                runs: if quick { 2 } else { 10 },
                // mdns-sd takes two minutes to notice a crash; the quick run skips it.
                mdns_registrants: if quick { 0 } else { 10 },
            };
            crash::run(report, &settings);
        }
        "sim" => {
            let settings = if quick {
                scale::SimSettings {
                    instances: 1_000,
                    seeds: 1,
                    ..scale::SimSettings::default()
                }
            } else {
                scale::SimSettings::default()
            };
            scale::sim(report, &settings);
        }
        "scale" => {
            let settings = scale::LabSettings {
                bench: options.bench.clone(),
                msd: options.msd.clone(),
                instance_hosts: if quick { 2 } else { 4 },
                instances_per_host: if quick { 50 } else { 250 },
                discoverer_runs: if quick { 1 } else { 3 },
                losses: vec![0, 10],
                window: if quick {
                    Duration::from_secs(2)
                } else {
                    Duration::from_secs(5)
                },
            };
            scale::lab_run(report, &settings);
        }
        _ => {}
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let bench = std::env::current_exe()
        .map_err(|error| format!("failed to find this program's path: {error}"))?;
    let directory = bench.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut options = Options {
        sections: Vec::new(),
        quick: false,
        markdown: directory
            .parent()
            .unwrap_or(&directory)
            .join("msd-bench-results.md"),
        msd: Some(directory.join("msd")),
        bench,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--markdown" => {
                options.markdown = PathBuf::from(args.next().ok_or("--markdown needs a path")?)
            }
            "--msd" => options.msd = Some(PathBuf::from(args.next().ok_or("--msd needs a path")?)),
            "all" => options.sections.extend(SECTIONS),
            section => match SECTIONS.iter().find(|known| **known == section) {
                Some(known) => options.sections.push(known),
                None => return Err(format!("unknown section or option {section:?}")),
            },
        }
    }
    if options.sections.is_empty() {
        options.sections.extend(SECTIONS);
    }
    options.sections.dedup();
    if options.msd.as_ref().is_some_and(|path| !path.is_file()) {
        eprintln!(
            "msd-bench: no msd binary at {}; the sections that run it skip those figures",
            options
                .msd
                .as_ref()
                .map_or(String::new(), |path| path.display().to_string())
        );
        options.msd = None;
    }
    Ok(options)
}

/// Describes the machine: CPUs, CPU model, kernel and load average.
fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), Linux {}, load average at the start {}",
        kernel.trim(),
        load_average()
    )
}

/// Returns the 1-, 5- and 15-minute load averages from `/proc/loadavg`.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
