"""Services a user could pick instead of ours, on the same ONNX files and preprocessing (benchmarks/peers.py runs them)."""
