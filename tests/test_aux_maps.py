import numpy as np
import pytest

from pipelines.aux_maps import AuxConfig, AuxMaps, frequency_tuned, layout_prior, spectral_residual


def scene():
    """A grey canvas with one red square: the square is what should stand out."""
    img = np.full((64, 64, 3), 128, np.uint8)
    img[24:40, 24:40] = (230, 20, 20)
    alpha = np.zeros((64, 64), np.uint8)
    alpha[24:40, 24:40] = 255
    return img, alpha


@pytest.mark.parametrize("fn", [spectral_residual, frequency_tuned])
def test_saliency_peaks_on_the_odd_object(fn):
    img, alpha = scene()
    sal = fn(img)
    assert sal.dtype == np.uint8 and sal.shape == (64, 64)
    assert sal[alpha > 0].mean() > 2 * sal[:8].mean()


def test_layout_prior_puts_the_product_on_the_ground_plane():
    img, alpha = scene()
    d = layout_prior(img, alpha)
    assert d[0].max() < d[-1].min()  # far at the top, near at the bottom
    assert len(np.unique(d[alpha > 0])) == 1 and d[30, 30] == d[39, 0]  # product at its base row's depth


def test_dpt_depth_runs_a_real_dpt_model_from_a_folder(tmp_path):
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(0)
    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, image_size=32,
                    patch_size=8, neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=16,
                    backbone_out_indices=[0, 1, 2, 3])
    DPTForDepthEstimation(cfg).save_pretrained(tmp_path / "dpt")
    img, alpha = scene()
    maps = AuxMaps(AuxConfig(depth=f"dpt:{tmp_path / 'dpt'}"))
    depth, _ = maps([img, np.roll(img, 12, axis=1)], [np.dstack([img, alpha])] * 2)
    assert depth[0].shape == (64, 64) and depth[0].max() == 255
    assert not np.array_equal(depth[0], depth[1])  # the model looked at the pixels


def test_u2net_saliency_through_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # A stand-in graph with U2-Net's interface (N,3,320,320 -> N,1,320,320 in [0,1]): sigmoid of the
    # channel mean. The method's pre- and post-processing are what is under test.
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 320, 320])
    y = helper.make_tensor_value_info("d1", TensorProto.FLOAT, ["N", 1, 320, 320])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["input.1", "axes"], ["m"], keepdims=1),
                               helper.make_node("Sigmoid", ["m"], ["d1"])], "u2net_stub", [x], [y], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "u2net.onnx")
    img, alpha = scene()
    img[24:40, 24:40] = 250
    _, (sal,) = AuxMaps(AuxConfig(saliency=f"u2net:{tmp_path / 'u2net.onnx'}"))([img], [np.dstack([img, alpha])])
    assert sal[30, 30] == 255 and sal[2, 2] == 0


def test_unknown_methods_are_refused():
    with pytest.raises(ValueError, match="saliency"):
        AuxMaps(AuxConfig(saliency="magic"))
    with pytest.raises(ValueError, match="depth"):
        AuxMaps(AuxConfig(depth="lidar"))


@pytest.mark.parametrize("method", ["spectral_residual", "frequency_tuned"])
def test_saliency_is_read_from_the_generated_image_not_the_product_mask(method):
    """Paper: saliency is a map of the generated advert. The odd object here is in the background, away
    from the product's alpha, so a map made from the product or its mask would peak in the wrong place."""
    img, _ = scene()
    product = np.zeros((64, 64, 4), np.uint8)
    product[44:60, 4:20] = (128, 128, 128, 255)  # a grey product, the colour of the canvas
    _, (sal,) = AuxMaps(AuxConfig(saliency=method))([img], [product])
    assert sal[24:40, 24:40].mean() > 2 * sal[44:60, 4:20].mean()
