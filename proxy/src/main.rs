fn main() {
    eprintln!("weft-proxy: not yet");
    std::process::exit(2);
}
