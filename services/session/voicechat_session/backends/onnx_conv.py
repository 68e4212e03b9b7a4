"""Kokoro's integer convolutions on the kernels a CPU runs fast: same arithmetic, different ONNX Runtime ops.

The embedded Kokoro model is dynamically quantized: every convolution is ``DynamicQuantizeLinear`` →
``ConvInteger`` (uint8 activations by uint8 weights, int32 out) → rescale. How fast ONNX Runtime runs
``ConvInteger`` depends on the CPU: on the AMD EPYC development machine a 3-word phrase took ~0.66 s; on an
Intel Xeon (AVX-512 VNNI, AMX) in the same 2-core VM class it took 5-8 s, 87% of it in ``ConvInteger``:
that kernel does not use the CPU's integer dot-product instructions, while ``MatMulInteger`` does (a
1408x128 by 12841-row product: ``ConvInteger``-sized work 193 ms, ``MatMulInteger`` 5.6 ms, float ``Conv``
30 ms on that host).

Two rewrites keep every other node and give the same int32 sums the integer convolution gives:

* ``gemm`` (:func:`rewrite_conv_integer_as_gemm`): im2col in the graph (transpose to time-major, pad with the
  activations' zero point, one strided slice per kernel tap, concatenate) and one ``MatMulInteger`` against
  the weights laid out as a constant matrix. Exact; the model stays ~90 MB. Weights are moved to int8 (minus
  128, zero point too, so ``w - zero`` is unchanged) only where ONNX Runtime's u8xs8 kernels are exact: x86
  with VNNI/AMX (without VNNI they multiply through saturating 16-bit sums).
* ``float`` (:func:`rewrite_conv_integer_as_float`): ``Conv`` over the same integers held as floats, rounded
  back to int32 (exact for sums of this size). Weights grow 4x (~90 → ~250 MB).

Which variant is fastest on a machine is measured at load (``tts_conv=auto``), not assumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

ConvRewrite = Literal["float", "gemm"]
_INT64_MAX = np.iinfo(np.int64).max


def _integer_convolutions(model: Any) -> list[tuple[int, Any, np.ndarray, np.ndarray | None]]:
    """The ``ConvInteger`` nodes (with their index) whose weights and weight zero point are initializers."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    found = []
    for index, node in enumerate(model.graph.node):
        _, w, _, w_zero = [*node.input, "", "", ""][:4]
        if node.op_type != "ConvInteger" or w not in initializers or (w_zero and w_zero not in initializers):
            continue
        zero = numpy_helper.to_array(initializers[w_zero]) if w_zero else None
        found.append((index, node, numpy_helper.to_array(initializers[w]), zero))
    return found


def _replace_nodes(model: Any, replacements: dict[int, list[Any]], added: list[Any]) -> None:
    """Swap nodes (by index) for their replacements, add initializers and drop the ones no longer used."""
    graph = model.graph
    nodes = [new for index, node in enumerate(graph.node) for new in replacements.get(index, [node])]
    still_used = {name for n in nodes for name in n.input}
    kept = [init for init in graph.initializer if init.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *added])


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def rewrite_conv_integer_as_float(model: Any) -> int:
    """Replace every ``ConvInteger`` of ``model`` (an ``onnx.ModelProto``, changed in place) whose weights
    and weight zero point are initializers by a float ``Conv``; returns how many were replaced."""
    from onnx import TensorProto, helper, numpy_helper

    replacements: dict[int, list[Any]] = {}
    added: list[Any] = []
    for index, node, weights_int, zero_int in _integer_convolutions(model):
        x, _, x_zero, _ = [*node.input, "", "", ""][:4]
        out = node.output[0]
        weights = weights_int.astype(np.float32)
        if zero_int is not None:
            zero = zero_int.astype(np.float32)
            # Scalar, or one zero point per output channel (axis 0 of the weights).
            weights -= zero if zero.ndim == 0 else zero.reshape((-1,) + (1,) * (weights.ndim - 1))
        added.append(numpy_helper.from_array(weights, f"{out}/float_weights"))
        new = [helper.make_node("Cast", [x], [f"{out}/x"], to=TensorProto.FLOAT)]
        activations = f"{out}/x"
        if x_zero:
            new.append(helper.make_node("Cast", [x_zero], [f"{out}/x_zero"], to=TensorProto.FLOAT))
            new.append(helper.make_node("Sub", [activations, f"{out}/x_zero"], [f"{out}/x_centered"]))
            activations = f"{out}/x_centered"
        attributes = {
            name: value
            for name, value in _attributes(node).items()
            if not (name == "auto_pad" and value == b"NOTSET")
        }
        new.append(
            helper.make_node("Conv", [activations, f"{out}/float_weights"], [f"{out}/y"], **attributes)
        )
        # Sums of integer products: exact in int32, within float32 rounding here; Round restores the integer.
        new.append(helper.make_node("Round", [f"{out}/y"], [f"{out}/y_rounded"]))
        new.append(helper.make_node("Cast", [f"{out}/y_rounded"], [out], to=TensorProto.INT32))
        replacements[index] = new
    if replacements:
        _replace_nodes(model, replacements, added)
    return len(replacements)


def rewrite_conv_integer_as_gemm(model: Any, *, signed_weights: bool) -> int:
    """Replace every 1-D, ungrouped ``ConvInteger`` of ``model`` (changed in place) with explicit padding and
    a scalar weight zero point by im2col + ``MatMulInteger``; returns how many were replaced.

    ``signed_weights`` moves uint8 weights to int8 (ONNX Runtime's fast u8xs8 kernels); only exact where
    :func:`signed_weights_are_exact`.
    """
    from onnx import helper, numpy_helper

    replacements: dict[int, list[Any]] = {}
    added: list[Any] = []
    for index, node, weights, zero in _integer_convolutions(model):
        attrs = _attributes(node)
        if (
            weights.ndim != 3
            or attrs.get("group", 1) != 1
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or (zero is not None and zero.size != 1)
        ):
            continue
        x, _, x_zero, _ = [*node.input, "", "", ""][:4]
        out_ch, in_ch, taps = weights.shape
        dilation = int(attrs.get("dilations", [1])[0])
        stride = int(attrs.get("strides", [1])[0])
        pad_left, pad_right = (int(p) for p in attrs.get("pads", [0, 0]))
        w_zero = np.zeros((), weights.dtype) if zero is None else zero.reshape(())
        # Row t*in_ch + c of the matrix is tap t of input channel c: the order the tap slices are concatenated.
        matrix = weights.transpose(2, 1, 0).reshape(taps * in_ch, out_ch)
        if signed_weights and weights.dtype == np.uint8:
            matrix = (matrix.astype(np.int16) - 128).astype(np.int8)
            w_zero = np.asarray(int(w_zero) - 128, dtype=np.int8)
        prefix = f"{node.output[0]}/gemm"
        added += [
            numpy_helper.from_array(matrix, f"{prefix}/weights"),
            numpy_helper.from_array(np.asarray(w_zero), f"{prefix}/weights_zero"),
        ]
        # Time-major activations: each tap is then a contiguous run of rows, the product needs no transpose.
        new = [helper.make_node("Transpose", [x], [f"{prefix}/x"], perm=[0, 2, 1])]
        current = f"{prefix}/x"
        if pad_left or pad_right:
            pads = np.asarray([0, pad_left, 0, 0, pad_right, 0], dtype=np.int64)
            added.append(numpy_helper.from_array(pads, f"{prefix}/pads"))
            # Padding with the zero point pads with a real zero, as ConvInteger does.
            new.append(
                helper.make_node(
                    "Pad", [current, f"{prefix}/pads", *([x_zero] if x_zero else [])], [f"{prefix}/xp"]
                )
            )
            current = f"{prefix}/xp"
        if taps > 1 or stride > 1:
            added += [
                numpy_helper.from_array(np.asarray([1], dtype=np.int64), f"{prefix}/axes"),
                numpy_helper.from_array(np.asarray([stride], dtype=np.int64), f"{prefix}/steps"),
            ]
            columns = []
            for tap in range(taps):
                # Every tap yields the same number of output steps: it starts tap*dilation in and stops where
                # the last tap would run off the padded input.
                tail = (taps - 1 - tap) * dilation
                added += [
                    numpy_helper.from_array(
                        np.asarray([tap * dilation], dtype=np.int64), f"{prefix}/start{tap}"
                    ),
                    numpy_helper.from_array(
                        np.asarray([-tail if tail else _INT64_MAX], dtype=np.int64), f"{prefix}/end{tap}"
                    ),
                ]
                column = f"{prefix}/tap{tap}"
                new.append(
                    helper.make_node(
                        "Slice",
                        [
                            current,
                            f"{prefix}/start{tap}",
                            f"{prefix}/end{tap}",
                            f"{prefix}/axes",
                            f"{prefix}/steps",
                        ],
                        [column],
                    )
                )
                columns.append(column)
            current = columns[0]
            if taps > 1:
                new.append(helper.make_node("Concat", columns, [f"{prefix}/columns"], axis=2))
                current = f"{prefix}/columns"
        new.append(
            helper.make_node(
                "MatMulInteger",
                [current, f"{prefix}/weights", x_zero, f"{prefix}/weights_zero"],
                [f"{prefix}/y"],
            )
        )
        new.append(helper.make_node("Transpose", [f"{prefix}/y"], [node.output[0]], perm=[0, 2, 1]))
        replacements[index] = new
    if replacements:
        _replace_nodes(model, replacements, added)
    return len(replacements)


def signed_weights_are_exact() -> bool:
    """Whether ONNX Runtime's u8xs8 integer products are exact here: x86 with VNNI or AMX (without them the
    AVX2 kernel adds pairs of products in saturating 16-bit lanes). Other CPUs keep uint8 weights."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


def _rewrite(variant: ConvRewrite) -> Callable[[Any], int]:
    if variant == "float":
        return rewrite_conv_integer_as_float
    signed = signed_weights_are_exact()
    return lambda model: rewrite_conv_integer_as_gemm(model, signed_weights=signed)


def _fingerprint(path: Path, variant: ConvRewrite) -> dict[str, Any]:
    stat = path.stat()
    fingerprint: dict[str, Any] = {"source": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if variant == "gemm":  # the weights' signedness depends on the CPU
        fingerprint["signed_weights"] = signed_weights_are_exact()
    return fingerprint


def rewritten_model(source: Path, cache_dir: Path, variant: ConvRewrite) -> Path | None:
    """The ``variant`` of ``source`` in ``cache_dir``, built once (atomically, safe for concurrent
    processes); ``None`` when ``source`` has no integer convolution to replace."""
    import onnx

    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    target = cache_dir / f"{source.stem}.{digest}.{variant}conv.onnx"
    stamp = target.with_name(target.name + ".json")
    fingerprint = _fingerprint(source, variant)
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded is not None and recorded.get("from") == fingerprint:
        return target if recorded.get("replaced") and target.is_file() else None

    model = onnx.load(str(source))
    replaced = _rewrite(variant)(model)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if replaced:
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            onnx.save(model, tmp_name)
            os.replace(tmp_name, target)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
    stamp.write_text(json.dumps({"from": fingerprint, "replaced": replaced}))
    log.info("TTS model variant built", extra={"path": str(target), "variant": variant, "replaced": replaced})
    return target if replaced else None
