//! `tandem-worker`: run one job locally, or serve a coordinator as a worker.

fn main() {
    println!("tandem-worker");
}
