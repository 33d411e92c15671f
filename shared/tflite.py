"""A TFLite model's tensors in its signature's order: the source model's order, as ONNX and
the manifest's model description have them (the flatbuffer's own tensor order can differ).
Used by the factory's measuring and the agent's LiteRT runtime alike."""

from __future__ import annotations

from typing import Any


def signature_order(interpreter: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The interpreter's input and output details, each in signature order."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    signatures = interpreter._get_full_signature_list()
    if not signatures:
        return inputs, outputs
    signature = next(iter(signatures.values()))

    def ordered(details: list[dict[str, Any]], names: dict[str, int]) -> list[dict[str, Any]]:
        by_index = {d["index"]: d for d in details}
        if sorted(names.values()) != sorted(by_index):
            return details
        return [by_index[i] for i in names.values()]

    return ordered(inputs, signature["inputs"]), ordered(outputs, signature["outputs"])
