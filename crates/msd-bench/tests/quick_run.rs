//! Runs the benchmark binary in its quick mode and checks that it writes a table with the
//! expected rows. The figures themselves are not checked: benchmarks report, they do not assert.
//!
//! The latency section needs the lab: it runs when this process can build one (root, `ip`,
//! `nft`) or when `MSD_LAB_REQUIRED=1`, and is left out otherwise.

use std::process::Command;

use msd_lab::{Lab, REQUIRED_ENV};

#[test]
fn quick_run_writes_table() {
    let lab_required = std::env::var(REQUIRED_ENV).is_ok_and(|value| value == "1");
    let with_lab = lab_required || Lab::check_prerequisites().is_ok();
    let markdown = std::env::temp_dir().join(format!("msd-bench-quick-{}.md", std::process::id()));
    let mut sections = vec!["codec", "sim"];
    if with_lab {
        sections.push("latency");
    }

    let output = Command::new(env!("CARGO_BIN_EXE_msd-bench"))
        .args(&sections)
        .arg("--quick")
        .arg("--markdown")
        .arg(&markdown)
        .output()
        .expect("msd-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "msd-bench failed:\n{stdout}\n{stderr}"
    );

    let table = std::fs::read_to_string(&markdown).expect("msd-bench wrote the markdown table");
    let _ = std::fs::remove_file(&markdown);
    assert!(
        table.contains("| section | figure | n | min | median | p99 | max | unit | note |"),
        "{table}"
    );
    assert!(
        table.contains("| codec | decode and verify native ANNOUNCE, authenticated | 40 |"),
        "{table}"
    );
    assert!(table.contains("| scale | 1000 simulated instances, 0 % loss: fresh discoverer lists all (virtual time) | 1 |"), "{table}");
    if with_lab {
        assert!(
            table.contains("| latency | msd: Instance::start called to Up at the discoverer | 5 |"),
            "{table}"
        );
        assert!(
            table.contains(
                "| latency | mdns-sd: ServiceDaemon::new and register to ServiceResolved | 2 |"
            ),
            "{table}"
        );
    }
    assert!(
        !table.contains("not measured"),
        "a figure is missing:\n{table}\n{stderr}"
    );
}
