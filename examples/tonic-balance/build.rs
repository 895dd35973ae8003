//! Generates the gRPC client and server for `proto/echo.proto`.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so the machine needs no protoc of its own.
//! `PROTOC` still wins when it is set, and a platform without a vendored binary falls back to
//! `protoc` on the `PATH`.

use std::io;

fn main() -> io::Result<()> {
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        if let Ok(protoc) = protoc_bin_vendored::protoc_bin_path() {
            config.protoc_executable(protoc);
        }
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    tonic_prost_build::configure().compile_with_config(config, &["proto/echo.proto"], &["proto"])
}
