//! weft: the command line.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("weft: not yet");
    std::process::exit(2);
}
