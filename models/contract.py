"""The ONNX graph contract every streamscore model satisfies.

A registered model.onnx has exactly:

- one input named ``features`` (`INPUT_NAME`): float32, shape ``[N, d]`` with ``N`` dynamic and
  ``d = len(manifest.feature_names)``. Column ``j`` is the feature ``manifest.feature_names[j]``.
  NaN is a legal value and means "missing" (LightGBM routes it like training did; the logistic
  baseline imputes the training median).
- one output named ``score`` (`OUTPUT_NAME`): float32, shape ``[N]``, ``score[i] = P(y=1 | row i)``
  in ``[0, 1]``.

Converters emit ``label`` + ``probabilities [N, 2]`` (ZipMap disabled); `normalise_outputs`
rewrites that to the single ``score`` output by appending ``Gather(probabilities, 1, axis=1)`` and
pruning everything the score does not need, so ONNX Runtime computes nothing else per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # onnx is imported lazily: `streamscore model --help` must stay fast
    import onnx

INPUT_NAME = "features"
OUTPUT_NAME = "score"
#: The contract as recorded in every manifest (``Manifest.output``).
OUTPUT_CONTRACT: dict[str, Any] = {
    "name": OUTPUT_NAME,
    "dtype": "float32",
    "shape": ["N"],
    "semantics": "P(label=1) per input row",
}


def normalise_outputs(model: onnx.ModelProto, probabilities: str = "probabilities") -> onnx.ModelProto:
    """Return `model` rewritten so its only output is ``score`` float32 [N] = probabilities[:, 1].

    `probabilities` names the converter's float [N, 2] class-probability output. Nodes that do not
    contribute to the score (e.g. the label branch) are removed and duplicate opset imports merged.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    produced = {out for node in graph.node for out in node.output}
    if probabilities not in produced:
        raise ValueError(f"converted graph has no output {probabilities!r}; outputs: {[o.name for o in graph.output]}")
    index = helper.make_tensor("streamscore_positive_class", TensorProto.INT64, [], [1])
    graph.initializer.append(index)
    graph.node.append(
        helper.make_node("Gather", [probabilities, index.name], [OUTPUT_NAME], axis=1, name="streamscore_score")
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"]))

    # Keep only the nodes the score depends on (walk back from the output).
    needed = {OUTPUT_NAME}
    keep = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used_inits = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used_inits)
    del graph.value_info[:]

    opsets: dict[str, int] = {}
    for op in model.opset_import:
        opsets[op.domain] = max(op.version, opsets.get(op.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items()))
    onnx.checker.check_model(model)
    return model


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def contract_problems(model: onnx.ModelProto, n_features: int, input_name: str = INPUT_NAME) -> list[str]:
    """Every way `model` violates the contract for `n_features` inputs (empty list if none)."""
    from onnx import TensorProto

    problems: list[str] = []
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if [i.name for i in inputs] != [input_name]:
        problems.append(f"ONNX inputs are {[i.name for i in inputs]}, expected exactly [{input_name!r}]")
    else:
        inp = inputs[0]
        if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            problems.append(
                f"input {input_name!r} has element type "
                f"{TensorProto.DataType.Name(inp.type.tensor_type.elem_type)}, expected FLOAT (float32)"
            )
        dims = _dims(inp)
        if len(dims) != 2 or isinstance(dims[0], int) or dims[1] != n_features:
            problems.append(f"input {input_name!r} has shape {dims}, expected [None, {n_features}] (dynamic batch)")
    outputs = {o.name: o for o in model.graph.output}
    if OUTPUT_NAME not in outputs:
        problems.append(f"ONNX outputs are {sorted(outputs)}, expected {OUTPUT_NAME!r} (float32 [N])")
    elif outputs[OUTPUT_NAME].type.tensor_type.elem_type != TensorProto.FLOAT:
        problems.append(f"output {OUTPUT_NAME!r} is not float32")
    return problems
