"""The Open Inference Protocol over gRPC: inference.proto and its stubs, the codec and the per-worker server."""
