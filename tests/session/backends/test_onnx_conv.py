"""Integer convolutions rewritten as im2col + MatMulInteger (``gemm``) or as float ones: the same numbers out,
on small quantized graphs built here (the shape ONNX Runtime's dynamic quantization gives Kokoro, with every
kernel size, stride, dilation and padding the real model uses)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from voicechat_session.backends.onnx_conv import (
    rewrite_conv_integer_as_float,
    rewrite_conv_integer_as_gemm,
    rewritten_model,
    signed_weights_are_exact,
)

RNG = np.random.default_rng(7)


def quantized_conv_model(
    *,
    vector_zero: bool,
    bias: bool,
    group: int = 1,
    kernel: int = 5,
    stride: int = 1,
    dilation: int = 1,
    pads: tuple[int, int] = (2, 2),
) -> onnx.ModelProto:
    """x (float) → DynamicQuantizeLinear → ConvInteger(uint8 weights) [→ + int32 bias] → Cast → x scale."""
    out_ch, in_ch = 8, 6
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
            pads=list(pads),
            group=group,
            kernel_shape=[kernel],
            strides=[stride],
            dilations=[dilation],
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


Rewrite = Callable[[onnx.ModelProto], int]
REWRITES: dict[str, Rewrite] = {
    "float": rewrite_conv_integer_as_float,
    "gemm-uint8": lambda model: rewrite_conv_integer_as_gemm(model, signed_weights=False),
    "gemm-int8": lambda model: rewrite_conv_integer_as_gemm(model, signed_weights=True),
}
# Kernel size, stride, dilation and padding of every kind of ConvInteger in Kokoro v1.0.
KOKORO_CONVOLUTIONS = [
    {"kernel": 5, "pads": (2, 2)},
    {"kernel": 1, "pads": (0, 0)},
    {"kernel": 3, "stride": 2, "pads": (1, 1)},
    {"kernel": 12, "stride": 6, "pads": (3, 3)},
    {"kernel": 11, "dilation": 5, "pads": (25, 25)},
    {"kernel": 7, "dilation": 3, "pads": (9, 9)},
]


def rewritten(model: onnx.ModelProto, rewrite: str) -> onnx.ModelProto:
    if rewrite == "gemm-int8" and not signed_weights_are_exact():
        pytest.skip(
            "u8 x s8 products saturate on this CPU (no VNNI/AMX): the service keeps uint8 weights here"
        )
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    assert REWRITES[rewrite](copy) == 1
    onnx.checker.check_model(copy)
    assert [n.op_type for n in copy.graph.node].count("ConvInteger") == 0
    assert "w" not in {i.name for i in copy.graph.initializer}  # the original weights are gone
    return copy


@pytest.mark.parametrize("rewrite", list(REWRITES))
@pytest.mark.parametrize(("vector_zero", "bias"), [(False, False), (True, True)])
def test_the_rewritten_graph_computes_the_same_numbers(rewrite: str, vector_zero: bool, bias: bool) -> None:
    model = quantized_conv_model(vector_zero=vector_zero, bias=bias)
    x = RNG.normal(size=(1, 6, 40)).astype(np.float32)
    # Integer sums of these sizes are exact in float32 too: the outputs are equal, not merely close.
    np.testing.assert_array_equal(run(rewritten(model, rewrite), x), run(model, x))


@pytest.mark.parametrize("rewrite", ["gemm-uint8", "gemm-int8"])
@pytest.mark.parametrize(
    "shape", KOKORO_CONVOLUTIONS, ids=lambda shape: "-".join(f"{k}{v}" for k, v in shape.items())
)
def test_im2col_matches_every_convolution_shape_kokoro_uses(rewrite: str, shape: dict[str, Any]) -> None:
    model = quantized_conv_model(vector_zero=True, bias=True, **shape)
    reach = shape.get("dilation", 1) * (shape["kernel"] - 1) + 1
    shortest = max(1, reach - sum(shape["pads"]))  # the padded input just covers the kernel once
    for length in (shortest, shortest + 1, 61, 200):
        x = RNG.normal(size=(1, 6, length)).astype(np.float32)
        x[0, :, : length // 3] = 0.0  # an exact zero: the activations' zero point inside the signal
        expected = run(model, x)
        got = run(rewritten(model, rewrite), x)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_signed_weights_use_int8_matrices_and_unsigned_keep_uint8() -> None:
    model = quantized_conv_model(vector_zero=False, bias=False)
    for signed, dtype in ((True, np.int8), (False, np.uint8)):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        rewrite_conv_integer_as_gemm(copy, signed_weights=signed)
        (matrix,) = (
            numpy_helper.to_array(i) for i in copy.graph.initializer if i.name.endswith("gemm/weights")
        )
        assert matrix.dtype == dtype
        assert matrix.shape == (6 * 5, 8)  # (taps x input channels, output channels)


def test_grouped_convolutions_are_left_to_conv_integer_by_gemm_and_rewritten_by_float() -> None:
    model = quantized_conv_model(vector_zero=False, bias=True, group=2)
    x = RNG.normal(size=(1, 6, 40)).astype(np.float32)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    assert rewrite_conv_integer_as_gemm(copy, signed_weights=False) == 0
    np.testing.assert_array_equal(run(rewritten(model, "float"), x), run(model, x))


@pytest.mark.parametrize("variant", ["float", "gemm"])
def test_a_model_without_integer_convolutions_is_left_alone(tmp_path: Path, variant: str) -> None:
    model = quantized_conv_model(vector_zero=False, bias=False)
    float_graph = rewritten(model, "float")
    source = tmp_path / "float.onnx"
    onnx.save(float_graph, str(source))
    assert rewritten_model(source, tmp_path / "cache", variant) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", ["float", "gemm"])
def test_the_variant_is_built_once_and_rebuilt_when_the_source_changes(tmp_path: Path, variant: str) -> None:
    source = tmp_path / "quantized.onnx"
    onnx.save(quantized_conv_model(vector_zero=True, bias=True), str(source))
    cache = tmp_path / "cache"
    built = rewritten_model(source, cache, variant)  # type: ignore[arg-type]
    assert built is not None
    assert built.parent == cache
    assert built.name.endswith(f".{variant}conv.onnx")
    first_mtime = built.stat().st_mtime_ns
    assert rewritten_model(source, cache, variant) == built  # type: ignore[arg-type]
    assert built.stat().st_mtime_ns == first_mtime  # reused, not rewritten
    assert not list(cache.glob(".*.tmp"))  # written atomically, nothing left behind
    onnx.save(quantized_conv_model(vector_zero=False, bias=False), str(source))
    rebuilt = rewritten_model(source, cache, variant)  # type: ignore[arg-type]
    assert rebuilt == built
    x = RNG.normal(size=(1, 6, 30)).astype(np.float32)
    np.testing.assert_array_equal(run(onnx.load(str(rebuilt)), x), run(onnx.load(str(source)), x))
