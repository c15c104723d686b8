"""Serving side: BentoML + onnxruntime over the model registry. Never imports TensorFlow."""
