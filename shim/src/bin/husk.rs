//! `husk`: the runc-compatible OCI runtime CLI; each container is a
//! microVM.

fn main() {
    std::process::exit(shim::cli::main());
}
