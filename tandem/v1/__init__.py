"""Generated gRPC/protobuf stubs for proto/tandem/v1; written by scripts/gen_protos.py, never by hand."""
