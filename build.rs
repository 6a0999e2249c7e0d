//! Compiles `proto/genbuild.proto` with the protoc shipped by `protoc-bin-vendored`,
//! so building genbuild needs no protoc on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/genbuild.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.compile_protos(&["proto/genbuild.proto"], &[std::path::Path::new("proto"), &include])?;
    Ok(())
}
