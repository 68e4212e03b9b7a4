"""Integer convolutions rewritten as float ones: the same numbers out, on small quantized graphs built here
(the shape ONNX Runtime's dynamic quantization gives Kokoro), and on the real Kokoro model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from voicechat_session.backends.onnx_float_conv import float_conv_model, rewrite_conv_integer

RNG = np.random.default_rng(7)


def quantized_conv_model(*, vector_zero: bool, bias: bool, group: int = 1) -> onnx.ModelProto:
    """x (float) → DynamicQuantizeLinear → ConvInteger(uint8 weights) [→ + int32 bias] → Cast → x scale."""
    out_ch, in_ch, kernel = 8, 6, 5
    weights = RNG.integers(0, 256, size=(out_ch, in_ch // group, kernel), dtype=np.uint8)
    # ONNX Runtime's ConvInteger takes one weight zero point (a scalar or a 1-element vector).
    w_zero = RNG.integers(100, 156, size=(1,), dtype=np.uint8) if vector_zero else np.uint8(128)
    inits = [
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(np.asarray(w_zero, dtype=np.uint8), "w_zero"),
        numpy_helper.from_array(np.asarray([0.01], dtype=np.float32), "w_scale"),
        numpy_helper.from_array(RNG.integers(-500, 500, size=(1, out_ch, 1), dtype=np.int32), "bias"),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale", "x_zero"]),
        helper.make_node(
            "ConvInteger",
            ["xq", "w", "x_zero", "w_zero"],
            ["acc"],
            pads=[2, 2],
            group=group,
            kernel_shape=[kernel],
        ),
    ]
    acc = "acc"
    if bias:
        nodes.append(helper.make_node("Add", ["acc", "bias"], ["acc_biased"]))
        acc = "acc_biased"
    nodes += [
        helper.make_node("Cast", [acc], ["acc_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_scale", "w_scale"], ["scale"]),
        helper.make_node("Mul", ["acc_float", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "quantized_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_ch, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], {"x": x})
    return np.asarray(y)


@pytest.mark.parametrize(
    ("vector_zero", "bias", "group"), [(False, False, 1), (True, True, 1), (False, True, 2)]
)
def test_the_rewritten_graph_computes_the_same_numbers(vector_zero: bool, bias: bool, group: int) -> None:
    model = quantized_conv_model(vector_zero=vector_zero, bias=bias, group=group)
    x = RNG.normal(size=(1, 6, 40)).astype(np.float32)
    expected = run(model, x)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert rewrite_conv_integer(rewritten) == 1
    onnx.checker.check_model(rewritten)
    assert [n.op_type for n in rewritten.graph.node].count("ConvInteger") == 0
    assert "w" not in {i.name for i in rewritten.graph.initializer}  # the uint8 weights are gone
    # Integer sums of these sizes are exact in float32: the outputs are equal, not merely close.
    np.testing.assert_array_equal(run(rewritten, x), expected)


def test_a_model_without_integer_convolutions_is_left_alone(tmp_path: Path) -> None:
    model = quantized_conv_model(vector_zero=False, bias=False)
    float_graph = onnx.ModelProto()
    float_graph.CopyFrom(model)
    rewrite_conv_integer(float_graph)
    source = tmp_path / "float.onnx"
    onnx.save(float_graph, str(source))
    assert rewrite_conv_integer(float_graph) == 0
    assert float_conv_model(source, tmp_path / "cache") is None


def test_the_variant_is_built_once_and_rebuilt_when_the_source_changes(tmp_path: Path) -> None:
    source = tmp_path / "quantized.onnx"
    onnx.save(quantized_conv_model(vector_zero=True, bias=True), str(source))
    cache = tmp_path / "cache"
    built = float_conv_model(source, cache)
    assert built is not None
    assert built.parent == cache
    first_mtime = built.stat().st_mtime_ns
    assert float_conv_model(source, cache) == built
    assert built.stat().st_mtime_ns == first_mtime  # reused, not rewritten
    assert not list(cache.glob(".*.tmp"))  # written atomically, nothing left behind
    onnx.save(quantized_conv_model(vector_zero=False, bias=False), str(source))
    rebuilt = float_conv_model(source, cache)
    assert rebuilt == built
    x = RNG.normal(size=(1, 6, 30)).astype(np.float32)
    np.testing.assert_array_equal(run(onnx.load(str(rebuilt)), x), run(onnx.load(str(source)), x))
