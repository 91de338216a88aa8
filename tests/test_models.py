import numpy as np
import torch
from PIL import Image

from pipelines.models import build_tiny, folder_hash, learn_bpe, load_pipeline


def _run(pipe, seed=3):
    img = Image.new("RGB", (64, 64), (120, 90, 60))
    mask = Image.new("L", (64, 64), 255)
    ctrl = Image.new("RGB", (64, 64))
    return pipe(prompt="a bottle on a table", image=img, mask_image=mask, control_image=ctrl, height=64, width=64,
                num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def test_saved_pipeline_reloads_to_identical_output(tiny_model):
    a = _run(load_pipeline(str(tiny_model)))
    b = _run(load_pipeline(str(tiny_model)))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, _run(load_pipeline(str(tiny_model)), seed=4))


def test_two_builds_are_byte_identical(tiny_model, tmp_path):
    again = build_tiny(tmp_path / "again", seed=0, size=64)
    assert folder_hash(again) == folder_hash(tiny_model)
    other = build_tiny(tmp_path / "other", seed=1, size=64)
    assert folder_hash(other) != folder_hash(tiny_model)


def test_tokenizer_learns_ties_deterministically_and_roundtrips_unicode(tiny_model):
    assert learn_bpe(["ab ab ba ba cd"]) == learn_bpe(["ab ab ba ba cd"])
    tok = load_pipeline(str(tiny_model)).tokenizer
    text = "crème brûlée jar 🍯 — مرحبا"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == text
    assert tok("x", padding="max_length", max_length=77).input_ids.__len__() == 77
