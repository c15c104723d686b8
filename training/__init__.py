"""Training side: Keras models trained, evaluated and exported to the ONNX registry.

This package imports TensorFlow; the service never imports it.
"""
