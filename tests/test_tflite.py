"""LiteRT (TFLite) export for real: litert-torch converts, ai-edge-quantizer makes the network full-integer, the
LiteRT interpreter runs it through the torch-free EdgeSegmenter, and the detections match PyTorch."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="the tflite extra is not installed")

from tinyseg.deploy.export.parity import check_parity, verify_batch  # noqa: E402
from tinyseg.deploy.export.tflite import export_tflite, graph_ops, npu_fallback  # noqa: E402
from tinyseg.predict import Segmenter  # noqa: E402
from tinyseg.runtime import EdgeSegmenter  # noqa: E402
from tinyseg.tools.cli import main  # noqa: E402

# The ops the decode tail needs and an NPU graph must not contain.
TAIL_OPS = {"TOPK_V2", "GATHER_ND", "GATHER", "BATCH_MATMUL", "CAST", "FLOOR_MOD", "SELECT_V2", "SELECT"}


@pytest.fixture(scope="module")
def seg(spread_ckpt):
    return Segmenter.load(spread_ckpt)


@pytest.fixture(scope="module")
def images(seg):
    return verify_batch(seg.imgsz, 4)


@pytest.fixture(scope="module")
def split_int8(seg, images, tmp_path_factory):
    return export_tflite(seg, tmp_path_factory.mktemp("tfl") / "q.tflite", 20, images, split=True)


@pytest.mark.parametrize("split", [False, True])
def test_fp32_tflite_matches_pytorch(seg, images, tmp_path, split):
    path = export_tflite(seg, tmp_path / "m.tflite", max_det=20, split=split)
    parity = check_parity(seg, path, images)
    assert parity.ok and parity.detections > 0, parity
    out = EdgeSegmenter(path).run(images)
    assert out["boxes"].shape == (4, 20, 4) and out["masks"].shape == (4, 20, 64, 64)  # K fixed at max_det
    assert (tmp_path / "m.tail.tflite").is_file() == split


def test_split_int8_network_is_full_integer_and_npu_friendly(split_int8, seg, images):
    ops = graph_ops(split_int8.read_bytes())
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= set(ops) and not TAIL_OPS & set(ops), ops
    assert "DEQUANTIZE" not in ops  # int8 from the input to the outputs
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(split_int8))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert all(d["dtype"] == np.int8 for d in interp.get_output_details())
    meta = EdgeSegmenter(split_int8).meta
    assert meta["precision"] == "int8" and meta["tail"] == "q.tail.tflite"
    assert meta["npu_fallback"] == npu_fallback(split_int8.read_bytes())
    assert meta["npu_fallback"]["imx8mp_vx"] == []  # every op of the network on the i.MX 8M Plus NPU


def test_split_int8_network_tracks_fp32(split_int8, seg, images):
    """Every dense map of the INT8 network (dequantized) follows PyTorch's: quantization error, not a broken
    graph, is all that separates them. The centre heatmap's logits are the most sensitive (measured here: 0.94-0.99
    correlation on this fixture's random heatmap weights, >= 0.997 for every other map)."""
    import torch

    from tinyseg.deploy.runtime import DENSE_NAMES, EdgeSegmenter

    graph = EdgeSegmenter(split_int8)._litert
    with torch.no_grad():
        ref = seg.model(torch.from_numpy(images))
    for i, image in enumerate(images):
        res = graph.network(**{graph.input: graph._network_input(image)})
        scales = {k: v["quantization"] for k, v in graph.network.get_output_details().items()}
        for name, key in zip(DENSE_NAMES, sorted(res, key=lambda k: int(k.rsplit("_", 1)[-1]))):
            scale, zero = scales[key]
            got = (res[key].astype(np.float32) - zero) * scale
            want = ref[name][i].permute(1, 2, 0).numpy()
            corr = np.corrcoef(got.ravel(), want.ravel())[0, 1]
            assert corr > (0.9 if name == "heatmap" else 0.99), (name, corr)


def test_tflite_runs_without_torch(split_int8, synth, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # importing torch now fails
        from tinyseg.runtime import EdgeSegmenter
        from tinyseg.io import read_image
        seg = EdgeSegmenter({str(split_int8)!r}, threads=1)
        det = seg.predict(read_image({str(synth / "images/val/000000.png")!r}), conf=0.0)
        assert det.masks.shape[1:] == (128, 128), det.masks.shape
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]


def test_export_command_and_eval(tiny_run, synth, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    args = ["export", "--weights", str(tiny_run / "best.pt"), "--format", "tflite", "--split", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "parity vs PyTorch" in printed and "NPU graph on imx8mp_vx: every op on the NPU" in printed
    assert (
        main(["eval", "--weights", str(out), "--val", str(synth / "val.json"), "--json", str(tmp_path / "e.json")]) == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["num_images"] == 8
    assert main(["export", "--weights", str(tiny_run / "best.pt"), "--format", "onnx", "--split"]) == 2
    assert "--split is for --format tflite" in capsys.readouterr().err


def test_split_model_without_its_tail_is_one_clear_error(split_int8, tmp_path):
    import shutil

    from tinyseg.errors import EdgeRuntimeError

    shutil.copy(split_int8, tmp_path / "q.tflite")  # the network half alone
    with pytest.raises(EdgeRuntimeError, match=r"q.tail.tflite: not a loadable TFLite model"):
        EdgeSegmenter(tmp_path / "q.tflite")


def test_int8_outputs_span_every_calibration_value(split_int8, seg, images):
    """Activation ranges are the union over the calibration images: no dense map of any of them is clipped by its
    int8 output range (the quantizer's default moving average would clip the images past the first)."""
    import torch

    from tinyseg.deploy.runtime import DENSE_NAMES, EdgeSegmenter

    graph = EdgeSegmenter(split_int8)._litert
    details = graph.network.get_output_details()
    keys = sorted(details, key=lambda k: int(k.rsplit("_", 1)[-1]))
    with torch.no_grad():
        ref = seg.model(torch.from_numpy(images))
    for name, key in zip(DENSE_NAMES, keys):
        scale, zero = details[key]["quantization"]
        lo, hi = (-128 - zero) * scale, (127 - zero) * scale
        values = ref[name].numpy()
        assert lo - scale <= values.min() and values.max() <= hi + scale, (name, values.min(), values.max(), lo, hi)
