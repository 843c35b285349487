//! Generates the gRPC service and messages from proto/ (Triton's field
//! numbers); needs `protoc` (Debian's protobuf-compiler, from scripts/setup).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_protos(&["proto/grpc_service.proto"], &["proto"])?;
    Ok(())
}
