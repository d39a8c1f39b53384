"""The backends sqref checks itself against, and what they do on this machine.

    onnx    export an IntegerModel as a QOperator ONNX graph, run it in onnxruntime or the
            ONNX reference evaluator; import float ONNX models
    tflite  export an IntegerModel as an int8 TFLite flatbuffer and run it (ai-edge-litert)
    torch   run an IntegerModel with PyTorch's quantized ops (fbgemm)
    probe   which accumulation a backend's u8 x s8 kernels use on this CPU, measured

Each backend's package (onnx, onnxruntime, ai_edge_litert, torch) is an optional
dependency (the `backends` extra), imported inside these modules only.
"""
