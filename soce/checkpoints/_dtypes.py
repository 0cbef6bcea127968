"""Safetensors dtype codes, their numpy storage types, and exact float32 conversions.

bfloat16 has no numpy type, so it is stored as raw uint16 bits. Widening to float32 is
exact; narrowing rounds to nearest even, bit for bit as torch does, so a soup written here
equals one computed with torch.
"""

from __future__ import annotations

import numpy as np

# safetensors code -> numpy storage dtype
STORAGE: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16"})

# user-facing names, as in torch and mergekit configs
NAME_TO_CODE = {
    "float32": "F32",
    "fp32": "F32",
    "float16": "F16",
    "fp16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "float64": "F64",
}
CODE_TO_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def code_for(name: str) -> str:
    """The safetensors code for a dtype name such as 'bfloat16'; ValueError if unknown."""
    try:
        return NAME_TO_CODE[name.lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16") from None


def itemsize(code: str) -> int:
    return STORAGE[code].itemsize


def widen(raw: np.ndarray, code: str, out: np.ndarray) -> np.ndarray:
    """Write `raw` (storage dtype of `code`) into float32 `out`, exactly; returns `out`."""
    if code == "F32":
        if raw is not out:
            np.copyto(out, raw)
    elif code == "BF16":
        # one pass: widen the uint16 bits and move them to the top half
        np.left_shift(raw, 16, out=out.view(np.uint32), dtype=np.uint32, casting="unsafe")
    else:
        np.copyto(out, raw, casting="unsafe")
    return out


def narrow(acc: np.ndarray, code: str, out: np.ndarray) -> np.ndarray:
    """Round float32 `acc` into `out` of the storage dtype of `code` (nearest even); returns `out`.

    `acc` may be overwritten (it is scratch by then).
    """
    if code == "F32":
        if acc is not out:
            np.copyto(out, acc)
        return out
    if code != "BF16":
        np.copyto(out, acc, casting="unsafe")
        return out
    # torch's round_to_nearest_even: bits + 0x7FFF + lsb-of-result, then keep the top half;
    # NaN becomes the canonical quiet NaN 0x7FC0.
    nan = np.isnan(acc)
    has_nan = bool(nan.any())
    bits = acc.view(np.uint32)
    lsb = np.right_shift(bits, 16)
    np.bitwise_and(lsb, 1, out=lsb)
    np.add(lsb, 0x7FFF, out=lsb)
    np.add(bits, lsb, out=bits)
    np.right_shift(bits, 16, out=out, dtype=np.uint32, casting="unsafe")
    if has_nan:
        out[nan] = 0x7FC0
    return out
