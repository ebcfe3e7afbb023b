//! `zab-node`: one server of a fast-leader-election ensemble over TCP.
//! See [`zab_election::cli`] for the flags and the output.

fn main() -> std::process::ExitCode {
    zab_election::cli::main(std::env::args().skip(1))
}
