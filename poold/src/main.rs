//! `poold`: runs one pool. See `poold --help`, and the README's "Running poold yourself".

fn main() {
    poold::run::run(std::env::args().skip(1), None);
}
