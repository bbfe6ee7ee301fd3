//! The `regclean` command: everything lives in the library; this only hands over the exit code.
fn main() {
    std::process::exit(regclean::app::main_with_args(std::env::args_os()));
}
