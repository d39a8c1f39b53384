"""The bit-exact integer path (docs/integer.md).

    calibration  8-bit activation ranges of a float or weight-quantized model
    model        the IntegerModel: int8 weights, int32 biases, uint8 activation parameters
    kernels      accumulators, pools on codes, a layer's requantization
    run          integer-only inference of an IntegerModel
    requant      requantization and (de)quantization as each backend computes them (modes)
    oracle       loop-nest oracles of the kernels: the source of truth in tests
    golden       golden files: the integer outputs of every layer, in HDF5
    verify       a golden file recomputed by a backend and compared bit for bit
    qlinear      one function per ONNX integer op (qlinear_conv, qlinear_matmul, conv_integer,
                 matmul_integer, quantize_linear, dequantize_linear, dynamic_quantize_linear):
                 any signs and zero points, each backend's arithmetic (mode); import it from there
    qlinear_elementwise  onnxruntime's contrib ops qlinear_add, qlinear_mul, qlinear_concat,
                 qlinear_sigmoid, qlinear_leaky_relu, and relu_codes / clip_codes (a QDQ Relu/Clip);
                 modes onnxruntime and tflite (ADD, MUL)
    qlinear_pool qlinear_global_average_pool, qlinear_average_pool (modes onnxruntime, tflite
                 AVERAGE_POOL_2D), max_pool_codes (MaxPool on 8-bit codes)

The names below are the integer path's everyday API; golden files and
verification are imported from their modules (sqref.integer.golden,
sqref.integer.verify), which need the backends.
"""
from sqref.integer.calibration import (ACT_QMAX, ACT_QMIN, CALIBRATION_RULES, ActParams, Calibration, act_params,
                                       activation_range, calibrate)
from sqref.integer.kernels import (F32_EXACT_K, avg_pool2d_codes, conv2d_accumulate, conv2d_requant, exact_matmul,
                                   fused_plan, int16_pairs_accumulate, linear_accumulate, linear_requant,
                                   max_pool2d_codes, requantize_layer)
from sqref.integer.model import (ACCUMULATE, BIAS_LIMIT, QUANTIZE_MODE, IntAdd, IntAvgPool2d, IntClip, IntConv2d,
                                 IntegerModel, IntFlatten, IntGlobalAvgPool, IntLinear, IntMaxPool2d, IntPad, IntReLU,
                                 build_integer_model, check_accumulate, check_mode, output_shapes, quantize_bias)
from sqref.integer.run import (BATCH_BYTES, apply_layer, batch_size, quantize_input, run_integer,
                              run_model_integer)

__all__ = ["ACT_QMAX", "ACT_QMIN", "CALIBRATION_RULES", "ActParams", "Calibration", "act_params", "activation_range",
           "calibrate", "F32_EXACT_K", "avg_pool2d_codes", "conv2d_accumulate", "conv2d_requant", "exact_matmul",
           "fused_plan", "linear_requant",
           "int16_pairs_accumulate", "linear_accumulate", "max_pool2d_codes", "requantize_layer", "ACCUMULATE",
           "BIAS_LIMIT", "QUANTIZE_MODE", "IntAdd", "IntAvgPool2d", "IntClip", "IntGlobalAvgPool", "IntPad",
           "IntConv2d", "IntegerModel", "IntFlatten", "IntLinear",
           "IntMaxPool2d", "IntReLU", "build_integer_model", "check_accumulate", "check_mode", "output_shapes",
           "quantize_bias", "BATCH_BYTES", "apply_layer", "batch_size", "quantize_input", "run_integer",
           "run_model_integer"]
