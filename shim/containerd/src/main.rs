//! `containerd-shim-husk-v2`: the containerd runtime v2 shim.

fn main() -> std::process::ExitCode {
    husk_containerd::main()
}
