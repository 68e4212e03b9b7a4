"""Kokoro's integer convolutions as float convolutions: same arithmetic, a different ONNX Runtime kernel.

The embedded Kokoro model is dynamically quantized: every convolution is ``DynamicQuantizeLinear`` →
``ConvInteger`` (uint8 activations by uint8 weights, int32 out) → rescale. How fast ONNX Runtime runs
``ConvInteger`` depends on the CPU: on the AMD EPYC development machine a 3-word phrase took ~0.66 s; on an
Intel Xeon (AVX-512, AMX) in the same 2-core VM class it took 5-8 s, 87% of it in ``ConvInteger``, while
float convolutions run at full speed there.

:func:`rewrite_conv_integer` replaces each ``ConvInteger`` by ``Conv`` over the same integers held as floats
(activations minus their zero point, weights minus theirs), rounded back to int32, so everything after it
(bias add, rescale) is untouched and the result equals the integer convolution's. The weights grow 4x in
memory (~90 → ~250 MB). Which variant is faster is measured at load (``tts_conv=auto``), not assumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FLOAT_CONV_SUFFIX = ".floatconv.onnx"


def rewrite_conv_integer(model: Any) -> int:
    """Replace every ``ConvInteger`` of ``model`` (an ``onnx.ModelProto``, changed in place) whose weights and
    weight zero point are initializers; returns how many were replaced."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes: list[Any] = []
    added: list[Any] = []
    replaced = 0
    for node in graph.node:
        inputs = [*node.input, "", "", ""][:4]
        x, w, x_zero, w_zero = inputs
        if node.op_type != "ConvInteger" or w not in initializers or (w_zero and w_zero not in initializers):
            nodes.append(node)
            continue
        out = node.output[0]
        weights = numpy_helper.to_array(initializers[w]).astype(np.float32)
        if w_zero:
            zero = numpy_helper.to_array(initializers[w_zero]).astype(np.float32)
            # Scalar, or one zero point per output channel (axis 0 of the weights).
            weights -= zero if zero.ndim == 0 else zero.reshape((-1,) + (1,) * (weights.ndim - 1))
        added.append(numpy_helper.from_array(weights, f"{out}/float_weights"))
        nodes.append(helper.make_node("Cast", [x], [f"{out}/x"], to=TensorProto.FLOAT))
        activations = f"{out}/x"
        if x_zero:
            nodes.append(helper.make_node("Cast", [x_zero], [f"{out}/x_zero"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Sub", [activations, f"{out}/x_zero"], [f"{out}/x_centered"]))
            activations = f"{out}/x_centered"
        attributes = {
            a.name: helper.get_attribute_value(a)
            for a in node.attribute
            if not (a.name == "auto_pad" and helper.get_attribute_value(a) == b"NOTSET")
        }
        nodes.append(
            helper.make_node("Conv", [activations, f"{out}/float_weights"], [f"{out}/y"], **attributes)
        )
        # Sums of integer products: exact in int32, within float32 rounding here; Round restores the integer.
        nodes.append(helper.make_node("Round", [f"{out}/y"], [f"{out}/y_rounded"]))
        nodes.append(helper.make_node("Cast", [f"{out}/y_rounded"], [out], to=TensorProto.INT32))
        replaced += 1
    if replaced:
        still_used = {name for n in nodes for name in n.input}
        kept = [init for init in graph.initializer if init.name in still_used]
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend([*kept, *added])
    return replaced


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"source": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def float_conv_model(source: Path, cache_dir: Path) -> Path | None:
    """The float-convolution variant of ``source`` in ``cache_dir``, built once (atomically, safe for
    concurrent processes); ``None`` when ``source`` has no integer convolution to replace."""
    import onnx

    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    target = cache_dir / f"{source.stem}.{digest}{FLOAT_CONV_SUFFIX}"
    stamp = target.with_name(target.name + ".json")
    fingerprint = _fingerprint(source)
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded is not None and recorded.get("from") == fingerprint:
        return target if recorded.get("replaced") and target.is_file() else None

    model = onnx.load(str(source))
    replaced = rewrite_conv_integer(model)
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
    log.info("float-convolution TTS model built", extra={"path": str(target), "replaced": replaced})
    return target if replaced else None
