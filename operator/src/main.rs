fn main() {
    eprintln!("weft-operator: not yet");
    std::process::exit(2);
}
